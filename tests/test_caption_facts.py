"""Caption facts: parsing captions into facts and checking them against the shapes renderer's scene records."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from mmgpt.data.shapes import build_shapes_captions, describe_scene, sample_scene
from mmgpt.eval import caption as eval_caption
from mmgpt.eval.caption_facts import FACTS, check_caption, parse_caption, score_caption_facts


def obj(shape: str, color: str, row: int, col: int, size: str = "small") -> dict:
    """A scene object as the renderer records it (centre and radius do not matter to the facts)."""
    return {"shape": shape, "color": color, "size": size, "row": row, "col": col, "center": [0, 0], "radius": 5}


def scene(*objects: dict) -> dict:
    return {"background": "white", "striped": False, "shapes": list(objects)}


STAR_TOP_RIGHT = scene(obj("star", "blue", 0, 2, "large"))
TWO = scene(obj("circle", "red", 1, 0), obj("square", "blue", 1, 2, "medium"))


def facts(caption: str, record: dict) -> dict[str, list[bool]]:
    return {k: v for k, v in check_caption(caption, record).items() if v}


def test_one_shape_scene_right_and_wrong() -> None:
    assert facts("A large blue star in the top right corner.", STAR_TOP_RIGHT) == {
        "size": [True], "colour": [True], "shape": [True], "position": [True], "count": [True]}
    # the example: a star in the top right captioned "top left corner", with the wrong colour
    assert facts("a small purple star in the top left corner", STAR_TOP_RIGHT) == {
        "size": [False], "colour": [False], "shape": [True], "position": [False], "count": [True]}
    assert facts("at the top", STAR_TOP_RIGHT) == {"position": [False]}


def test_words_are_matched_whole() -> None:
    # "red" inside "covered", "reddish", "shredded"; "star" inside "started"; "left" inside "leftover"
    parsed = parse_caption("a covered, reddish and shredded thing started on the leftover")
    assert parsed.mentions == [] and parsed.count is None and parsed.relations == []


def test_background_colour_is_not_an_object_colour() -> None:
    assert facts("a blue star on a black background", STAR_TOP_RIGHT) == {
        "colour": [True], "shape": [True], "count": [True]}


def test_the_generators_synonyms() -> None:
    assert facts("one large blue shape: a star", STAR_TOP_RIGHT) == {
        "size": [True], "colour": [True], "shape": [True], "count": [True]}
    assert facts("an image with one star, which is red", STAR_TOP_RIGHT) == {
        "colour": [False], "shape": [True], "count": [True]}
    assert facts("a medium-sized blue square on the right", TWO)["size"] == [True]
    assert facts("a single blue star in the centre of the image", STAR_TOP_RIGHT) == {
        "colour": [True], "shape": [True], "position": [False], "count": [True]}
    assert parse_caption("a red circle in the middle").mentions[0].positions == [(1, 1)]


def test_a_relation_is_not_a_position() -> None:
    parsed = parse_caption("a red circle to the left of a blue square")
    assert [m.positions for m in parsed.mentions] == [[], []]
    assert parsed.relations == [(0, "left of", 1)] and parsed.count is None
    assert facts("a red circle to the left of a blue square", TWO) == {
        "colour": [True, True], "shape": [True, True], "relation": [True]}
    assert facts("A blue square to the left of a red circle.", TWO)["relation"] == [False]
    assert facts("a red circle above a blue square", TWO)["relation"] == [False]  # same row
    assert facts("a red circle on the left and a blue square on the right", TWO)["position"] == [True, True]


def test_two_shapes_each_fact_goes_to_its_own_object() -> None:
    # colours swapped: each mention matches the object it agrees with most (its shape and position)
    assert facts("a blue circle on the left and a red square on the right", TWO) == {
        "colour": [False, False], "shape": [True, True], "position": [True, True], "count": [True]}
    assert facts("two shapes: a red circle and a blue star", TWO) == {
        "colour": [True, True], "shape": [True, False], "count": [True]}
    assert facts("a red circle", TWO)["count"] == [False]  # a caption listing one object claims one shape


def test_one_object_per_mention() -> None:
    # the same object named twice: the second mention must be the other object, which is not a red circle
    # (though it is to the right of the red circle, so the relation holds between the two objects)
    assert facts("a red circle to the left of a red circle", TWO) == {
        "colour": [True, False], "shape": [True, False], "relation": [True]}
    # an object that is not there: every fact said of it is wrong
    assert facts("a large blue star and a red circle in the center", STAR_TOP_RIGHT) == {
        "size": [True], "colour": [True, False], "shape": [True, False], "position": [False], "count": [False]}


def test_counts() -> None:
    three = scene(obj("circle", "red", 0, 0), obj("circle", "blue", 1, 1), obj("square", "green", 2, 2))
    assert parse_caption("three shapes on a white background: two circles and a square").count == 3
    assert parse_caption("two circles and a square").count == 3
    assert parse_caption("three shapes, one red, one blue and one green").count == 3
    assert parse_caption("a picture of two shapes including a small red circle").count == 2
    assert parse_caption("a small red circle above a blue star").count is None  # a pair, not a list of all
    assert facts("two shapes, one red and one blue", three) == {"colour": [True, True], "count": [False]}


def test_every_generated_caption_is_true_of_its_scene() -> None:
    rng = random.Random(1)
    seen, other_scene = set(), []
    previous = sample_scene(rng, 64)
    for _ in range(300):
        record = sample_scene(rng, 64)
        for text in describe_scene(record, rng, k=8):
            checks = check_caption(text, record)
            assert all(all(v) for v in checks.values()), (text, record, checks)
            seen |= {k for k, v in checks.items() if v}
            other_scene += [r for v in check_caption(text, previous).values() for r in v]
        previous = record
    assert seen == set(FACTS)
    # the same captions checked against another scene are mostly wrong
    assert sum(other_scene) / len(other_scene) < 0.5


def test_score_counts_by_number_of_shapes() -> None:
    scenes = {1: STAR_TOP_RIGHT, 2: TWO, 3: STAR_TOP_RIGHT}
    predictions = {1: "a blue star in the top left corner", 2: "a red circle on the left and a blue square",
                   3: "a blue star", 4: "a red circle"}  # 4 has no scene: not scored
    scores = score_caption_facts(scenes, predictions)
    assert scores["position"]["1"] == {"checked": 1, "right": 0, "accuracy": 0.0, "stated_in": 0.5, "captions": 2}
    assert scores["colour"]["1"]["accuracy"] == 1.0 and scores["colour"]["2"]["checked"] == 2
    assert scores["position"]["all"] == {"checked": 2, "right": 1, "accuracy": 0.5, "stated_in": 2 / 3,
                                         "captions": 3}
    assert scores["relation"]["all"]["accuracy"] is None and scores["relation"]["all"]["stated_in"] == 0


@pytest.fixture(scope="module")
def shapes_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_shapes_captions(tmp_path_factory.mktemp("shapes"), num_train=0, num_val=0, num_test=6)


def test_eval_caption_scores_the_facts_of_a_results_file(tmp_path: Path, shapes_files: dict[str, Path]) -> None:
    images = json.loads(shapes_files["test"].read_text())["images"]
    one = next(img for img in images if len(img["scene"]["shapes"]) == 1)
    o = one["scene"]["shapes"][0]
    wrong_color = next(c for c in ("red", "blue") if c != o["color"])
    results = [{"image_id": img["id"], "caption": f"a {o['color']} {o['shape']}" if img is one else
                f"a {wrong_color} {o['shape']}"} for img in images]
    (tmp_path / "r.json").write_text(json.dumps(results))
    record = eval_caption.evaluate_captions(["--results", str(tmp_path / "r.json"), "--annotations",
                                             str(shapes_files["test"]),
                                "--out", str(tmp_path / "m.json")])
    colour = record["caption_facts"]["colour"]
    assert colour["1"]["right"] == sum(
        len(img["scene"]["shapes"]) == 1 and (img is one or img["scene"]["shapes"][0]["color"] == wrong_color)
        for img in images)
    assert colour["all"]["checked"] == len(images)
    assert json.loads((tmp_path / "m.json").read_text())["caption_facts"] == record["caption_facts"]
    assert "Caption facts" in (tmp_path / "m.html").read_text()


def test_eval_caption_runs_a_tiny_model_and_reports_facts(tmp_path: Path, shapes_files: dict[str, Path]) -> None:
    from tiny import eval_config

    from mmgpt.model import MMGPT

    config = eval_config(max_answer_length=8)
    texts = ["a red circle in the top left corner", "two shapes: a blue star above a green square"] * 4
    torch.manual_seed(0)
    MMGPT.from_config(config, train_texts=texts).save_pretrained(tmp_path / "model")
    folder = shapes_files["test"].parent
    record = eval_caption.evaluate_captions(["--model", str(tmp_path / "model"), "--annotations",
                                             str(shapes_files["test"]),
                                "--images", str(folder / "images" / "test"), "--out", str(tmp_path / "cap.json"),
                                "--predictions", str(tmp_path / "pred.json")])
    assert record["num_images"] == 6
    assert set(record["caption_facts"]) == set(FACTS)
    assert record["caption_facts"]["colour"]["all"]["captions"] == 6
    # the facts are those of the captions written: scoring them again without the model gives the same numbers
    again = eval_caption.evaluate_captions(["--results", str(tmp_path / "pred.json"), "--annotations",
                                            str(shapes_files["test"]),
                               "--out", str(tmp_path / "again.json")])
    assert again["caption_facts"] == record["caption_facts"]
    assert "<h2>Caption facts</h2>" in (tmp_path / "cap.html").read_text()
