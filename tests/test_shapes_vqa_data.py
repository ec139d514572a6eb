"""Built-in multi-image and high-res shapes VQA: deterministic, cached, answers true of the pixels."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmgpt.data.shapes_vqa as shapes_vqa
from mmgpt.config import PromptTemplates
from mmgpt.data.formats import read_dataset
from mmgpt.data.shapes import COLORS, LOCATIONS, SPLITS
from mmgpt.data.shapes_vqa import build_highres_shapes, build_multi_image_shapes
from mmgpt.data.spec import DatasetSpec
from tests.built_data import fingerprint

SMALL = dict(num_train=60, num_val=10, num_test=30)
ORDINALS = ("first", "second", "third")


def records(files: dict[str, Path], split: str) -> list[dict]:
    return [json.loads(line) for line in files[split].read_text().splitlines()]


def pixels(files: dict[str, Path], path: str) -> np.ndarray:
    with Image.open(files["train"].parent / path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def palette_colors(a: np.ndarray) -> set[str]:
    """The palette colours drawn in `a` (more than a few exact pixels of it)."""
    return {name for name, rgb in COLORS.items() if np.all(a == rgb, axis=-1).sum() >= 4}


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> dict[str, Path]:
    return build_multi_image_shapes(tmp_path_factory.mktemp("multi"), seed=0, **SMALL)


@pytest.fixture(scope="module")
def highres(tmp_path_factory) -> dict[str, Path]:
    return build_highres_shapes(tmp_path_factory.mktemp("highres"), seed=0, num_train=12, num_val=4, num_test=8)


def test_seeded_and_cached(multi, tmp_path):
    again = build_multi_image_shapes(tmp_path / "a", seed=0, **SMALL)
    assert again["train"] != multi["train"] and fingerprint(again) == fingerprint(multi)
    assert fingerprint(build_multi_image_shapes(tmp_path / "b", seed=1, **SMALL)) != fingerprint(multi)
    before = {p: p.stat().st_mtime_ns for p in again["train"].parent.rglob("*")}
    assert build_multi_image_shapes(tmp_path / "a", seed=0, **SMALL) == again
    assert {p: p.stat().st_mtime_ns for p in again["train"].parent.rglob("*")} == before
    # held-out splits are sampled first: they do not depend on num_train
    other = build_multi_image_shapes(tmp_path / "a", seed=0, **{**SMALL, "num_train": 5})
    assert records(other, "test") == records(again, "test") and len(records(other, "train")) == 5


def test_damaged_cache_is_regenerated(tmp_path):
    files = build_highres_shapes(tmp_path, seed=0, num_train=3, num_val=1, num_test=1)
    victim = next((files["val"].parent / "images" / "train").iterdir())
    victim.unlink()
    assert build_highres_shapes(tmp_path, seed=0, num_train=3, num_val=1, num_test=1) == files
    assert victim.is_file()


@pytest.mark.parametrize("bad", [{"num_train": -1}, {"image_size": 8}, {"seed": 1.5}])
def test_bad_parameters(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_multi_image_shapes(tmp_path, **{**SMALL, **bad})


def test_multi_image_answers_true_of_the_pixels(multi):
    kinds: dict[str, Counter] = {}
    for split in SPLITS:
        for rec in records(multi, split):
            assert 2 <= len(rec["images"]) <= 3 and "image" not in rec
            # what each image shows, read from its pixels (colour) and the record's drawing (shape)
            shown = []
            for path, scene in zip(rec["images"], rec["meta"]["scenes"]):
                a = pixels(multi, path)
                assert a.shape == (64, 64, 3)
                (o,) = scene["shapes"]
                assert palette_colors(a) == {o["color"]}
                shown.append((o["shape"], o["color"]))
            question, answer = rec["prompt"], rec["answer"]
            kinds.setdefault(rec["meta"]["question_type"], Counter())[answer] += 1
            if question.startswith("are the two shapes the same"):
                i = 1 if question.endswith("color?") else 0
                assert answer == ("yes" if shown[0][i] == shown[1][i] else "no")
            elif question.startswith("which image shows"):
                target = question.split(" shows a ")[1].split(",")[0].removesuffix(" shape")
                matches = [k for k, s in enumerate(shown) if target in s]
                assert len(matches) == 1 and answer == ORDINALS[matches[0]], rec
                assert question.endswith(f"or the {ORDINALS[len(shown) - 1]}?")
            else:
                target = question.split(" show a ")[1].removesuffix("?").removesuffix(" shape")
                count = sum(target in s for s in shown)
                assert answer == ("zero", "one", "two", "three")[count], rec
    # every kind of question occurs, none always has the same answer (no answer is guessable from the text)
    assert len(kinds) == 6 and all(len(answers) >= 2 for answers in kinds.values()), kinds


def test_highres_answers_true_of_the_pixels(highres):
    cells = {phrase: cell for cell, phrase in LOCATIONS.items()}
    for split in SPLITS:
        for rec in records(highres, split):
            a = pixels(highres, rec["image"])
            assert a.shape == (448, 448, 3)
            phrase = next(p for p in cells if rec["prompt"].endswith(p + "?"))
            row, col = cells[phrase]
            cell = a[row * 448 // 3:(row + 1) * 448 // 3, col * 448 // 3:(col + 1) * 448 // 3]
            (drawn,) = [o for o in rec["meta"]["scenes"][0]["shapes"] if (o["row"], o["col"]) == (row, col)]
            assert palette_colors(cell) == {drawn["color"]}, rec  # one shape in the asked cell
            assert rec["answer"] == (drawn["color"] if rec["prompt"].startswith("what color") else drawn["shape"])
            # ...and it is small: about 3 px wide once the scene is downscaled to a 64 px encoder input
            mask = np.all(a == COLORS[drawn["color"]], axis=-1)
            ys, xs = mask[row * 448 // 3:(row + 1) * 448 // 3, col * 448 // 3:(col + 1) * 448 // 3].nonzero()
            assert max(xs.max() - xs.min(), ys.max() - ys.min()) * 64 / 448 < 4
            assert len(rec["meta"]["scenes"][0]["shapes"]) >= 5


def test_splits_disjoint(multi):
    seen = [{(r["prompt"], json.dumps(r["meta"]["scenes"])) for r in records(multi, s)} for s in SPLITS]
    assert not seen[0] & seen[1] and not seen[0] & seen[2] and not seen[1] & seen[2]


def test_read_as_dataset(highres, monkeypatch):
    # the reader builds the default-size set: here, the fixture's small one
    monkeypatch.setattr(shapes_vqa, "build_highres_shapes",
                        lambda root: build_highres_shapes(root, seed=0, num_train=12, num_val=4, num_test=8))
    spec = DatasetSpec(format="highres_shapes", path=str(highres["train"].parent.parent), split="test")
    with pytest.raises(ValueError, match="split"):
        read_dataset(DatasetSpec(format="highres_shapes", path=spec.path, split="dev"))
    examples = read_dataset(DatasetSpec(format="highres_shapes", path=spec.path, split="test", max_examples=3),
                            PromptTemplates(vqa="Q: {question}"))
    assert len(examples) == 3 and all(Path(e.image).is_file() for e in examples)
    assert examples[0].prompt == "Q: " + examples[0].meta["question"] and examples[0].answer


def test_multi_image_read_as_dataset(multi, monkeypatch):
    monkeypatch.setattr(shapes_vqa, "build_multi_image_shapes",
                        lambda root: build_multi_image_shapes(root, seed=0, **SMALL))
    examples = read_dataset(DatasetSpec(format="multi_image_shapes", path=str(multi["train"].parent.parent),
                                        split="val"))
    assert len(examples) == SMALL["num_val"]
    assert all(isinstance(e.image, list) and 2 <= len(e.image) <= 3 and all(Path(p).is_file() for p in e.image)
               for e in examples)
    assert examples[0].prompt == examples[0].meta["question"]  # the default template, no placeholders


def test_multi_image_questions_combine_a_pool_of_images(multi):
    # one image set per question let a model learn the answers to its few thousand sets instead of reading shapes:
    # a split's questions draw from one pool, where every shape and colour is drawn equally often
    for split in SPLITS:
        recs = records(multi, split)
        pool = sorted((multi[split].parent / "images" / split).iterdir())
        assert len(pool) == max(len(shapes_vqa.COMBOS), len(recs))
        uses = Counter(path for rec in recs for path in rec["images"])
        assert sum(uses.values()) > len(pool) >= len(uses) and max(uses.values()) >= 2
        for rec in recs:
            for path, scene in zip(rec["images"], rec["meta"]["scenes"]):
                (o,) = scene["shapes"]
                assert Path(path).parent.name == split
                assert (o["shape"], o["color"]) == shapes_vqa.COMBOS[int(Path(path).stem) % len(shapes_vqa.COMBOS)]
        assert all(len(rec["images"]) == len(set(rec["images"])) for rec in recs if len(pool) >= 48)


def test_highres_training_asks_several_questions_of_each_scene(highres):
    # one question per scene left 6,000 questions to learn position words and small shapes from; a held-out scene
    # still gets one question, so the test set spans as many scenes as it has questions
    for split in SPLITS:
        by_image: dict[str, list[str]] = {}
        for rec in records(highres, split):
            by_image.setdefault(rec["image"], []).append(rec["prompt"])
        per_scene = shapes_vqa.QUESTIONS_PER_SCENE[split]
        assert all(len(set(asked)) == len(asked) <= per_scene for asked in by_image.values())
        assert max(len(asked) for asked in by_image.values()) == per_scene
