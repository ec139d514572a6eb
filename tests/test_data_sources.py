"""The readers of the data users bring: LLaVA JSON/JSONL and Hugging Face datasets (map-style and streamed)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from mmgpt.data.example import Example
from mmgpt.data.formats import read_dataset
from mmgpt.data.hf import HFExamples, HFStream
from mmgpt.data.spec import DatasetSpec
from mmgpt.data.streaming import BLOCK, BatchImages, StreamingMixture
from mmgpt.images import load_image
from tests import hf_data


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sets")
    hf_data.save_folder(root / "disk", 200)
    hf_data.parquet_shards(root / "parquet", 200, shards=4)
    hf_data.llava_json(root / "llava", 30)
    hf_data.llava_json(root / "llava", 30, jsonl=True)
    return root


def test_llava_json_and_jsonl_give_one_example_per_assistant_turn(sets: Path) -> None:
    for name in ("llava.json", "llava.jsonl"):
        examples = read_dataset(DatasetSpec(format="llava", path=str(sets / "llava" / name),
                                            images=str(sets / "llava" / "images")))
        assert len(examples) == 60
        first, second = examples[0], examples[1]
        assert first.prompt == "User: what color is the shape?" and first.answer == "red"
        assert second.prompt == "User: what color is the shape?\nAssistant: red\nUser: is there a shape?"
        assert second.answer == "yes" and first.task == "chat" and first.id == "q0:0"
        assert load_image(first.image).getpixel((1, 1)) == (255, 0, 0)


def _llava(tmp_path: Path, records: list) -> DatasetSpec:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return DatasetSpec(format="llava", path=str(path))


def test_llava_errors_name_file_index_and_field(tmp_path: Path) -> None:
    turn = {"from": "human", "value": "<image>\nhi"}
    with pytest.raises(ValueError, match=r"data.json \[index 1\]: conversations\[1\]: field 'from' must be"):
        read_dataset(_llava(tmp_path, [{"image": "a.png", "conversations": [turn, {"from": "gpt", "value": "x"}]},
                                       {"image": "a.png", "conversations": [turn, {"from": "bot", "value": "x"}]}]))
    with pytest.raises(ValueError, match=r"\[index 0\]: field 'image' lists 2 images"):
        read_dataset(_llava(tmp_path, [{"image": ["a.png", "b.png"], "conversations": [turn]}]))
    with pytest.raises(ValueError, match=r"\[index 0\]: field 'conversations' has 2 <image> markers"):
        read_dataset(_llava(tmp_path, [{"image": "a.png", "conversations": [turn, {"from": "gpt", "value": "x"},
                                                                            turn]}]))
    with pytest.raises(ValueError, match=r"\[index 0\]: conversations\[0\]: missing field 'value'"):
        read_dataset(_llava(tmp_path, [{"image": "a.png", "conversations": [{"from": "human"}]}]))


def test_llava_skips_text_only_records(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    examples = read_dataset(_llava(tmp_path, [{"conversations": turns}, {"image": "x.png", "conversations": turns}]))
    assert [e.id for e in examples] == ["1:0"] and examples[0].image == str(tmp_path / "x.png")


@pytest.mark.parametrize("where", ["disk", "parquet", "parquet/train-*.parquet"])
def test_hf_map_style_reads_rows_lazily(sets: Path, where: str) -> None:
    examples = read_dataset(DatasetSpec(format="hf", path=str(sets / where)))
    assert isinstance(examples, HFExamples) and len(examples) == 400  # two turns per row (texts column)
    assert examples[2].answer == "green" and examples[3].answer == "yes"
    assert load_image(examples[2].image).getpixel((1, 1)) == (0, 128, 0)
    vqa = read_dataset(DatasetSpec(format="hf", path=str(sets / where), max_examples=50,
                                   columns={"question": "question", "answer": "answer"}))
    assert len(vqa) == 50 and vqa[9].prompt == "what color is the shape?" and vqa[9].answer == "green"


def test_hf_stream_resumes_where_it_stopped_and_shards_split_it(sets: Path) -> None:
    spec = DatasetSpec(format="hf", path=str(sets / "parquet"), streaming=True, shuffle_buffer=0)
    stream = read_dataset(spec)
    assert isinstance(stream, HFStream)
    whole = [(e.id, e.answer) for e in stream]
    assert len(whole) == 400 and len(set(whole)) == 400
    stopped = read_dataset(spec)
    it = iter(stopped)
    head = [(next(it).id, None)[0] for _ in range(7)]  # stops inside row 3, between its two turns
    resumed = read_dataset(spec)
    resumed.load_state_dict(json.loads(json.dumps(stopped.state_dict())))
    assert head + [e.id for e in resumed] == [i for i, _ in whole]
    parts = []
    for rank in range(2):
        shard = read_dataset(spec)
        shard.shard(rank, 2)
        parts.append({e.id for e in shard})
    assert not parts[0] & parts[1] and parts[0] | parts[1] == {i for i, _ in whole}


def test_hf_errors_name_the_field(sets: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'path' 'https://x.org/d' is a URL"):
        read_dataset(DatasetSpec(format="hf", path="https://x.org/d"))
    with pytest.raises(ValueError, match="'columns.image' names column 'img'.*columns: image"):
        read_dataset(DatasetSpec(format="hf", path=str(sets / "disk"), columns={"image": "img"}))
    with pytest.raises(ValueError, match=r"field 'columns': unknown key\(s\) \['picture'\]"):
        DatasetSpec(format="hf", path="x", columns={"picture": "img"})
    with pytest.raises(ValueError, match="'subset', 'columns' and 'streaming' are for format hf"):
        DatasetSpec(format="jsonl", path="x", streaming=True)
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        read_dataset(DatasetSpec(format="hf", path=str(tmp_path / "none")))
    import datasets

    datasets.Dataset.from_list([{"image": "http://x.org/a.png", "question": "q", "answer": "a"}]).save_to_disk(
        str(tmp_path / "urls"))
    with pytest.raises(ValueError, match="row 0 column 'image': image 'http://x.org/a.png' is a URL"):
        read_dataset(DatasetSpec(format="hf", path=str(tmp_path / "urls")))[0]


def test_streaming_mixture_keeps_weights_splits_the_stream_and_replaces_bad_images(sets: Path) -> None:
    def image_tensor(image: object) -> torch.Tensor:
        if image == "bad":
            raise ValueError("bad: not an image")
        return torch.zeros(3, 2, 2)

    listed = [Example(image="bad" if i % 5 == 0 else f"{i}.png", prompt="q", answer=str(i), id=i) for i in range(30)]
    spec = DatasetSpec(format="hf", path=str(sets / "parquet"), streaming=True, shuffle_buffer=0, name="stream",
                       columns={"question": "question", "answer": "answer"})
    seen: list[dict] = []
    for rank in range(2):
        mixture = StreamingMixture([("list", listed, 1.0), ("stream", read_dataset(spec), 3.0)], batch_size=4,
                                   seed=5, rank=rank, world_size=2)
        images = BatchImages(image_tensor)
        batches = [images[planned][0] for planned, _ in zip(mixture, range(BLOCK))]
        sources = [{ex.source for ex, _ in items} for items in batches]
        assert all(len(s) == 1 for s in sources), "a batch comes from one dataset"
        assert [s.pop() for s in sources].count("stream") == 75  # weights 3:1, exactly per block
        listed_seen = [ex.id for items in batches for ex, _ in items if ex.source == "list"]
        assert 0 not in listed_seen and 5 not in listed_seen
        assert sum(len(f) for items in batches for _, f in items) > 0
        seen.append({"stream": [ex.id for items in batches[:40] for ex, _ in items if ex.source == "stream"],
                     "order": [mixture.dataset_of_batch(b) for b in range(BLOCK)]})
    assert seen[0]["order"] == seen[1]["order"], "every process picks the same dataset for a batch"
    assert not set(seen[0]["stream"]) & set(seen[1]["stream"]), "each process reads its own shard"


def _your_data_section() -> str:
    """docs/data.md's *Your data* section, up to its `mmgpt validate` commands."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "data.md").read_text(encoding="utf-8")
    return text.split("\n## Your data", 1)[1].split("\n## ", 1)[0].split("Check a dataset before training", 1)[0]


