"""Hugging Face `datasets` data: ``format: hf``, map-style or streamed.

``path`` is one of
* ``hf://org/name`` - a hub dataset (the only way this module reaches the network), with ``subset`` (its config
  name, e.g. The Cauldron's ``vqav2``) and ``split`` (``train``, ``train[:1000]``);
* a folder written by ``Dataset.save_to_disk`` (a ``DatasetDict`` folder: ``split`` picks one);
* Parquet or Arrow files: a folder holding them, one file, or a glob (``shards/train-*.parquet``).

``columns`` maps what the model needs to the dataset's columns (missing keys are guessed from the names)::

    image:         an image per row: a datasets.Image feature (bytes), bytes, or a path relative to `images`
                   (else to the dataset's folder); a list of images counts when it holds exactly one
    question, answer:  single-turn VQA, the question through model.vqa_template
    texts:         The Cauldron's [{user, assistant}, ...] turns
    messages:      [{role: user|assistant|system, content}, ...] turns
    conversations: LLaVA's [{from: human|gpt, value}, ...] turns
    id:            an example id (default: the row number)

Each assistant turn of a multi-turn row is one "chat" Example (as JSONL conversations). Rows with no image or
several are skipped and counted. Images stay undecoded bytes until training loads them, so nothing reads all
images first: a map-style set (a lazy `HFExamples` sequence) reads only its text columns up front to count the
turns; ``streaming: true`` (an `HFStream`) reads rows on the fly, shuffled within ``shuffle_buffer`` rows.
"""
from __future__ import annotations

import glob
import itertools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgpt.config import PromptTemplates
from mmgpt.data.example import Example
from mmgpt.data.llava import llava_turns, strip_image_token
from mmgpt.data.records import (
    conversation_examples,
    default_cache_root,
    local_path,
    record_field,
    register_format,
)

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

    from mmgpt.data.spec import DatasetSpec

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf://"
COLUMN_KEYS = ("image", "question", "answer", "texts", "messages", "conversations", "id")
TURN_COLUMNS = ("texts", "messages", "conversations")
GUESSES = {"image": ("image", "images", "image_path", "img"), "question": ("question", "query", "prompt"),
           "answer": ("answer", "response", "caption"), "texts": ("texts",), "messages": ("messages",),
           "conversations": ("conversations",), "id": ("id", "question_id")}
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}


