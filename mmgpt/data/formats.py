"""Dataset readers: one registered function per on-disk format, each turning a DatasetSpec into Examples.

Formats (`DatasetSpec.format`):

* ``easy_vqa`` - the installed `easy-vqa` package; split ``train`` or ``test``; path/images unused.
* ``coco_captions`` - official ``captions_*.json`` (path) + image folder (images); one Example per caption.
* ``shapes_captions`` - built-in synthetic captions (mmgpt.data.shapes); path = cache root folder
  (default ``$MMGPT_CACHE/shapes`` or ``~/.cache/mmgpt/shapes``); split train/val/test, or held_out: 300 new
  scenes each of one, two and three shapes that no split shows (for caption facts).
* ``multi_image_shapes`` - built-in synthetic VQA with 2-3 one-shape images per question about the set
  (mmgpt.data.shapes_vqa); path = cache root folder (default as shapes_captions); split train/val/test.
* ``highres_shapes`` - built-in synthetic VQA on 448 px scenes of small shapes, asked about by position
  (mmgpt.data.shapes_vqa); path = cache root folder (default as shapes_captions); split train/val/test.
* ``vqa_v2`` - official questions JSON (path) + optional annotations JSON (annotations) + COCO image
  folder (images). An image is looked up as ``COCO_{data_subtype}_{image_id:012d}.jpg`` (the official
  name; ``data_subtype`` is read from the questions file, e.g. "val2014"), then ``{image_id:012d}.jpg``,
  then ``{image_id}.jpg``; if none exists the official name is kept and `validate` reports it missing.
  Without annotations (test-dev style) answers are "".
* ``jsonl`` - one JSON object per line, either single-turn
  ``{"image": path, "prompt": str, "answer": str, "task"?: str, "id"?: any, "meta"?: dict}`` or multi-turn
  ``{"image": path, "conversations": [{"role": "user"|"assistant", "content": str}, ...], "id"?: any}``.
  Each assistant turn becomes one "chat" Example prompted with the dialogue before it
  (`mmgpt.prompts.conversation_prompt`: "User: ..." / "Assistant: ..." lines).
  Relative image paths resolve against `images` if given, else against the JSONL file's folder.
  Several images: ``"images": [path, ...]`` instead of ``image``, with one ``<image>`` placeholder per image
  in ``prompt`` or in the conversation turns saying where each goes (none: all images first, in order; in a
  dialogue, each example gets the images placed so far). Only a record with ``images`` has placeholders: in
  an ``image`` record, and in any text a user types elsewhere, ``<image>`` is text.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgpt.config import PromptTemplates
from mmgpt.data.example import TASKS, Example
from mmgpt.data.records import (
    FORMATS,
    conversation_examples,
    default_cache_root,
    jsonl_records,
    local_path,
    record_field,
    record_object,
    record_problems,
    register_format,
    require_path,
)
from mmgpt.jsonfile import read_json_file
from mmgpt.prompts import IMAGE_PLACEHOLDER, IMAGE_SLOT, with_image_slots

if TYPE_CHECKING:
    # the spec imports this module to check format names, so the spec is only a type hint here
    from mmgpt.data.spec import DatasetSpec

logger = logging.getLogger(__name__)

def read_dataset(spec: DatasetSpec, templates: PromptTemplates | None = None,
                 problems: list[str] | None = None) -> Any:
    """Read `spec` with its registered reader, keeping the first `max_examples` examples.

    A list of Examples for most formats; format hf gives a lazy sequence, or a stream (mmgpt.data.hf.HFStream)
    with `streaming`, which no reader passes over here. With a `problems` list, a reader that reads record by
    record (jsonl, llava) appends each record that is not a valid example to it and goes on (mmgpt validate
    lists them all); otherwise the first one is an error.
    """
    reader = FORMATS[spec.format]
    if problems is not None and "problems" in inspect.signature(reader).parameters:
        examples = reader(spec, templates or PromptTemplates(), problems=problems)
    else:
        examples = reader(spec, templates or PromptTemplates())
    if not isinstance(examples, list):  # hf readers apply max_examples and the source themselves
        logger.info("%s: %s (%s)", spec.label, "streamed" if not hasattr(examples, "__len__")
                    else f"{len(examples)} examples, rows read when used", spec.format)
        return examples
    if spec.max_examples:
        examples = examples[: spec.max_examples]
    for ex in examples:
        ex.source = ex.source or spec.label
    logger.info("read %d examples from %s (%s, split %s)", len(examples), spec.label, spec.format, spec.split)
    return examples


def _load_json(path: Path, *keys: str) -> dict:
    """A JSON object from `path` that must hold list fields `keys`."""
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at top level, got {type(data).__name__}")
    for key in keys:
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing list field '{key}'")
    return data


# Longest match wins; mirrors the official VQA "question_type" prefixes plus easy-vqa's templates.
_QUESTION_TYPES = (
    "what color is the", "what is the color of the", "what shape is", "what shape does the image contain",
    "what is the", "what is", "what", "is there a", "is there not a", "is there", "is a", "is no", "is",
    "does the image contain a", "does the image not contain a", "does the", "how many", "are there", "are",
)


_QUESTION_TYPE_WORDS = tuple((qtype, qtype.split()) for qtype in _QUESTION_TYPES)


# datasets repeat a few question templates tens of thousands of times: each is classified once
@functools.lru_cache(maxsize=1 << 16)
def question_type(question: str) -> str:
    """VQA-style question type: the longest known prefix of the question's words."""
    words = question.lower().rstrip("?").split()
    best = ""
    for qtype, parts in _QUESTION_TYPE_WORDS:
        if words[: len(parts)] == parts and len(qtype) > len(best):
            best = qtype
    return best or "none of the above"


