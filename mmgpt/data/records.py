"""What every dataset reader shares: the format registry, field and file checks that name the location, turns."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgpt.data.example import Example
from mmgpt.prompts import conversation_prompt
from mmgpt.registry import registrar

if TYPE_CHECKING:
    from mmgpt.config import PromptTemplates
    from mmgpt.data.spec import DatasetSpec

Reader = Callable[["DatasetSpec", "PromptTemplates"], "list[Example]"]
FORMATS: dict[str, Reader] = {}


register_format = registrar(FORMATS, "dataset format")


def require_path(spec: DatasetSpec, field: str, what: str, folder: bool = False) -> Path:
    """The spec's `field` as an existing file (or folder), or an error naming field, path and expected content."""
    value = getattr(spec, field)
    if not value:
        raise ValueError(f"{spec.format} dataset {spec.label!r}: field '{field}' is required ({what})")
    path = Path(value).expanduser()
    if not (path.is_dir() if folder else path.is_file()):
        raise FileNotFoundError(f"{spec.format} dataset {spec.label!r}: {what} not found at {path} (field '{field}')")
    return path


def record_field(record: dict, key: str, where: str, types: type | tuple = str) -> Any:
    """record[key], or a ValueError naming the location and the field."""
    if key not in record:
        raise ValueError(f"{where}: missing field '{key}'")
    if not isinstance(record[key], types):
        raise ValueError(f"{where}: field '{key}' has type {type(record[key]).__name__}")
    return record[key]


def local_path(value: str, base: Path) -> str:
    """A record's file path: `value` with ~ expanded, relative to `base` unless absolute."""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def default_cache_root() -> Path:
    """Where built-in synthetic datasets are cached: $MMGPT_CACHE or ~/.cache/mmgpt."""
    return Path(os.environ.get("MMGPT_CACHE") or "~/.cache/mmgpt").expanduser()


def conversation_examples(image: Any, turns: list[tuple[str, str, str]], where: str, ex_id: Any,
                          source: str, field_name: str = "conversations") -> list[Example]:
    """One "chat" Example per assistant turn of (role, content, location) turns, prompted with the dialogue so far."""
    history: list[tuple[str, str]] = []
    out = []
    for role, content, twhere in turns:
        if role == "assistant":
            if not history or history[-1][0] != "user":
                raise ValueError(f"{twhere}: an assistant turn must follow a user turn")
            out.append(Example(image=image, prompt=conversation_prompt(history), answer=content, task="chat",
                               id=f"{ex_id}:{len(out)}", source=source, meta={"turn": len(out)}))
        history.append((role, content))
    if not out:
        raise ValueError(f"{where}: field '{field_name}' has no assistant turn")
    return out


def jsonl_lines(path: Path) -> Iterator[tuple[int, str | ValueError]]:
    """(line number, text) of a JSONL file in UTF-8 (UTF-16/32 recognised too); a line of bad bytes gives the
    error naming it in place of its text."""
    with path.open("rb") as f:
        encoding = json.detect_encoding(f.read(4))
        f.seek(0)
        if not encoding.startswith("utf-8"):  # rare: decode whole, as lines cannot be split on bytes
            try:
                text = f.read().decode(encoding)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not valid {encoding} text ({e.reason} at byte {e.start})") from None
            yield from enumerate(text.split("\n"), start=1)
            return
        for line_no, raw in enumerate(f, start=1):
            try:
                yield line_no, raw.decode(encoding if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield line_no, ValueError(f"{path} line {line_no}: not valid UTF-8 ({e.reason} at column "
                                          f"{e.start + 1}); save the file as UTF-8")


def jsonl_records(path: Path) -> Iterator[tuple[int, str, Any]]:
    """(line number, location `path line N`, parsed JSON value) of each non-blank line; a line that cannot be read
    or parsed gives its ValueError in place of the value, so a reader can stop there or go on (record_problems)."""
    for line_no, line in jsonl_lines(path):
        if isinstance(line, ValueError):
            yield line_no, f"{path} line {line_no}", line
            continue
        if not line.strip():
            continue
        where = f"{path} line {line_no}"
        try:
            # without its line break, a line cut short reads as such ("Unterminated string"), not as a control
            # character; some messages end in "at" ("... starting at"), which the column completes
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            value = ValueError(f"{where}: invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})")
        except RecursionError:
            value = ValueError(f"{where}: JSON nested too deeply to parse")
        yield line_no, where, value


def record_object(value: Any, where: str) -> dict:
    """A value of jsonl_records (or of a JSON list) as a record object; a line's ValueError, or any other value, is
    the error."""
    if isinstance(value, ValueError):
        raise value
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


@contextlib.contextmanager
def record_problems(problems: list[str] | None) -> Iterator[None]:
    """Around one record: its ValueError is raised, or with a `problems` list, appended to it and the record skipped
    (mmgpt validate lists every bad record; training stops at the first)."""
    try:
        yield
    except ValueError as e:
        if problems is None:
            raise
        problems.append(str(e))
