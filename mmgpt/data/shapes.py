"""Synthetic captioning data: scenes of one to three coloured shapes, five captions each, in COCO layout.

No real captioning set can be downloaded in every environment, so this one is generated, seeded and
cached: the same parameters always give byte-identical JSON and identical pixels.

Layout under ``root/shapes-v1-s{seed}-{size}px-{train}-{val}-{test}/``: ``captions_{split}.json``
(official COCO captions format; each image entry also carries its ``scene``, which COCO readers ignore),
``images/{split}/{id:06d}.png`` and ``meta.json``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mmgpt.saving import folder_lock, replacing_folder, write_json

logger = logging.getLogger(__name__)

VERSION = 1  # bump whenever scenes, drawing or captions change: it is part of the cache key
SPLITS = ("train", "val", "test")
BUILT_IN_COUNTS = {"train": 4000, "val": 500, "test": 500}  # scenes per split of the built-in set
COLORS = {"red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (235, 205, 20), "green": (30, 160, 50),
          "blue": (30, 70, 220), "purple": (130, 50, 180), "brown": (120, 70, 30), "black": (20, 20, 20)}
BACKGROUNDS = {"white": (250, 250, 250), "cream": (245, 238, 215), "light gray": (215, 215, 215)}
SHAPES = ("circle", "square", "rectangle", "triangle", "star")
SIZES = {"small": 0.07, "medium": 0.11, "large": 0.155}  # radius / image side; large still fits a 3x3 cell
LOCATIONS = {(0, 0): "in the top left corner", (0, 1): "at the top", (0, 2): "in the top right corner",
             (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
             (2, 0): "in the bottom left corner", (2, 1): "at the bottom", (2, 2): "in the bottom right corner"}
NUMBERS = {1: "one", 2: "two", 3: "three"}
MAX_HELD_OUT = 3000  # scenes of each number of shapes in build_held_out_scenes
_SUPERSAMPLE = 4  # draw larger and box-downsample: smooth edges, exact colours inside shapes


def sample_scene(rng: random.Random, image_size: int) -> dict[str, Any]:
    """A random scene: background and 1-3 shapes of distinct colours, each in its own cell of a 3x3 grid."""
    n = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
    cell = image_size / 3
    shapes = []
    for (row, col), color in zip(rng.sample(sorted(LOCATIONS), n), rng.sample(sorted(COLORS), n)):
        size = rng.choice(sorted(SIZES))
        radius = SIZES[size] * image_size
        slack = max(0.0, cell / 2 - radius * 1.1) * 0.8  # jitter that keeps the shape inside its cell
        center = [round((col + 0.5) * cell + rng.uniform(-slack, slack), 2),
                  round((row + 0.5) * cell + rng.uniform(-slack, slack), 2)]
        shapes.append({"shape": rng.choice(SHAPES), "color": color, "size": size, "row": row, "col": col,
                       "center": center, "radius": round(radius, 2)})
    return {"background": rng.choice(sorted(BACKGROUNDS)), "striped": rng.random() < 0.3, "shapes": shapes}


def scene_key(scene: dict[str, Any]) -> tuple:
    """What a scene shows, ignoring jitter: splits never share a key."""
    return (scene["background"], scene["striped"],
            frozenset((o["shape"], o["color"], o["size"], o["row"], o["col"]) for o in scene["shapes"]))


def render_scene(scene: dict[str, Any], image_size: int, supersample: int = _SUPERSAMPLE) -> Image.Image:
    """Draw a scene as an image_size x image_size RGB image, drawn `supersample` times larger and reduced."""
    s, n = supersample, image_size * supersample
    bg = BACKGROUNDS[scene["background"]]
    im = Image.new("RGB", (n, n), bg)
    draw = ImageDraw.Draw(im)
    if scene["striped"]:
        faint = tuple(c - 14 for c in bg)
        for x in range(-n, n, 8 * s):
            draw.line([(x, 0), (x + n, n)], fill=faint, width=2 * s)
    for o in scene["shapes"]:
        x, y, r, fill = o["center"][0] * s, o["center"][1] * s, o["radius"] * s, COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif o["shape"] in ("square", "rectangle"):
            w, h = (0.85 * r, 0.85 * r) if o["shape"] == "square" else (r, 0.55 * r)
            draw.rectangle([x - w, y - h, x + w, y + h], fill=fill)
        else:
            corners, inner = (3, 1.0) if o["shape"] == "triangle" else (10, 0.45)
            pts = [(x + r * (1 if i % 2 == 0 else inner) * math.cos(math.radians(-90 + 360 * i / corners)),
                    y + r * (1 if i % 2 == 0 else inner) * math.sin(math.radians(-90 + 360 * i / corners)))
                   for i in range(corners)]
            draw.polygon(pts, fill=fill)
    return im.reduce(s)


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _np(o: dict, sizes: str = "some") -> str:
    """Noun phrase; 'full' names every size, 'some' skips medium (as people do), 'none' names none."""
    size = {"full": o["size"].replace("medium", "medium-sized"), "some": o["size"].replace("medium", ""),
            "none": ""}[sizes]
    return _a(" ".join(w for w in (size, o["color"], o["shape"]) if w))


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _relation(a: dict, b: dict) -> str:
    if a["col"] != b["col"]:
        return "to the left of" if a["col"] < b["col"] else "to the right of"
    return "above" if a["row"] < b["row"] else "below"


def _shape_counts(objs: list[dict]) -> str:
    counts = Counter(o["shape"] for o in objs)  # keeps first-appearance order
    return _join([_a(k) if c == 1 else f"{NUMBERS[c]} {k}s" for k, c in counts.items()])


def describe_scene(scene: dict[str, Any], rng: random.Random, k: int = 5) -> list[str]:
    """k different captions, each true of the scene, in varied COCO-like phrasing and casing."""
    objs, bg = scene["shapes"], scene["background"]
    o, n = objs[0], len(objs)
    loc = lambda x: LOCATIONS[(x["row"], x["col"])]  # noqa: E731
    if n == 1:
        options = [f"{_np(o, 'full')} {loc(o)}", f"there is {_np(o, 'none')} on a {bg} background",
                   f"a single {o['color']} {o['shape']}", f"{_np(o)} {loc(o)} of the image",
                   f"an image with one {o['shape']}, which is {o['color']}",
                   f"a {bg} background with {_np(o)} {loc(o)}", f"{o['color']} {o['shape']}",
                   f"one {o['size']} {o['color']} shape: {_a(o['shape'])}"]
    else:
        a, b = rng.sample(objs, 2)
        pair = f"{_np(objs[0], 'none')} {_relation(objs[0], objs[1])} {_np(objs[1], 'none')}"
        options = [f"there is {_join([_np(x) for x in objs])}",
                   f"{NUMBERS[n]} shapes: {pair}" + (f", and {_np(objs[2], 'none')} {loc(objs[2])}" if n == 3 else ""),
                   _join([f"{_np(x)} {loc(x)}" for x in objs]),
                   f"{NUMBERS[n]} shapes on a {bg} background: {_shape_counts(objs)}",
                   f"{NUMBERS[n]} shapes, " + _join([f"one {x['color']}" for x in objs]),
                   _join([_np(x, 'none') for x in reversed(objs)]),
                   f"{_np(b)} {_relation(b, a)} {_np(a)}",
                   f"a picture of {NUMBERS[n]} shapes including {_np(o, 'full')}"]
    unique = list(dict.fromkeys(options))
    captions = []
    for text in rng.sample(unique, k):
        style = rng.random()
        if style < 0.8:  # mostly capitalised; sometimes no full stop, sometimes all lower case
            text = text[0].upper() + text[1:]
        captions.append(text if 0.65 <= style < 0.8 or style >= 0.92 else text + ".")
    return captions


def _sample_splits(seed: int, counts: dict[str, int], image_size: int) -> dict[str, list[dict]]:
    taken: set = set()
    scenes: dict[str, list[dict]] = {}
    for split in ("test", "val", "train"):  # held-out splits first, so changing num_train leaves them alone
        rng, own, out = random.Random(f"mmgpt-shapes-v{VERSION}-{seed}-{split}"), set(), []
        while len(out) < counts[split]:
            scene = sample_scene(rng, image_size)
            if scene_key(scene) not in taken:  # a scene seen in another split would leak into evaluation
                own.add(scene_key(scene))
                out.append(scene)
        taken |= own
        scenes[split] = out
    return scenes


def _write_split(folder: Path, split: str, scenes: list[dict], size: int, rng: random.Random, image_id: int,
                 params: dict[str, Any]) -> int:
    """Render `scenes` into images/{split}/ and write captions_{split}.json; returns the last image id used."""
    (folder / "images" / split).mkdir(parents=True)
    images, annotations = [], []
    for scene in scenes:
        image_id += 1
        name = f"{image_id:06d}.png"
        render_scene(scene, size).save(folder / "images" / split / name, format="PNG", compress_level=6)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size, "scene": scene})
        for caption in describe_scene(scene, rng):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
    info = {"description": f"mmgpt synthetic shapes captions, {split} split", "version": str(VERSION),
            "contributor": "mmgpt.data.shapes", **params}
    data = {"info": info, "licenses": [], "images": images, "annotations": annotations}
    write_json(folder / f"captions_{split}.json", data, indent=1, newline=True)
    return image_id


def _generate(folder: Path, params: dict[str, Any]) -> None:
    size = params["image_size"]
    counts = {split: params[f"num_{split}"] for split in SPLITS}
    scenes = _sample_splits(params["seed"], counts, size)
    image_id = 0
    for split in SPLITS:
        rng = random.Random(f"mmgpt-shapes-v{VERSION}-{params['seed']}-{split}-captions")
        image_id = _write_split(folder, split, scenes[split], size, rng, image_id, params)
    meta = {"generator": "mmgpt.data.shapes", "version": VERSION, "params": params, "counts": counts,
            "pillow": Image.__version__}
    write_json(folder / "meta.json", meta, indent=1, newline=True)  # last: marks complete


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check_params(caller: str, params: dict[str, Any], minimum: dict[str, int]) -> None:
    """Raise a ValueError naming the first of `params` that is not an int >= its minimum (default 0)."""
    for key, value in params.items():
        low = minimum.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{caller}: {key} must be an int >= {low}, got {value!r}")


def build_cached(folder: Path, generator: str, version: int, params: dict[str, Any],
                 generate: Callable[[Path], None], files_ok: Callable[[Path], bool]) -> None:
    """Run `generate(tmp)` once into `folder` unless a complete copy (its meta.json and `files_ok`) is there.

    `generate` writes meta.json last, with `generator`, `version` and `params`: that marks the copy complete.
    """
    def complete() -> bool:
        meta = _read_meta(folder)
        try:
            return (meta is not None and meta.get("generator") == generator and meta.get("version") == version
                    and meta.get("params") == params and files_ok(folder))
        except OSError:
            return False

    def generated_here(path: Path) -> bool:  # any version or parameters
        meta = _read_meta(path)
        return meta is not None and meta.get("generator") == generator

    if complete():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    # one generator per cache folder at a time: a second process waits, then finds the set complete
    with folder_lock(folder.parent):
        if complete():
            return
        logger.info("generating %s in %s", generator, folder)
        # built beside the target and swapped in by renames: an interrupted run leaves only a hidden temp folder
        with replacing_folder(folder, is_ours=generated_here) as tmp:  # replaces a stale or damaged copy
            generate(tmp)


def build_shapes_captions(root: str | Path, seed: int = 0, num_train: int = BUILT_IN_COUNTS["train"],
                          num_val: int = BUILT_IN_COUNTS["val"], num_test: int = BUILT_IN_COUNTS["test"],
                          image_size: int = 64) -> dict[str, Path]:
    """Generate (once; cached under root) the shapes captions set; returns {split: captions_{split}.json path}."""
    params = {"seed": seed, "num_train": num_train, "num_val": num_val, "num_test": num_test,
              "image_size": image_size}
    check_params("build_shapes_captions", params, {"image_size": 16})
    folder = Path(root).expanduser() / f"shapes-v{VERSION}-s{seed}-{image_size}px-{num_train}-{num_val}-{num_test}"

    def files_ok(path: Path) -> bool:
        return (all((path / f"captions_{s}.json").is_file() for s in SPLITS)
                and all(len(os.listdir(path / "images" / s)) == params[f"num_{s}"] for s in SPLITS))

    build_cached(folder, "mmgpt.data.shapes", VERSION, params, lambda tmp: _generate(tmp, params), files_ok)
    return {split: folder / f"captions_{split}.json" for split in SPLITS}


def _held_out_scenes(seed: int, per_count: int, image_size: int) -> list[dict]:
    """`per_count` scenes of one, two and three shapes (in that order), none with the key of a built-in scene."""
    builtin = _sample_splits(0, BUILT_IN_COUNTS, image_size)  # build_shapes_captions' defaults
    taken = {scene_key(scene) for split in builtin.values() for scene in split}
    rng = random.Random(f"mmgpt-shapes-v{VERSION}-held-out-{seed}")
    groups: dict[int, list[dict]] = {1: [], 2: [], 3: []}
    while any(len(group) < per_count for group in groups.values()):
        scene = sample_scene(rng, image_size)
        group = groups[len(scene["shapes"])]
        if len(group) < per_count and scene_key(scene) not in taken:
            taken.add(scene_key(scene))
            group.append(scene)
    return [scene for n in (1, 2, 3) for scene in groups[n]]


def build_held_out_scenes(root: str | Path, seed: int = 1, per_count: int = 300, image_size: int = 64) -> Path:
    """Generate (once; cached under root) new scenes for checking captions -> their COCO captions JSON.

    `per_count` scenes each of one, two and three shapes, with five reference captions each, none showing what
    a scene of the built-in shapes set (default parameters, every split) shows: unlike the test split (500 scenes,
    145 of one shape) it is sized for per-fact accuracy, and a model trained on the built-in set has never seen
    one. Images in ``images/held_out/`` beside the JSON.
    """
    params = {"seed": seed, "per_count": per_count, "image_size": image_size}
    check_params("build_held_out_scenes", params, {"image_size": 16, "per_count": 1})
    if per_count > MAX_HELD_OUT:  # one-shape scenes have 6,480 distinct keys; the built-in set takes ~1,500
        raise ValueError(f"build_held_out_scenes: per_count must be <= {MAX_HELD_OUT}, got {per_count}")
    folder = Path(root).expanduser() / f"shapes-held-out-v{VERSION}-s{seed}-{image_size}px-{per_count}"

    def generate(tmp: Path) -> None:
        scenes = _held_out_scenes(seed, per_count, image_size)
        rng = random.Random(f"mmgpt-shapes-v{VERSION}-held-out-{seed}-captions")
        _write_split(tmp, "held_out", scenes, image_size, rng, 0, params)
        meta = {"generator": "mmgpt.data.shapes.held_out", "version": VERSION, "params": params,
                "pillow": Image.__version__}
        write_json(tmp / "meta.json", meta, indent=1, newline=True)  # last: marks complete

    def files_ok(path: Path) -> bool:
        return ((path / "captions_held_out.json").is_file()
                and len(os.listdir(path / "images" / "held_out")) == 3 * per_count)

    build_cached(folder, "mmgpt.data.shapes.held_out", VERSION, params, generate, files_ok)
    return folder / "captions_held_out.json"