def check_columns(columns: Any, where: str) -> None:
    """Refuse a column mapping with unknown keys or non-string values."""
    if not isinstance(columns, dict):
        raise ValueError(f"{where} must be a mapping like {{image: img, question: q, answer: a}}")
    unknown = sorted(set(columns) - set(COLUMN_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; available: {', '.join(COLUMN_KEYS)}")
    for key, value in columns.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}.{key} must be a column name, got {value!r}")


def resolve_columns(spec: DatasetSpec, names: Sequence[str]) -> dict[str, str]:
    """The spec's column mapping completed by guesses from `names`; an error names what is missing."""
    where = f"hf dataset {spec.label!r}"
    columns = dict(spec.columns)
    for key, column in columns.items():
        if column not in names:
            raise ValueError(f"{where}: field 'columns.{key}' names column {column!r}, which the dataset lacks; "
                             f"its columns: {', '.join(names)}")
    # a text layout the user named (turns, or question and answer) is never joined by a guessed one
    named_text = any(k in spec.columns for k in (*TURN_COLUMNS, "question", "answer"))
    for key, guesses in GUESSES.items():
        if key not in columns:
            found = next((g for g in guesses if g in names), None)
            if found and not (named_text and key in (*TURN_COLUMNS, "question", "answer")) \
                    and not (key in TURN_COLUMNS and any(k in columns for k in TURN_COLUMNS)):
                columns[key] = found
    if "image" not in columns:
        raise ValueError(f"{where}: no image column found; name it with columns.image (columns: {', '.join(names)})")
    turns = [k for k in TURN_COLUMNS if k in columns]
    if len(turns) > 1:
        raise ValueError(f"{where}: columns {turns} both hold turns; map only one")
    if not turns and not ("question" in columns and "answer" in columns):
        raise ValueError(f"{where}: name the text with columns.question and columns.answer, or a turns column "
                         f"(columns.texts, columns.messages or columns.conversations); columns: {', '.join(names)}")
    return columns


def image_source(value: Any, where: str, base: Path) -> Any:
    """What load_image takes for one stored image (bytes or a path), or None when the row has none or several."""
    if isinstance(value, list):
        return image_source(value[0], where, base) if len(value) == 1 else None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if value is None:
        return None
    if isinstance(value, str):
        if "://" in value:
            raise ValueError(f"{where}: image {value!r} is a URL; images are read from the dataset or local files "
                             "only, so download them first")
        return local_path(value, base)
    return value  # bytes, or an image decoded by a feature this module did not switch off


def _turns(column: str, value: Any, where: str) -> list[tuple[str, str, str]]:
    """(role, text, location) turns of one row's turns column, in the column's own schema."""
    if column == "conversations":
        return llava_turns(value, where, column)
    if not isinstance(value, list):
        raise ValueError(f"{where}: column '{column}' must hold a list of turns, got {type(value).__name__}")
    turns = []
    for t, turn in enumerate(value):
        twhere = f"{where}: {column}[{t}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{twhere} must be an object")
        if column == "texts":
            turns.append(("user", strip_image_token(record_field(turn, "user", twhere)), twhere))
            turns.append(("assistant", record_field(turn, "assistant", twhere), twhere))
            continue
        role, content = record_field(turn, "role", twhere), record_field(turn, "content", twhere)
        if role == "system":
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"{twhere}: field 'role' must be 'user', 'assistant' or 'system', got {role!r}")
        turns.append((role, strip_image_token(content), twhere))
    return turns


class RowReader:
    """Turns one dataset row into Examples, with the column mapping and prompt templates of its spec."""

    def __init__(self, spec: DatasetSpec, columns: dict[str, str], base: Path, templates: PromptTemplates) -> None:
        self.label, self.columns, self.base, self.templates = spec.label, columns, base, templates
        self.turns_column = next((k for k in TURN_COLUMNS if k in columns), None)

    def where(self, row_number: int) -> str:
        """How errors name a row."""
        return f"hf dataset {self.label!r} row {row_number}"

    def examples(self, row: dict, row_number: int) -> list[Example]:
        """The row's Examples; [] when the row has no single image."""
        where = self.where(row_number)
        image = image_source(row[self.columns["image"]], f"{where} column '{self.columns['image']}'", self.base)
        if image is None:
            return []
        ex_id = row[self.columns["id"]] if "id" in self.columns else row_number
        if self.turns_column:
            column = self.columns[self.turns_column]
            return conversation_examples(image, _turns(self.turns_column, row[column], where), where, ex_id,
                                         self.label, field_name=column)
        question = record_field(row, self.columns["question"], where)
        answer = row[self.columns["answer"]]
        answers = list(answer) if isinstance(answer, list) else [answer]
        if not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{where}: column '{self.columns['answer']}' must hold a string (or strings), "
                             f"got {answer!r}")
        return [Example(image=image, prompt=self.templates.vqa.format(question=strip_image_token(question)),
                        answer=answers[0], task="vqa", id=ex_id, source=self.label,
                        meta={"question": question, "answers": answers})]