def test_the_data_guides_your_data_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    import yaml

    section = _your_data_section()
    (tmp_path / "images").mkdir()
    hf_data.llava_json(tmp_path, 10)
    (tmp_path / "llava.json").rename(tmp_path / "llava_instruct.json")
    hf_data.parquet_shards(tmp_path / "shards", 40, shards=2)
    (tmp_path / "my_data.jsonl").write_text("\n".join(
        json.dumps({"image": f"images/{i:04d}.png", "prompt": "q", "answer": "a"}) for i in range(5)))
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    local = [spec for spec in config["data"]["train"] if not spec["path"].startswith("hf://")]
    assert [spec["format"] for spec in local] == ["jsonl", "llava", "hf"]
    for spec in local:
        assert len(list(zip(read_dataset(DatasetSpec(**spec)), range(5)))) == 5
    commands = section.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(commands) == 2
    for command in commands:
        argv = command.replace("'", "").split()
        assert argv[:2] == ["mmgpt", "validate"]
        proc = subprocess.run([sys.executable, "-m", "mmgpt.cli", *argv[1:]], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0 and "OK: no problems found" in proc.stdout, proc.stderr[-2000:]


def test_a_stream_with_a_shuffle_buffer_resumes_missing_and_repeating_at_most_the_buffer(sets: Path) -> None:
    spec = DatasetSpec(format="hf", path=str(sets / "parquet"), streaming=True, shuffle_buffer=16)
    whole = [e.id for e in read_dataset(spec)]
    assert len(set(whole)) == 400 and whole[:8] != sorted(whole[:8], key=lambda i: tuple(map(int, i.split(":"))))

    def rows(ids: set[str]) -> set[str]:
        return {i.split(":")[0] for i in ids}

    for stop in (37, 151):  # 151: inside a two-turn row
        stopped = read_dataset(spec)
        head = [e.id for e in itertools.islice(stopped, stop)]
        resumed = read_dataset(spec)
        resumed.load_state_dict(json.loads(json.dumps(stopped.state_dict())))
        tail = [e.id for e in resumed]
        # datasets saves the position behind the buffer, not the rows in it: approximate, within the buffer
        repeated, missed = rows(set(head) & set(tail)), rows(set(whole) - set(head) - set(tail))
        assert len(tail) == len(set(tail)) and len(repeated) <= 16 and 0 < len(missed) <= 16, (repeated, missed)


def test_a_shuffled_pass_that_runs_out_does_not_wait_for_reader_threads(sets: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import time

    from datasets import config

    waits = []
    sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: waits.append(s) or sleep(min(s, 0.01)))
    stream = read_dataset(DatasetSpec(format="hf", path=str(sets / "parquet"), streaming=True, shuffle_buffer=16))
    # datasets waits 5 s whenever a shuffled stream's reader ends; two whole passes end twice, and never wait
    assert [len(list(stream)) for _ in range(2)] == [400, 400]
    assert waits.count(config.SLEEP_TIME_ON_THREADS_SHUTDOWN) == 0 and config.SLEEP_TIME_ON_THREADS_SHUTDOWN == 5
    # one dropped mid-pass still waits (its scan was left half read)
    half = iter(stream)
    next(half)
    del half
    gc.collect()
    assert waits.count(config.SLEEP_TIME_ON_THREADS_SHUTDOWN) == 1


def test_planning_a_stream_copies_datasets_position_once_a_batch_and_heads_skip_the_shuffle(
        sets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmgpt.data.streaming import first_examples

    spec = DatasetSpec(format="hf", path=str(sets / "parquet"), streaming=True, shuffle_buffer=16, name="stream",
                       columns={"question": "question", "answer": "answer"})
    stream = read_dataset(spec)
    # a tokenizer's sample and an eval set: the stored order, with no shuffle buffer to fill (nor, in datasets,
    # its reader threads to wind down when the read stops early)
    assert [e.id for e in first_examples(stream, 10)] == list(range(10))
    copies = []
    original = type(stream.ds).state_dict
    monkeypatch.setattr(type(stream.ds), "state_dict", lambda ds: copies.append(1) or original(ds))
    planned = list(itertools.islice(StreamingMixture([("stream", stream, 1.0)], batch_size=8), 10))
    assert len({e.id for p in planned for e in p.examples}) == 80
    # copying datasets' state costs more than reading a row: once a batch (and once a pass), not once a row
    assert len(copies) <= 10 + 1, len(copies)


def test_a_question_answer_set_is_indexed_from_its_columns_as_row_by_row(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from mmgpt.data import hf

    data = hf_data.rows(40)
    for i in (3, 17):  # rows without an image: skipped, and counted
        data[i]["image"] = None
    data[25]["image"] = {"bytes": b"", "path": str(tmp_path / "on-disk.png")}  # a path, no bytes
    features = hf_data.hf_dataset(1).features
    datasets.Dataset.from_list(data, features=features).save_to_disk(str(tmp_path / "qa"))
    spec = DatasetSpec(format="hf", path=str(tmp_path / "qa"), columns={"question": "question", "answer": "answer"})
    fast = read_dataset(spec)
    assert isinstance(fast.index, hf.FirstTurns)  # no pass over the rows in Python
    monkeypatch.setattr(hf, "_one_example_rows", lambda ds, reader: None)
    slow = read_dataset(spec)
    assert len(fast) == len(slow) == 38
    assert [(e.id, e.prompt, e.answer, e.image) for e in fast] == [(e.id, e.prompt, e.answer, e.image) for e in slow]
    assert [e.id for e in read_dataset(spec.__class__(**{**vars(spec), "max_examples": 5}))] == [0, 1, 2, 4, 5]