@register_format("easy_vqa")
def read_easy_vqa(spec: DatasetSpec, templates: PromptTemplates) -> list[Example]:
    """The easy-vqa package's train or test split."""
    import easy_vqa

    if spec.split not in ("train", "test"):
        raise ValueError(
            f"easy_vqa dataset {spec.label!r}: field 'split' must be 'train' or 'test', got {spec.split!r}"
        )
    train = spec.split == "train"
    questions, answers, image_ids = (easy_vqa.get_train_questions if train else easy_vqa.get_test_questions)()
    paths = (easy_vqa.get_train_image_paths if train else easy_vqa.get_test_image_paths)()
    n = spec.max_examples or len(questions)
    return [
        Example(image=paths[img], prompt=templates.vqa.format(question=q), answer=a, task="vqa",
                id=f"{spec.split}-{i}", source=spec.label,
                meta={"question": q, "question_type": question_type(q), "image_id": img,
                      "answer_type": "yes/no" if a in ("yes", "no") else "other"})
        for i, (q, a, img) in enumerate(zip(questions[:n], answers[:n], image_ids[:n]))
    ]


@register_format("coco_captions")
def read_coco_captions(spec: DatasetSpec, templates: PromptTemplates) -> list[Example]:
    """Official COCO captions JSON: one caption Example per annotation, all captions kept as references."""
    path = require_path(spec, "path", "COCO captions JSON (captions_*.json)")
    root = require_path(spec, "images", "folder holding the COCO images", folder=True)
    data = _load_json(path, "images", "annotations")
    files: dict[Any, str] = {}
    scenes: dict[Any, dict] = {}  # what a synthetic image shows (mmgpt.data.shapes), for checking captions' facts
    for i, img in enumerate(data["images"]):
        where = f"{path} images[{i}]"
        files[record_field(img, "id", where, (int, str))] = record_field(img, "file_name", where)
        if isinstance(img.get("scene"), dict):
            scenes[img["id"]] = img["scene"]
    anns = data["annotations"][: spec.max_examples or None]
    refs: dict[Any, list[str]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        where = f"{path} annotations[{i}]"
        refs[record_field(ann, "image_id", where, (int, str))].append(record_field(ann, "caption", where).strip())
    out = []
    image_paths: dict[Any, str] = {}  # one path per image, not one per caption
    for i, ann in enumerate(anns):
        image_id = ann["image_id"]
        if image_id not in files:
            raise ValueError(f"{path} annotations[{i}]: field 'image_id' {image_id!r} is not in 'images'")
        if image_id not in image_paths:
            image_paths[image_id] = str(root / files[image_id])
        out.append(Example(image=image_paths[image_id], prompt=templates.caption, answer=ann["caption"].strip(),
                           task="caption", id=ann.get("id", i), source=spec.label,
                           meta={"image_id": image_id, "references": list(refs[image_id]),
                                 **({"scene": scenes[image_id]} if image_id in scenes else {})}))
    return out


def built_split(spec: DatasetSpec, build: Callable[[Path], dict[str, Path]], folder: str,
                other_splits: dict[str, Callable[[Path], Path]] | None = None) -> Path:
    """The file of `spec.split` of a built-in generated set, built (once) under spec.path or $MMGPT_CACHE/`folder`.

    `other_splits`: splits built on their own ({name: build(root) -> file}), only when asked for.
    """
    root = Path(spec.path).expanduser() if spec.path else default_cache_root() / folder
    if other_splits and spec.split in other_splits:
        return Path(other_splits[spec.split](root))
    files = build(root)
    if spec.split not in files:
        raise ValueError(f"{spec.format} dataset {spec.label!r}: field 'split' must be one of "
                         f"{sorted([*files, *(other_splits or {})])}, got {spec.split!r}")
    return Path(files[spec.split])


@register_format("shapes_captions")
def read_shapes_captions(spec: DatasetSpec, templates: PromptTemplates) -> list[Example]:
    """Built-in synthetic shapes captions, generated on first use, read as COCO captions."""
    from mmgpt.data.shapes import build_held_out_scenes, build_shapes_captions

    captions = built_split(spec, build_shapes_captions, "shapes", {"held_out": build_held_out_scenes})
    coco = replace(spec, format="coco_captions", path=str(captions),
                   images=str(captions.parent / "images" / spec.split),
                   annotations="", weight=1.0, name=spec.label, augment=[])
    return read_coco_captions(coco, templates)


@register_format("shapes_questions")
def read_shapes_questions(spec: DatasetSpec, templates: PromptTemplates) -> list[Example]:
    """Questions about each shape of the built-in shapes captions' scenes, by its position: its shape, its colour
    and where it is; short answers about the captions' own images (their split)."""
    from mmgpt.data.shapes import LOCATIONS, build_shapes_captions

    captions = built_split(spec, build_shapes_captions, "shapes")
    out = []
    for image in _load_json(captions, "images", "annotations")["images"]:
        path = str(captions.parent / "images" / spec.split / image["file_name"])
        for o in image["scene"]["shapes"]:
            where = LOCATIONS[(o["row"], o["col"])]
            # worded unlike easy-VQA's questions, whose "rectangle" also names squares
            for kind, question, answer in (("shape_at", f"name the shape {where}.", o["shape"]),
                                           ("colour_at", f"name the colour of the shape {where}.", o["color"]),
                                           ("where", f"say where the {o['color']} shape is.", where)):
                out.append(Example(image=path, prompt=templates.vqa.format(question=question), answer=answer,
                                   task="vqa", id=f"{image['id']}-{kind}-{o['row']}{o['col']}", source=spec.label,
                                   meta={"question": question, "question_type": kind, "answer_type": "other",
                                         "scene": image["scene"]}))
                if spec.max_examples and len(out) >= spec.max_examples:
                    return out
    return out


def built_in_vqa(spec: DatasetSpec, templates: PromptTemplates,
                 build: Callable[[Path], dict[str, Path]], folder: str) -> list[Example]:
    """A built-in generated VQA set (mmgpt.data.shapes_vqa): its split's JSONL, the vqa template applied."""
    split_file = built_split(spec, build, folder)
    out, paths = [], {}  # a multi-image set's questions share a pool of images: each path is resolved once
    for _, where, record in jsonl_records(split_file):
        if spec.max_examples and len(out) >= spec.max_examples:
            break
        record = record_object(record, where)
        meta = record["meta"]
        images = [paths.get(p) or paths.setdefault(p, local_path(p, split_file.parent))
                  for p in record.get("images", [record.get("image")])]
        out.append(Example(image=images[0] if "image" in record else images,
                           prompt=templates.vqa.format(question=meta["question"]), answer=record["answer"],
                           task="vqa", id=record["id"], source=spec.label,
                           meta={"question": meta["question"], "question_type": meta["question_type"],
                                 "answer_type": meta["answer_type"], "scenes": meta["scenes"]}))
    return out


@register_format("highres_shapes")
def read_highres_shapes(spec: DatasetSpec, templates: PromptTemplates) -> list[Example]:
    """Built-in high-res shapes VQA (448 px scenes, questions about one small shape by position)."""
    from mmgpt.data.shapes_vqa import build_highres_shapes

    return built_in_vqa(spec, templates, build_highres_shapes, "shapes")


@register_format("multi_image_shapes")
def read_multi_image_shapes(spec: DatasetSpec, templates: PromptTemplates) -> list[Example]:
    """Built-in multi-image shapes VQA (2-3 one-shape images per question about the set); needs model.max_images 3."""
    from mmgpt.data.shapes_vqa import build_multi_image_shapes

    return built_in_vqa(spec, templates, build_multi_image_shapes, "shapes")


def _vqa_image(root: Path, names: set[str], subtype: str, image_id: int) -> str:
    """Image path by the official COCO name, else the fallbacks documented at the top of this module."""
    candidates = [f"{image_id:012d}.jpg", f"{image_id}.jpg"]
    if subtype:
        candidates.insert(0, f"COCO_{subtype}_{image_id:012d}.jpg")
    return str(root / next((c for c in candidates if c in names), candidates[0]))


@register_format("vqa_v2")
def read_vqa_v2(spec: DatasetSpec, templates: PromptTemplates) -> list[Example]:
    """Official VQA v2 questions (+ optional annotations) over COCO images."""
    qpath = require_path(spec, "path", "VQA v2 questions JSON (e.g. v2_OpenEnded_mscoco_val2014_questions.json)")
    root = require_path(spec, "images", "folder holding the COCO images", folder=True)
    questions = _load_json(qpath, "questions")
    subtype = str(questions.get("data_subtype", ""))
    anns: dict[Any, dict] = {}
    apath = None
    if spec.annotations:
        apath = require_path(spec, "annotations", "VQA v2 annotations JSON (e.g. v2_mscoco_val2014_annotations.json)")
        for i, ann in enumerate(_load_json(apath, "annotations")["annotations"]):
            anns[record_field(ann, "question_id", f"{apath} annotations[{i}]", (int, str))] = ann
    # one directory listing instead of a stat per question (there are ~200k per split)
    names = {e.name for e in os.scandir(root)}
    out = []
    for i, q in enumerate(questions["questions"][: spec.max_examples or None]):
        where = f"{qpath} questions[{i}]"
        qid, image_id = record_field(q, "question_id", where, (int, str)), record_field(q, "image_id", where, int)
        text = record_field(q, "question", where)
        meta: dict[str, Any] = {"question": text, "image_id": image_id, "question_type": question_type(text)}
        answer = ""
        if apath is not None:
            if qid not in anns:
                raise ValueError(f"{apath}: no annotation for question_id {qid!r} (from {qpath})")
            ann, awhere = anns[qid], f"{apath} annotation for question_id {qid!r}"
            answer = record_field(ann, "multiple_choice_answer", awhere)
            meta["answers"] = [record_field(a, "answer", awhere) for a in record_field(ann, "answers", awhere, list)]
            meta["question_type"] = ann.get("question_type", meta["question_type"])
            meta["answer_type"] = ann.get("answer_type", "")
        out.append(Example(image=_vqa_image(root, names, subtype, image_id), prompt=templates.vqa.format(question=text),
                           answer=answer, task="vqa", id=qid, source=spec.label, meta=meta))
    return out


def _record_images(record: dict, where: str, base: Path) -> Any:
    """A record's image path, or the list of its paths (field 'images'), resolved against `base`."""
    if "images" not in record:
        return local_path(record_field(record, "image", where), base)
    if "image" in record:
        raise ValueError(f"{where}: give either field 'image' or field 'images', not both")
    paths = record_field(record, "images", where, list)
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"{where}: field 'images' must be a non-empty list of image paths")
    return [local_path(p, base) for p in paths]