def _local_files(path: str, where: str) -> tuple[str, list[str]]:
    """(datasets builder, files) of a folder, file or glob of Parquet / Arrow files."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        files = sorted(str(f) for suffix in FILE_BUILDERS for f in folder.rglob(f"*{suffix}"))
    else:
        files = sorted(glob.glob(str(folder), recursive=True))
    if not files:
        raise FileNotFoundError(f"{where}: no dataset at {path} (field 'path'): expected hf://org/name, a "
                                "save_to_disk folder, or Parquet/Arrow files (a folder, a file or a glob)")
    suffixes = {Path(f).suffix for f in files}
    if len(suffixes) > 1 or not suffixes <= set(FILE_BUILDERS):
        raise ValueError(f"{where}: field 'path' must select only .parquet or only .arrow files, got "
                         f"{', '.join(sorted(suffixes))}")
    return FILE_BUILDERS[suffixes.pop()], files


def load_hf(spec: DatasetSpec) -> tuple[Dataset | IterableDataset, Path]:
    """The spec's dataset with images left undecoded (streamed with `streaming`), and its folder for relative paths."""
    import datasets

    where = f"hf dataset {spec.label!r}"
    if not spec.path:
        raise ValueError(f"{where}: field 'path' is required (hf://org/name, a save_to_disk folder, or files)")
    base = Path(spec.images).expanduser() if spec.images else None
    if spec.path.startswith(HUB_PREFIX):
        ds = datasets.load_dataset(spec.path[len(HUB_PREFIX):], spec.subset or None, split=spec.split,
                                   streaming=spec.streaming)
        return _undecoded(ds), base or Path.cwd()
    if "://" in spec.path:
        raise ValueError(f"{where}: field 'path' {spec.path!r} is a URL; name a hub dataset hf://org/name, or "
                         "download the files and name their folder")
    folder = Path(spec.path).expanduser()
    if folder.is_dir() and any((folder / f).is_file() for f in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(folder))
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise ValueError(f"{where}: field 'split' {spec.split!r} is not in {folder}; splits: "
                                 f"{', '.join(ds)}")
            ds = ds[spec.split]
        if spec.streaming:
            # shards are what split_dataset_by_node hands out whole; 64 divide evenly over 2, 4, 8 ... processes
            ds = ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds))))
        return _undecoded(ds), base or folder
    builder, files = _local_files(spec.path, where)
    ds = datasets.load_dataset(builder, data_files={"train": files}, split="train", streaming=spec.streaming,
                               cache_dir=str(default_cache_root() / "hf_datasets"))
    return _undecoded(ds), base or (folder if folder.is_dir() else Path(files[0]).parent)


def _undecoded(ds: Any) -> Any:
    """`ds` with its image features returning {bytes, path} instead of decoded images."""
    import datasets

    if isinstance(ds, datasets.IterableDataset):
        return ds.decode(False)
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image) or isinstance(getattr(feature, "feature", None), datasets.Image):
            ds = ds.cast_column(name, _no_decode(feature))
    return ds


def _no_decode(feature: Any) -> Any:
    import copy

    feature = copy.deepcopy(feature)
    (feature.feature if hasattr(feature, "feature") else feature).decode = False
    return feature


class HFExamples(Sequence):
    """A map-style hf dataset as a lazy sequence of Examples: position -> (row, turn), the row read when asked."""

    def __init__(self, ds: Dataset, reader: RowReader, index: Sequence[tuple[int, int]]) -> None:
        self.ds, self.reader, self.index = ds, reader, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return HFExamples(self.ds, self.reader, self.index[i])
        row, turn = self.index[i]
        return self.reader.examples(self.ds[row], row)[turn]


class FirstTurns(Sequence):
    """(row, 0) for each of an array of row numbers: the index of a set whose rows hold one example each."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return FirstTurns(self.rows[i])
        return int(self.rows[i]), 0


def _one_image(ds: Dataset, column: str) -> Any:
    """Per row, whether its image column holds exactly one image (an Arrow boolean array; chunks are not copied)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    images = ds.select_columns([column]).with_format("arrow")[:][column]
    feature = ds.features[column]
    if isinstance(feature, list) or type(feature).__name__ in ("List", "LargeList", "Sequence"):
        # a list of images per row (The Cauldron): rows need exactly one
        one = pc.equal(pc.list_value_length(images), 1)
    elif pa.types.is_struct(images.type) and {"bytes", "path"} <= {f.name for f in images.type}:
        has_bytes = pc.greater(pc.binary_length(pc.struct_field(images, "bytes")), 0)
        one = pc.and_(pc.is_valid(images), pc.or_(pc.fill_null(has_bytes, False),
                                                  pc.is_valid(pc.struct_field(images, "path"))))
    else:
        one = pc.is_valid(images)
    return pc.fill_null(one, False)


