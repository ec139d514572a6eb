"""Synthetic VQA sets that one small image cannot answer: several images per question, and large scenes.

* **multi-image shapes**: 2-3 easy-VQA-style images (one shape each) per question, and questions about the
  set ("are the two shapes the same color?", "which image shows a circle, the first or the second?",
  "how many of the images show a triangle?") that no single image answers.
* **high-res shapes**: large scenes (448 px by default) with a small shape in each of several cells of a
  3x3 grid, and questions about one shape by position ("what color is the shape in the top right corner?")
  that a single view downscaled to an encoder's 64 px cannot resolve (a shape is then ~3 px wide).

Both are generated, seeded and cached like mmgpt.data.shapes: the same parameters give byte-identical files.
Layout under ``root/{name}-v{version}-s{seed}-{size}px-{train}-{val}-{test}/``: ``{split}.jsonl`` (mmgpt's
JSONL schema: ``images`` or ``image`` paths relative to the file, ``prompt`` = the question, ``answer``,
``meta`` with the question type and what each image shows), ``images/{split}/{example:06d}-{image}.png``, ``meta.json``.
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

VERSION = 1  # bump whenever scenes, drawing or questions change: it is part of the cache key
EASY_SHAPES = ("circle", "rectangle", "triangle")  # easy-VQA's three shapes
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


def _highres_question(rng: random.Random, size: int) -> tuple[list[dict], str, str, str]:
    """A scene with a small shape in 5-9 cells of a 3x3 grid, and a question about one of them by position."""
    cells = rng.sample(sorted(LOCATIONS), rng.randint(5, 9))
    cell, radius = size / 3, 0.025 * size
    slack = (cell / 2 - radius * 1.2) * 0.8
    shapes = [{"shape": rng.choice(HIGHRES_SHAPES), "color": rng.choice(sorted(COLORS)), "row": row, "col": col,
               "center": [round((col + 0.5) * cell + rng.uniform(-slack, slack), 2),
                          round((row + 0.5) * cell + rng.uniform(-slack, slack), 2)], "radius": round(radius, 2)}
              for row, col in cells]
    target = rng.choice(shapes)
    where = LOCATIONS[(target["row"], target["col"])]
    if rng.random() < 0.5:
        return shapes, f"what color is the shape {where}?", target["color"], "color_at"
    return shapes, f"what shape is {where}?", target["shape"], "shape_at"


def _key(shapes: list[dict], question: str) -> tuple:
    """What an example shows and asks: splits never share one."""
    return question, tuple((o["shape"], o["color"], *o["center"], o["radius"]) for o in shapes)


def _generate(folder: Path, name: str, params: dict[str, Any],
              sample: Callable[[random.Random, int], tuple[list[dict], str, str, str]], several: bool) -> None:
    size, taken = params["image_size"], set()
    records: dict[str, list[dict]] = {}
    for split in ("test", "val", "train"):  # held-out splits first, so changing num_train leaves them alone
        rng, own, out = random.Random(f"mmgpt-{name}-v{VERSION}-{params['seed']}-{split}"), set(), []
        while len(out) < params[f"num_{split}"]:
            shapes, question, answer, kind = sample(rng, size)
            if _key(shapes, question) not in taken:  # an example seen in another split would leak into evaluation
                own.add(_key(shapes, question))
                out.append((shapes, question, answer, kind))
        taken |= own
        records[split] = out
    for split in SPLITS:
        (folder / "images" / split).mkdir(parents=True)
        lines = []
        for i, (shapes, question, answer, kind) in enumerate(records[split]):
            scenes = [{"background": "white", "striped": False, "shapes": [o]} for o in shapes] if several else \
                [{"background": "white", "striped": False, "shapes": shapes}]
            paths = []
            for k, scene in enumerate(scenes):  # named per split: a split's files do not depend on another's size
                paths.append(f"images/{split}/{i:06d}-{k}.png")
                # large scenes are drawn at 2x: their shapes are 10+ px wide, and 4x would take 4 times as long
                render_scene(scene, size, supersample=2 if size > 128 else 4).save(
                    folder / paths[-1], format="PNG", compress_level=6)
            record = {"id": f"{split}-{i}", **({"images": paths} if several else {"image": paths[0]}),
                      "prompt": question, "answer": answer, "task": "vqa",
                      "meta": {"question": question, "question_type": kind,
                               "answer_type": "yes/no" if answer in ("yes", "no") else "other", "scenes": scenes}}
            lines.append(json.dumps(record, separators=(",", ":")))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = {"generator": f"mmgpt.data.shapes_vqa.{name}", "version": VERSION, "params": params,
            "images": {split: len(os.listdir(folder / "images" / split)) for split in SPLITS},
            "pillow": Image.__version__}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")  # last: marks complete


def _build(name: str, root: str | Path, params: dict[str, Any], several: bool,
           sample: Callable[[random.Random, int], tuple[list[dict], str, str, str]]) -> dict[str, Path]:
    check_params(f"build_{name.replace('-', '_')}", params, {"image_size": 16})
    folder = Path(root).expanduser() / (f"{name}-v{VERSION}-s{params['seed']}-{params['image_size']}px-"
                                        f"{params['num_train']}-{params['num_val']}-{params['num_test']}")

    def files_ok(path: Path) -> bool:
        counts = json.loads((path / "meta.json").read_text(encoding="utf-8")).get("images", {})
        return all((path / f"{s}.jsonl").is_file() and len(os.listdir(path / "images" / s)) == counts.get(s)
                   for s in SPLITS)

    build_cached(folder, f"mmgpt.data.shapes_vqa.{name}", VERSION, params,
                 lambda tmp: _generate(tmp, name, params, sample, several), files_ok)
    return {split: folder / f"{split}.jsonl" for split in SPLITS}


def build_multi_image_shapes(root: str | Path, seed: int = 0, num_train: int = 6000, num_val: int = 500,
                             num_test: int = 500, image_size: int = 64) -> dict[str, Path]:
    """Generate (once; cached under root) the multi-image shapes set; returns {split: {split}.jsonl path}."""
    params = {"seed": seed, "num_train": num_train, "num_val": num_val, "num_test": num_test,
              "image_size": image_size}
    return _build("shapes-multi", root, params, True, _multi_question)


def build_highres_shapes(root: str | Path, seed: int = 0, num_train: int = 6000, num_val: int = 500,
                         num_test: int = 500, image_size: int = 448) -> dict[str, Path]:
    """Generate (once; cached under root) the high-res shapes set; returns {split: {split}.jsonl path}."""
    params = {"seed": seed, "num_train": num_train, "num_val": num_val, "num_test": num_test,
              "image_size": image_size}
    return _build("shapes-highres", root, params, False, _highres_question)