def _place_images(examples: list[Example], where: str) -> list[Example]:
    """Examples of a several-images record with their placeholders made slots, each with the images it shows.

    A prompt without placeholders has all the record's images first; with them, a dialogue's example gets
    the images of the placeholders so far, and the record's placeholders must number its images.
    """
    images = examples[0].image
    prompts = [with_image_slots(e.prompt) for e in examples]
    if not any(IMAGE_SLOT in p for p in prompts):
        return [replace(e, prompt=p) for e, p in zip(examples, prompts)]
    total = max(p.count(IMAGE_SLOT) for p in prompts)
    if total != len(images):
        raise ValueError(f"{where}: {total} {IMAGE_PLACEHOLDER} placeholders for {len(images)} images in field "
                         f"'images'; put one per image, or none to have all images first")
    out = []
    for example, prompt in zip(examples, prompts):
        if IMAGE_SLOT not in prompt:
            raise ValueError(f"{where}: example {example.id!r} comes before the first {IMAGE_PLACEHOLDER} "
                             f"placeholder; put it in the first user turn")
        out.append(replace(example, prompt=prompt, image=images[: prompt.count(IMAGE_SLOT)]))
    return out


def _jsonl_examples(record: dict, where: str, base: Path, source: str, line_no: int) -> list[Example]:
    """Examples from one parsed JSONL record (single- or multi-turn, one image or several)."""
    image = _record_images(record, where, base)
    examples = _jsonl_record_examples(record, where, image, source, line_no)
    return _place_images(examples, where) if isinstance(image, list) else examples


