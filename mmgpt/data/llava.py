"""LLaVA-format conversations: ``format: llava``.

A JSON list of records (LLaVA's ``llava_instruct_*.json``) or JSONL, one record per line::

    {"id": "000001", "image": "coco/train2017/000000000009.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the plate?"},
                       {"from": "gpt", "value": "Broccoli and rice."}, ...]}

``from`` is ``human`` (or ``user``) and ``gpt`` (or ``assistant``); ``system`` turns are dropped. The
``<image>`` token only marks where the image goes: the model takes the one image of an example in its
prefix, so the token is removed from the text. Each assistant turn becomes one "chat" Example, as JSONL
conversations do (mmgpt.data.formats). Image paths are relative to ``images`` (the image root), else to the
file's folder. Records without an image (LLaVA's text-only ShareGPT part) are skipped and counted; a record
with several images is an error.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgpt.config import PromptTemplates
from mmgpt.data import records
from mmgpt.data.example import Example
from mmgpt.jsonfile import read_json_file

if TYPE_CHECKING:
    from mmgpt.data.spec import DatasetSpec

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def strip_image_token(text: str) -> str:
    """`text` without the <image> marker and the line break that sets it apart."""
    return text.replace(IMAGE_TOKEN + "\n", "").replace("\n" + IMAGE_TOKEN, "").replace(IMAGE_TOKEN, "").strip()


def llava_turns(conversations: Any, where: str, field_name: str = "conversations") -> list[tuple[str, str, str]]:
    """(role, text without <image>, location) per turn of a LLaVA `conversations` list; system turns dropped."""
    if not isinstance(conversations, list):
        raise ValueError(f"{where}: field '{field_name}' must be a list of {{from, value}} objects")
    turns = []
    markers = 0
    for t, turn in enumerate(conversations):
        twhere = f"{where}: {field_name}[{t}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{twhere} must be an object with 'from' and 'value'")
        speaker, value = records.record_field(turn, "from", twhere), records.record_field(turn, "value", twhere)
        if speaker == "system":
            continue
        if speaker not in ROLES:
            raise ValueError(f"{twhere}: field 'from' must be one of {sorted(ROLES)} or 'system', got {speaker!r}")
        markers += value.count(IMAGE_TOKEN)
        turns.append((ROLES[speaker], strip_image_token(value), twhere))
    if markers > 1:
        raise ValueError(f"{where}: field '{field_name}' has {markers} {IMAGE_TOKEN} markers; the model takes one "
                         "image per example")
    return turns


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, record) of a JSON list (`[index i]`) or of JSONL (`line n`; a bad line's ValueError as its record)."""
    with path.open("rb") as f:
        first = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if first.startswith(b"["):
        data = read_json_file(path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        for i, record in enumerate(data):
            yield f"{path} [index {i}]", record
        return
    for _, where, record in records.jsonl_records(path):
        yield where, record


@records.register_format("llava")
def read_llava(spec: DatasetSpec, templates: PromptTemplates, problems: list[str] | None = None) -> list[Example]:
    """LLaVA JSON or JSONL conversations over an image folder (schema at the top of this module).

    A record that is not a valid example is an error, or with a `problems` list, appended to it and skipped.
    """
    path = records.require_path(spec, "path", "LLaVA JSON (a list of records) or JSONL file")
    base = records.require_path(spec, "images", "image root folder", folder=True) if spec.images else path.parent
    out: list[Example] = []
    text_only = 0
    for index, (where, record) in enumerate(_records(path)):
        if spec.max_examples and len(out) >= spec.max_examples:
            break
        with records.record_problems(problems):
            record = records.record_object(record, where)
            image = record.get("image")
            if image is None:
                text_only += 1
                continue
            if isinstance(image, list):
                raise ValueError(f"{where}: field 'image' lists {len(image)} images; the model takes one per example")
            image_path = records.local_path(records.record_field(record, "image", where), base)
            turns = llava_turns(records.record_field(record, "conversations", where, list), where)
            out.extend(records.conversation_examples(image_path, turns, where, record.get("id", index), spec.label))
    if text_only:
        logger.warning("%s: %d records without an image skipped (the model takes one image per example)",
                       path, text_only)
    return out
