"""Synthetic shapes captions: deterministic, cached, atomic, COCO layout, captions true of the pixels."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmgpt.data.shapes as shapes
from mmgpt.config import PromptTemplates
from mmgpt.data.formats import read_coco_captions
from mmgpt.data.shapes import COLORS, LOCATIONS, SHAPES, SPLITS, build_shapes_captions, scene_key
from mmgpt.data.spec import DatasetSpec
from tests.built_data import fingerprint

SMALL = dict(num_train=24, num_val=8, num_test=8, image_size=64)
META = ("meta.json",)
COLOR_RE = re.compile(r"\b(" + "|".join(COLORS) + r")\b")
SHAPE_RE = re.compile(r"\b(" + "|".join(SHAPES) + r")s?\b")


def load(files: dict[str, Path], split: str) -> dict:
    return json.loads(files[split].read_text())


def by_image(data: dict) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        out[ann["image_id"]].append(ann["caption"])
    return out


def pixels(files: dict[str, Path], split: str, img: dict) -> np.ndarray:
    with Image.open(files[split].parent / "images" / split / img["file_name"]) as im:
        return np.asarray(im.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return build_shapes_captions(tmp_path_factory.mktemp("shapes"), seed=0, **SMALL)


def test_same_seed_identical_other_seed_differs(built, tmp_path):
    again = build_shapes_captions(tmp_path / "a", seed=0, **SMALL)
    assert again["train"] != built["train"]  # really generated twice
    assert fingerprint(again, META) == fingerprint(built, META)
    assert all(again[s].read_bytes() == built[s].read_bytes() for s in SPLITS)
    assert fingerprint(build_shapes_captions(tmp_path / "b", seed=1, **SMALL), META) != fingerprint(built, META)


def test_identical_under_another_hash_seed(built, tmp_path):
    code = ("import sys, json; from mmgpt.data.shapes import build_shapes_captions; "
            f"f = build_shapes_captions(sys.argv[1], seed=0, **{SMALL!r}); "
            "print(json.dumps({k: str(v) for k, v in f.items()}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True,
                         capture_output=True, text=True).stdout
    files = {k: Path(v) for k, v in json.loads(out).items()}
    assert fingerprint(files, META) == fingerprint(built, META)


def test_cache_reused_without_rewrite(built):
    folder = built["train"].parent
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert build_shapes_captions(folder.parent, seed=0, **SMALL) == built
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_different_params_get_their_own_folder(built):
    root = built["train"].parent.parent
    other = build_shapes_captions(root, seed=0, **{**SMALL, "num_train": 10})
    assert other["train"].parent != built["train"].parent
    assert other["train"].parent.name == "shapes-v1-s0-64px-10-8-8"
    assert len(load(other, "train")["images"]) == 10
    # Held-out splits are sampled first, so they do not depend on num_train.
    assert [i["scene"] for i in load(other, "test")["images"]] == [i["scene"] for i in load(built, "test")["images"]]
    meta = json.loads((built["train"].parent / "meta.json").read_text())
    assert meta["version"] == shapes.VERSION and meta["params"] == {"seed": 0, **SMALL}


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real, calls = shapes.render_scene, []

    def flaky(scene, size):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return real(scene, size)

    monkeypatch.setattr(shapes, "render_scene", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_shapes_captions(tmp_path, seed=3, **SMALL)
    assert list(tmp_path.iterdir()) == []  # no final folder, temp folder cleaned up
    monkeypatch.setattr(shapes, "render_scene", real)
    files = build_shapes_captions(tmp_path, seed=3, **SMALL)
    assert all(f.is_file() for f in files.values())


def test_damaged_cache_is_regenerated(tmp_path):
    files = build_shapes_captions(tmp_path, seed=0, **SMALL)
    victim = next((files["val"].parent / "images" / "val").iterdir())
    victim.unlink()
    files = build_shapes_captions(tmp_path, seed=0, **SMALL)
    assert victim.is_file()
    (files["train"].parent / "meta.json").unlink()
    files = build_shapes_captions(tmp_path, seed=0, **SMALL)
    assert (files["train"].parent / "meta.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [files["train"].parent.name]


@pytest.mark.parametrize("bad", [{"num_train": -1}, {"image_size": 8}, {"seed": 1.5}, {"num_val": True}])
def test_bad_parameters(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_shapes_captions(tmp_path, **{**SMALL, **bad})


def test_coco_layout_and_reader(built):
    ids: list[int] = []
    for split in SPLITS:
        data = load(built, split)
        assert set(data) >= {"info", "images", "annotations"}
        assert len(data["images"]) == SMALL[f"num_{split}"]
        for img in data["images"]:
            assert {"id", "file_name", "width", "height"} <= set(img)
            assert (img["width"], img["height"]) == (64, 64)
            with Image.open(built[split].parent / "images" / split / img["file_name"]) as im:
                assert (im.size, im.mode) == ((64, 64), "RGB")
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"]) == 5 * len(data["images"])
        ids += [img["id"] for img in data["images"]]
        examples = read_coco_captions(
            DatasetSpec(format="coco_captions", path=str(built[split]),
                        images=str(built[split].parent / "images" / split), split=split), PromptTemplates())
        assert len(examples) == 5 * len(data["images"]) and Path(examples[0].image).is_file()
        assert len(examples[0].meta["references"]) == 5
    assert len(ids) == len(set(ids))


def test_five_distinct_captions_per_image(built):
    for split in SPLITS:
        for captions in by_image(load(built, split)).values():
            assert len(captions) == 5
            assert len({c.lower().rstrip(".") for c in captions}) == 5
            assert all(c and c == c.strip() for c in captions)


def test_splits_disjoint(built):
    scenes = {s: [img["scene"] for img in load(built, s)["images"]] for s in SPLITS}
    keys = {s: {scene_key(sc) for sc in scenes[s]} for s in SPLITS}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    files = {s: {img["file_name"] for img in load(built, s)["images"]} for s in SPLITS}
    assert not files["train"] & files["val"] and not files["val"] & files["test"]


def test_captions_true_of_the_pixels(built):
    checked_relations = 0
    for split in SPLITS:
        data = load(built, split)
        captions = by_image(data)
        for img in data["images"]:
            a = pixels(built, split, img)
            drawn = {o["color"]: o for o in img["scene"]["shapes"]}
            # The colour at each shape centre is exactly its palette colour...
            for o in drawn.values():
                x, y = (int(v) for v in o["center"])
                assert tuple(a[y, x]) == COLORS[o["color"]], (img["file_name"], o)
            # ...and the palette colours present in the image are exactly the drawn ones.
            masks = {name: np.all(a == rgb, axis=-1) for name, rgb in COLORS.items()}
            assert {name for name, m in masks.items() if m.sum() >= 4} == set(drawn), img["file_name"]
            centroid = {name: (m.nonzero()[1].mean(), m.nonzero()[0].mean()) for name, m in masks.items() if m.any()}
            words = [COLOR_RE.findall(c.lower()) for c in captions[img["id"]]]
            assert set().union(*words) == set(drawn)  # no wrong colour, and every drawn colour named somewhere
            shape_words = set().union(*(SHAPE_RE.findall(c.lower()) for c in captions[img["id"]]))
            assert shape_words == {o["shape"] for o in drawn.values()}
            for caption in captions[img["id"]]:
                checked_relations += check_relations(caption.lower(), centroid)
                check_location(caption.lower(), drawn, centroid)
    assert checked_relations > 3


def check_relations(caption: str, centroid: dict) -> int:
    """'a red circle to the left of a blue star': compare the two colours' pixel centroids."""
    n = 0
    for c1, rel, c2 in re.findall(r"(\w+) \w+ (to the left of|to the right of|above|below) an? (?:\w+ )?(\w+) \w+",
                                  caption):
        (x1, y1), (x2, y2) = centroid[c1], centroid[c2]
        assert {"to the left of": x1 < x2, "to the right of": x1 > x2, "above": y1 < y2, "below": y1 > y2}[rel], caption
        n += 1
    return n