def _jsonl_record_examples(record: dict, where: str, image: Any, source: str, line_no: int) -> list[Example]:
    ex_id = record.get("id", f"line{line_no}")
    if "conversations" not in record:
        task = record.get("task", "vqa")
        if task not in TASKS:
            raise ValueError(f"{where}: field 'task' must be one of {TASKS}, got {task!r}")
        meta = record.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"{where}: field 'meta' must be an object ({{...}}), got {type(meta).__name__}")
        return [Example(image=image, prompt=record_field(record, "prompt", where),
                        answer=record_field(record, "answer", where), task=task, id=ex_id, source=source,
                        meta=dict(meta or {}))]
    turns = []
    for t, turn in enumerate(record_field(record, "conversations", where, list)):
        twhere = f"{where}: conversations[{t}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{twhere} must be an object with 'role' and 'content'")
        role, content = record_field(turn, "role", twhere), record_field(turn, "content", twhere)
        if role not in ("user", "assistant"):
            raise ValueError(f"{twhere}: field 'role' must be 'user' or 'assistant', got {role!r}")
        turns.append((role, content, twhere))
    return conversation_examples(image, turns, where, ex_id, source)


@register_format("jsonl")
def read_jsonl(spec: DatasetSpec, templates: PromptTemplates, problems: list[str] | None = None) -> list[Example]:
    """Generic JSONL, single- or multi-turn (schema at the top of this module); templates are not applied.

    A line that is not a valid example is an error, or with a `problems` list, appended to it and skipped.
    """
    path = require_path(spec, "path", "JSONL file with one example object per line")
    base = Path(spec.images).expanduser() if spec.images else path.parent
    out: list[Example] = []
    for line_no, where, record in jsonl_records(path):
        if spec.max_examples and len(out) >= spec.max_examples:
            break
        with record_problems(problems):
            out.extend(_jsonl_examples(record_object(record, where), where, base, spec.label, line_no))
    return out


# formats with modules of their own register themselves on import
from mmgpt.data import hf, llava  # noqa: E402, F401
