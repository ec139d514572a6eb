"""Synthetic VQA sets that one small image cannot answer: several images per question, and large scenes.

* **multi-image shapes**: 2-3 easy-VQA-style images (one shape each) per question, and questions about the
  set ("are the two shapes the same color?", "which image shows a circle, the first or the second?",
  "how many of the images show a triangle?") that no single image answers.
* **high-res shapes**: large scenes (448 px by default) with a small shape in each of several cells of a
  3x3 grid, and questions about one shape by position ("what color is the shape in the top right corner?")
  that a single view downscaled to an encoder's 64 px cannot resolve (a shape is then ~3 px wide). Training
  asks four questions of each scene (6,000 scenes for the default 24,000 questions), a held-out scene one.

Both are generated, seeded and cached like mmgpt.data.shapes: the same parameters give byte-identical files.
Layout under ``root/{name}-v{version}-s{seed}-{size}px-{train}-{val}-{test}/``: ``{split}.jsonl`` (mmgpt's
JSONL schema: ``images`` or ``image`` paths relative to the file, ``prompt`` = the question, ``answer``,
``meta`` with the question type and what each image shows), ``images/{split}/`` (multi-image: the pool,
``{image:06d}.png``; high-res: ``{example:06d}-0.png``), ``meta.json``.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from mmgpt.data.shapes import COLORS, LOCATIONS, NUMBERS, SPLITS, build_cached, check_params, render_scene

# bump whenever scenes, drawing or questions change: it is part of the cache key
VERSIONS = {"shapes-multi": 2, "shapes-highres": 2}
EASY_SHAPES = ("circle", "rectangle", "triangle")  # easy-VQA's three shapes
COMBOS = tuple((shape, color) for shape in EASY_SHAPES for color in sorted(COLORS))
MAX_POOL = 8000  # a split's one-shape images; its questions combine them (many questions per image)
# high-res: training asks about several shapes of each scene (as easy-VQA asks several questions of an image);
# a held-out scene gets one, so the test set spans as many scenes as it has questions
QUESTIONS_PER_SCENE = {"train": 4, "val": 1, "test": 1}
ORDINALS = ("first", "second", "third")
COUNT_WORDS = {0: "zero", **NUMBERS}
HIGHRES_SHAPES = ("circle", "square", "triangle", "star")  # at ~3 px all look alike; at ~10 px each differs


def _single_shape(rng: random.Random, size: int) -> dict[str, Any]:
    """One easy-VQA-style image: a single shape of random colour, size and place on white."""
    radius = rng.uniform(0.18, 0.3) * size
    slack = size / 2 - radius * 1.05
    center = [round(size / 2 + rng.uniform(-slack, slack), 2), round(size / 2 + rng.uniform(-slack, slack), 2)]
    return {"shape": rng.choice(EASY_SHAPES), "color": rng.choice(sorted(COLORS)), "center": center,
            "radius": round(radius, 2)}


def _which(n: int) -> str:
    return ", ".join(f"the {o}" for o in ORDINALS[: n - 1]) + f" or the {ORDINALS[n - 1]}"


def _multi_question(rng: random.Random, size: int) -> tuple[list[dict], str, str, str]:
    """(shapes, question, answer, question type); answers are balanced within each question type."""
    kind = rng.choice(("same_color", "same_shape", "which_shape", "which_color", "count_shape", "count_color"))
    n = 2 if kind.startswith("same") else rng.choice((2, 3))
    shapes = [_single_shape(rng, size) for _ in range(n)]
    if kind.startswith("same"):
        attr = kind[len("same_"):]
        if rng.random() < 0.5:  # half the pairs agree
            shapes[1][attr] = shapes[0][attr]
        answer = "yes" if shapes[0][attr] == shapes[1][attr] else "no"
        noun = "shapes the same color" if attr == "color" else "shapes the same shape"
        return shapes, f"are the two {noun}?", answer, kind
    attr = kind.split("_")[1]
    values = EASY_SHAPES if attr == "shape" else sorted(COLORS)
    target = rng.choice(values)
    what = f"a {target}" if attr == "shape" else f"a {target} shape"
    if kind.startswith("which"):
        index = rng.randrange(n)  # exactly one image shows the target
        for i, shape in enumerate(shapes):
            if i == index:
                shape[attr] = target
            elif shape[attr] == target:
                shape[attr] = rng.choice([v for v in values if v != target])
        return shapes, f"which image shows {what}, {_which(n)}?", ORDINALS[index], kind
    count = rng.randint(0, n)
    for i, shape in enumerate(rng.sample(shapes, n)):
        if i < count:
            shape[attr] = target
        elif shape[attr] == target:
            shape[attr] = rng.choice([v for v in values if v != target])
    return shapes, f"how many of the images show {what}?", COUNT_WORDS[count], kind


def _highres_scene(rng: random.Random, size: int) -> list[dict[str, Any]]:
    """A large scene with a small shape in 5-9 cells of a 3x3 grid."""
    cells = rng.sample(sorted(LOCATIONS), rng.randint(5, 9))
    cell, radius = size / 3, 0.025 * size
    slack = (cell / 2 - radius * 1.2) * 0.8
    return [{"shape": rng.choice(HIGHRES_SHAPES), "color": rng.choice(sorted(COLORS)), "row": row, "col": col,
             "center": [round((col + 0.5) * cell + rng.uniform(-slack, slack), 2),
                        round((row + 0.5) * cell + rng.uniform(-slack, slack), 2)], "radius": round(radius, 2)}
            for row, col in cells]


def _highres_questions(rng: random.Random, shapes: list[dict], count: int) -> list[tuple[str, str, str]]:
    """Up to `count` distinct (question, answer, type) about single shapes of a scene, each by its position."""
    asked = rng.sample([(o, kind) for o in shapes for kind in ("color_at", "shape_at")], min(count, 2 * len(shapes)))
    out = []
    for target, kind in asked:
        where = LOCATIONS[(target["row"], target["col"])]
        if kind == "color_at":
            out.append((f"what color is the shape {where}?", target["color"], kind))
        else:
            out.append((f"what shape is {where}?", target["shape"], kind))
    return out


def _pool(rng: random.Random, size: int, count: int) -> list[dict[str, Any]]:
    """`count` one-shape images for a split, every (shape, colour) of COMBOS drawn equally often."""
    out = []
    for i in range(count):
        shape = _single_shape(rng, size)
        shape["shape"], shape["color"] = COMBOS[i % len(COMBOS)]
        out.append(shape)
    return out


def _pick(rng: random.Random, by_combo: dict[tuple, list[int]], wanted: list[dict]) -> list[int]:
    """A pool image for each wanted (shape, colour), distinct within the question where the pool allows."""
    picked: list[int] = []
    for o in wanted:
        choices = by_combo[(o["shape"], o["color"])]
        free = [i for i in choices if i not in picked]
        picked.append(rng.choice(free or choices))
    return picked


def _generate_multi(folder: Path, params: dict[str, Any]) -> None:
    """Each split: a pool of one-shape images, then questions about 2-3 of them (held-out splits first)."""
    size, name = params["image_size"], "shapes-multi"
    lines: dict[str, list[str]] = {}
    for split in ("test", "val", "train"):  # held-out splits first, so changing num_train leaves them alone
        rng = random.Random(f"mmgpt-{name}-v{VERSIONS[name]}-{params['seed']}-{split}")
        count = params[f"num_{split}"]
        pool = _pool(rng, size, max(len(COMBOS), min(count, MAX_POOL)) if count else 0)
        by_combo: dict[tuple, list[int]] = {}
        for i, o in enumerate(pool):
            by_combo.setdefault((o["shape"], o["color"]), []).append(i)
        scenes = [{"background": "white", "striped": False, "shapes": [o]} for o in pool]
        (folder / "images" / split).mkdir(parents=True)
        for i, scene in enumerate(scenes):
            render_scene(scene, size, supersample=4).save(folder / "images" / split / f"{i:06d}.png", format="PNG",
                                                          compress_level=6)
        lines[split] = []
        for i in range(count):
            wanted, question, answer, kind = _multi_question(rng, size)
            shown = _pick(rng, by_combo, wanted)
            record = {"id": f"{split}-{i}", "images": [f"images/{split}/{k:06d}.png" for k in shown],
                      "prompt": question, "answer": answer, "task": "vqa",
                      "meta": {"question": question, "question_type": kind,
                               "answer_type": "yes/no" if answer in ("yes", "no") else "other",
                               "scenes": [scenes[k] for k in shown]}}
            lines[split].append(json.dumps(record, separators=(",", ":")))
    for split in SPLITS:
        (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines[split]), encoding="utf-8")
    _write_meta(folder, name, params)


def _write_meta(folder: Path, name: str, params: dict[str, Any]) -> None:
    """meta.json, written last: it marks the set complete."""
    meta = {"generator": f"mmgpt.data.shapes_vqa.{name}", "version": VERSIONS[name], "params": params,
            "images": {split: len(os.listdir(folder / "images" / split)) for split in SPLITS},
            "pillow": Image.__version__}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _key(shapes: list[dict]) -> tuple:
    """What a scene shows: splits never share one."""
    return tuple((o["shape"], o["color"], *o["center"], o["radius"]) for o in shapes)


def _generate_highres(folder: Path, params: dict[str, Any]) -> None:
    """Each split: large scenes, QUESTIONS_PER_SCENE questions about each, no scene shared between splits (held-out
    splits first)."""
    size, taken, name = params["image_size"], set(), "shapes-highres"
    scenes: dict[str, list[tuple[list[dict], list[tuple[str, str, str]]]]] = {}
    for split in ("test", "val", "train"):  # held-out splits first, so changing num_train leaves them alone
        rng, out, count = random.Random(f"mmgpt-{name}-v{VERSIONS[name]}-{params['seed']}-{split}"), [], 0
        while count < params[f"num_{split}"]:
            shapes = _highres_scene(rng, size)
            key = _key(shapes)
            if key in taken:  # a scene seen in another split would leak into evaluation
                continue
            taken.add(key)
            questions = _highres_questions(rng, shapes, min(QUESTIONS_PER_SCENE[split], params[f"num_{split}"] - count))
            out.append((shapes, questions))
            count += len(questions)
        scenes[split] = out
    for split in SPLITS:
        (folder / "images" / split).mkdir(parents=True)
        lines = []
        for i, (shapes, questions) in enumerate(scenes[split]):
            scene = [{"background": "white", "striped": False, "shapes": shapes}]
            path = f"images/{split}/{i:06d}-0.png"  # named per split: a split's files do not depend on another's size
            # large scenes are drawn at 2x: their shapes are 10+ px wide, and 4x would take 4 times as long
            render_scene(scene[0], size, supersample=2 if size > 128 else 4).save(
                folder / path, format="PNG", compress_level=6)
            for question, answer, kind in questions:
                record = {"id": f"{split}-{len(lines)}", "image": path, "prompt": question, "answer": answer,
                          "task": "vqa", "meta": {"question": question, "question_type": kind,
                                                  "answer_type": "other", "scenes": scene}}
                lines.append(json.dumps(record, separators=(",", ":")))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_meta(folder, name, params)


def _build(name: str, caller: str, root: str | Path, params: dict[str, Any],
           generate: Callable[[Path, dict[str, Any]], None]) -> dict[str, Path]:
    check_params(caller, params, {"image_size": 16})
    folder = Path(root).expanduser() / (f"{name}-v{VERSIONS[name]}-s{params['seed']}-{params['image_size']}px-"
                                        f"{params['num_train']}-{params['num_val']}-{params['num_test']}")

    def files_ok(path: Path) -> bool:
        counts = json.loads((path / "meta.json").read_text(encoding="utf-8")).get("images", {})
        return all((path / f"{s}.jsonl").is_file() and len(os.listdir(path / "images" / s)) == counts.get(s)
                   for s in SPLITS)

    build_cached(folder, f"mmgpt.data.shapes_vqa.{name}", VERSIONS[name], params,
                 lambda tmp: generate(tmp, params), files_ok)
    return {split: folder / f"{split}.jsonl" for split in SPLITS}


def build_multi_image_shapes(root: str | Path, seed: int = 0, num_train: int = 60000, num_val: int = 500,
                             num_test: int = 500, image_size: int = 64) -> dict[str, Path]:
    """Generate (once; cached under root) the multi-image shapes set; returns {split: {split}.jsonl path}."""
    params = {"seed": seed, "num_train": num_train, "num_val": num_val, "num_test": num_test,
              "image_size": image_size}
    return _build("shapes-multi", "build_multi_image_shapes", root, params, _generate_multi)


def build_highres_shapes(root: str | Path, seed: int = 0, num_train: int = 24000, num_val: int = 500,
                         num_test: int = 500, image_size: int = 448) -> dict[str, Path]:
    """Generate (once; cached under root) the high-res shapes set; returns {split: {split}.jsonl path}."""
    params = {"seed": seed, "num_train": num_train, "num_val": num_val, "num_test": num_test,
              "image_size": image_size}
    return _build("shapes-highres", "build_highres_shapes", root, params, _generate_highres)