def _one_example_rows(ds: Dataset, reader: RowReader) -> Any:
    """Row numbers of a question/answer set whose rows are one example each, from its Arrow columns alone, or None.

    A million rows are indexed in a fraction of a second this way, instead of ~20 s of reading every row's text in
    Python. None (read row by row, so that the first bad row is named before training) for conversation columns,
    lists of answers, or a missing question or answer.
    """
    import numpy as np

    if reader.turns_column:
        return None
    question, answer = reader.columns["question"], reader.columns["answer"]
    for column in (question, answer):
        if getattr(ds.features[column], "dtype", None) not in ("string", "large_string"):
            return None
    texts = ds.select_columns([question, answer]).with_format("arrow")[:]
    if texts.column(question).null_count or texts.column(answer).null_count:
        return None
    return np.flatnonzero(_one_image(ds, reader.columns["image"]).to_numpy(zero_copy_only=False))


def _row_index(ds: Dataset, reader: RowReader, limit: int) -> Sequence[tuple[int, int]]:
    """(row, turn) of every example, from the text columns and image-list lengths only (no image is read)."""
    rows = _one_example_rows(ds, reader)
    if rows is not None:
        if len(rows) < len(ds):
            logger.warning("hf dataset %r: %d rows without exactly one image skipped", reader.label,
                           len(ds) - len(rows))
        return FirstTurns(rows[:limit] if limit else rows)
    columns = [c for k, c in reader.columns.items() if k != "image"]
    texts = ds.select_columns(columns)
    image_column = reader.columns["image"]
    one_image = _one_image(ds, image_column).to_pylist()
    index: list[tuple[int, int]] = []
    skipped = 0
    for row_number, row in enumerate(texts):
        if limit and len(index) >= limit:
            break
        if not one_image[row_number]:
            skipped += 1
            continue
        # a placeholder image: only the turns are counted here (and checked, so a bad row fails before training)
        row = {**row, image_column: {"bytes": b"-"}}
        index += [(row_number, t) for t in range(len(reader.examples(row, row_number)))]
    if skipped:
        logger.warning("hf dataset %r: %d rows without exactly one image skipped", reader.label, skipped)
    return index[:limit] if limit else index