def check_location(caption: str, drawn: dict, centroid: dict) -> None:
    """'a red circle in the top left corner': the colour's centroid lies in that cell of a 3x3 grid."""
    cells = {phrase: cell for cell, phrase in LOCATIONS.items()}
    for color, phrase in re.findall(r"(\w+) \w+ (" + "|".join(LOCATIONS.values()) + ")", caption):
        if color in drawn:
            x, y = centroid[color]
            assert (int(y // (64 / 3)), int(x // (64 / 3))) == cells[phrase], caption


def test_what_a_killed_generation_left_is_removed_by_the_next(tmp_path):
    files = build_shapes_captions(tmp_path, seed=0, **SMALL)
    name = files["train"].parent.name
    leftovers = [f".{name}.tmp-abcd_123", f".{name}.old", f".{name}.trash-0123abcd", f".{name}.old.trash-89abcdef"]
    others = [f".{name}.tmp-short", "unrelated", ".other.tmp-abcd_123"]
    for folder in leftovers + others:
        (tmp_path / folder).mkdir()
    (files["train"].parent / "meta.json").unlink()  # damaged: the next call generates again
    files = build_shapes_captions(tmp_path, seed=0, **SMALL)
    assert all(f.is_file() for f in files.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, *others])


def test_shapes_questions_ask_each_shape_its_shape_colour_and_place(built, monkeypatch):
    from mmgpt.data.formats import read_dataset

    monkeypatch.setattr(shapes, "build_shapes_captions", lambda root: built)
    examples = read_dataset(DatasetSpec(format="shapes_questions", split="val"),
                            PromptTemplates(vqa="Q: {question}"))
    scenes = {img["file_name"]: img["scene"] for img in load(built, "val")["images"]}
    assert len(examples) == 3 * sum(len(scene["shapes"]) for scene in scenes.values())
    for example in examples:
        assert Path(example.image).is_file() and example.prompt == "Q: " + example.meta["question"]
        # worded apart from easy-VQA's questions, whose "rectangle" also names squares
        assert not example.meta["question"].startswith(("what", "is there", "does", "how"))
        scene = scenes[Path(example.image).name]
        kind, question, answer = example.meta["question_type"], example.meta["question"], example.answer
        if kind == "where":
            # the shape of the colour the question names is where the answer says
            target = next(o for o in scene["shapes"] if f" {o['color']} " in question)
            assert answer == LOCATIONS[(target["row"], target["col"])]
        else:
            target = next(o for o in scene["shapes"] if LOCATIONS[(o["row"], o["col"])] in question)
            assert answer == target["shape" if kind == "shape_at" else "color"]
    assert {e.meta["question_type"] for e in examples} == {"shape_at", "colour_at", "where"}
    with pytest.raises(ValueError, match="field 'split' must be one of"):
        read_dataset(DatasetSpec(format="shapes_questions", split="dev"))


def test_held_out_scenes_are_new_sized_per_count_and_read_as_a_split(tmp_path, monkeypatch):
    from mmgpt.data.formats import read_dataset
    from mmgpt.data.shapes import BUILT_IN_COUNTS, _sample_splits, build_held_out_scenes

    path = build_held_out_scenes(tmp_path, seed=3, per_count=4)
    data = json.loads(path.read_text())
    scenes = [img["scene"] for img in data["images"]]
    assert [len(scene["shapes"]) for scene in scenes] == [1] * 4 + [2] * 4 + [3] * 4
    built_in = {scene_key(s) for split in _sample_splits(0, BUILT_IN_COUNTS, 64).values() for s in split}
    keys = {scene_key(scene) for scene in scenes}
    assert len(keys) == 12 and not keys & built_in  # none shows what a built-in scene shows
    assert len(os.listdir(path.parent / "images" / "held_out")) == 12
    written = path.stat().st_mtime_ns
    assert build_held_out_scenes(tmp_path, seed=3, per_count=4) == path and path.stat().st_mtime_ns == written
    assert build_held_out_scenes(tmp_path, seed=4, per_count=4) != path
    # the shapes_captions format reads it as split held_out, references and scene records included
    monkeypatch.setenv("MMGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shapes, "build_held_out_scenes", lambda root: path)
    examples = read_dataset(DatasetSpec(format="shapes_captions", split="held_out"), PromptTemplates())
    assert len({e.meta["image_id"] for e in examples}) == 12 and all("scene" in e.meta for e in examples)
    with pytest.raises(ValueError, match=r"'held_out', 'test', 'train', 'val'\], got 'dev'"):
        read_dataset(DatasetSpec(format="shapes_captions", split="dev",
                                 path=str(tmp_path / "small")), PromptTemplates())
    with pytest.raises(ValueError, match="per_count must be <= 3000"):
        build_held_out_scenes(tmp_path, per_count=3001)