class HFStream:
    """A streamed hf dataset: Examples read on the fly, resumable at the row and turn it stopped at.

    Iterate it for one pass over this process's shard (see `shard`); `state_dict` after any Example says where
    the next one comes from. Without a shuffle buffer a resumed pass continues exactly. With one it is
    approximate, as datasets saves the position behind the buffer, not the rows in it: in the pass under way up
    to `shuffle_buffer` rows are missed and a few seen twice, in another order than an uninterrupted pass's.
    """

    def __init__(self, ds: IterableDataset, reader: RowReader, shuffle_buffer: int, seed: int,
                 limit: int = 0) -> None:
        self.source, self.reader, self.limit = ds, reader, limit
        self.ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer else ds
        self.label = reader.label
        self.skipped_rows = 0
        self._state = self._fresh(0)
        # just after a row's last example, where datasets' own state is the position (copied only when asked)
        self._after_row = False

    def shard(self, rank: int, world_size: int) -> None:
        """Read only this process's part (whole shards where they divide evenly, else every world_size-th row)."""
        from datasets.distributed import split_dataset_by_node

        if world_size > 1:
            self.ds = split_dataset_by_node(self.ds, rank=rank, world_size=world_size)

    def head(self, limit: int) -> list[Example]:
        """The first `limit` examples in stored order (a tokenizer's sample, an eval set), this stream's position kept.

        Read without the shuffle buffer: no buffer to fill first, and nothing left running once read.
        """
        return list(itertools.islice(HFStream(self.source, self.reader, 0, seed=0, limit=limit), limit or None))

    def state_dict(self) -> dict[str, Any]:
        """Where the next Example comes from: pass number, datasets' state before its row, turns of it done."""
        if self._after_row:
            # copying datasets' state costs more than reading a row (more with many shards), so it is taken when
            # asked (once a batch), not after every row
            self._state.update(row_state=self.ds.state_dict(), turns_done=0)
            self._after_row = False
        return dict(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict`."""
        self._state, self._after_row = dict(state), False

    def __iter__(self) -> Iterator[Example]:
        """One pass (from the saved position); the next iteration starts the next pass."""
        state = self._state
        self.ds.set_epoch(state["epoch"])
        if state["row_state"] is not None:
            self.ds.load_state_dict(state["row_state"])
        rows = iter(self.ds)
        # a stop inside a row of several examples resumes at its next turn, from datasets' state before the row
        several = self.reader.turns_column is not None
        while not (self.limit and state["examples"] >= self.limit):
            before = self.ds.state_dict() if several else None
            self._after_row = False
            row = _next_row(rows)
            if row is None:
                break
            examples = self.reader.examples(row, state["rows"])
            if not examples:
                self.skipped_rows += 1
                state["rows"] += 1
            start, state["turns_done"] = state["turns_done"], 0
            for turn in range(start, len(examples)):
                if self.limit and state["examples"] >= self.limit:
                    break
                last = turn + 1 == len(examples)
                state.update(row_state=None if last else before, turns_done=0 if last else turn + 1,
                             examples=state["examples"] + 1, rows=state["rows"] + last)
                self._after_row = last
                yield examples[turn]
        self._after_row = False
        self._state = self._fresh(state["epoch"] + 1)

    @staticmethod
    def _fresh(epoch: int) -> dict[str, Any]:
        """The state at the start of pass `epoch`."""
        return {"epoch": epoch, "row_state": None, "turns_done": 0, "examples": 0, "rows": 0}


def _next_row(rows: Iterator[dict]) -> dict | None:
    """The stream's next row, or None where its pass ends.

    A shuffled stream's readers end by waiting datasets' SLEEP_TIME_ON_THREADS_SHUTDOWN (5 s), so that pyarrow's
    threads of a scan left half read can wind down (apache/arrow#45214). A pass that runs out has read every scan to
    its end, yet waited too: 5 s a pass, most of a small set's pass. The wait is skipped only inside this call,
    where a pass can run out; a stream dropped mid-pass (a stopped run, a `head`) still waits.
    """
    from datasets import config

    wait = config.SLEEP_TIME_ON_THREADS_SHUTDOWN
    config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    try:
        return next(rows, None)
    finally:
        config.SLEEP_TIME_ON_THREADS_SHUTDOWN = wait


def is_stream(dataset: Any) -> bool:
    """Whether a reader gave a stream (no length, read on the fly) rather than a sequence of Examples."""
    return isinstance(dataset, HFStream)


@register_format("hf")
def read_hf(spec: DatasetSpec, templates: PromptTemplates) -> HFExamples | HFStream:
    """A Hugging Face dataset as a lazy sequence of Examples, or a stream of them with `streaming`."""
    ds, base = load_hf(spec)
    names = ds.column_names or list(next(iter(ds)))  # a stream may know its columns only once read
    reader = RowReader(spec, resolve_columns(spec, names), base, templates)
    if spec.streaming:
        return HFStream(ds, reader, spec.shuffle_buffer, seed=0, limit=spec.max_examples)
    return HFExamples(ds, reader, _row_index(ds, reader, spec.max_examples))
