"""Dataset readers on tiny fixtures, their error messages, and the weighted Mixture's ordering."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mmgpt.config import PromptTemplates
from mmgpt.data.example import Example
from mmgpt.data.formats import FORMATS, question_type, read_dataset
from mmgpt.data.mixture import Mixture, apportion
from mmgpt.data.spec import DatasetSpec
from mmgpt.prompts import conversation_prompt

EASY_VQA_ANSWERS = {"circle", "green", "red", "gray", "yes", "teal", "black", "rectangle", "yellow",
                    "triangle", "brown", "blue", "no"}


def _png(path: Path, color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    _png(images / "a.png", "red")
    _png(images / "b.png", "blue")
    data = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": " A red square. "},
            {"id": 11, "image_id": 1, "caption": "Something red."},
            {"id": 12, "image_id": 2, "caption": "A blue square."},
        ],
    }
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(data))
    return path, images


def test_registry_has_all_formats() -> None:
    assert {"easy_vqa", "coco_captions", "shapes_captions", "vqa_v2", "jsonl"} <= set(FORMATS)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="unknown format 'nope'.*jsonl"):
        DatasetSpec(format="nope")
    with pytest.raises(ValueError, match="'weight'"):
        DatasetSpec(format="jsonl", weight=-1)
    with pytest.raises(ValueError, match="'max_examples'"):
        DatasetSpec(format="jsonl", max_examples=-3)


def test_prompt_templates_validation() -> None:
    with pytest.raises(ValueError, match="'vqa'.*question"):
        PromptTemplates(vqa="Answer briefly.")
    with pytest.raises(ValueError, match="'vqa'"):
        PromptTemplates(vqa="{question} {other}")
    assert PromptTemplates(vqa="Q: {question} A:").vqa.format(question="x") == "Q: x A:"


def test_coco_captions(coco: tuple[Path, Path]) -> None:
    path, images = coco
    spec = DatasetSpec(format="coco_captions", path=str(path), images=str(images), name="tiny")
    examples = read_dataset(spec, PromptTemplates(caption="Caption:"))
    assert [e.id for e in examples] == [10, 11, 12]
    first = examples[0]
    assert first.task == "caption" and first.prompt == "Caption:" and first.answer == "A red square."
    assert first.image == str(images / "a.png") and first.source == "tiny"
    assert first.meta["image_id"] == 1
    assert first.meta["references"] == ["A red square.", "Something red."]
    assert examples[2].meta["references"] == ["A blue square."]
    assert len(read_dataset(DatasetSpec("coco_captions", str(path), str(images), max_examples=2))) == 2


def test_coco_captions_errors(coco: tuple[Path, Path], tmp_path: Path) -> None:
    path, images = coco
    with pytest.raises(FileNotFoundError, match=r"missing\.json.*'path'"):
        read_dataset(DatasetSpec("coco_captions", str(tmp_path / "missing.json"), str(images)))
    with pytest.raises(ValueError, match="'images' is required"):
        read_dataset(DatasetSpec("coco_captions", str(path)))
    bad = tmp_path / "captions_bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                               "annotations": [{"id": 1, "image_id": 1, "text": "x"}]}))
    with pytest.raises(ValueError, match=r"captions_bad\.json annotations\[0\]: missing field 'caption'"):
        read_dataset(DatasetSpec("coco_captions", str(bad), str(images)))
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"captions_bad\.json: missing list field 'images'"):
        read_dataset(DatasetSpec("coco_captions", str(bad), str(images)))


def _vqa_fixture(tmp_path: Path, with_annotations: bool = True) -> DatasetSpec:
    images = tmp_path / "val2014"
    _png(images / "COCO_val2014_000000000042.jpg")
    _png(images / "000000000007.jpg")
    questions = {"data_subtype": "val2014", "questions": [
        {"question_id": 420, "image_id": 42, "question": "What color is the square?"},
        {"question_id": 421, "image_id": 42, "question": "Is there a cat?"},
        {"question_id": 70, "image_id": 7, "question": "How many squares are there?"},
    ]}
    qpath = tmp_path / "questions.json"
    qpath.write_text(json.dumps(questions))
    apath = tmp_path / "annotations.json"

    def ann(qid: int, image_id: int, qtype: str, atype: str, answers: list[str], mc: str) -> dict:
        return {"question_id": qid, "image_id": image_id, "question_type": qtype, "answer_type": atype,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                            for i, a in enumerate(answers)],
                "multiple_choice_answer": mc}

    apath.write_text(json.dumps({"annotations": [
        ann(420, 42, "what color is the", "other", ["red"] * 9 + ["orange"], "red"),
        ann(421, 42, "is there a", "yes/no", ["no"] * 10, "no"),
        ann(70, 7, "how many", "number", ["1"] * 10, "1"),
    ]}))
    return DatasetSpec(format="vqa_v2", path=str(qpath), images=str(images),
                       annotations=str(apath) if with_annotations else "", split="val")


def test_vqa_v2(tmp_path: Path) -> None:
    spec = _vqa_fixture(tmp_path)
    examples = read_dataset(spec, PromptTemplates(vqa="Question: {question} Answer:"))
    assert [e.id for e in examples] == [420, 421, 70]
    first = examples[0]
    assert first.prompt == "Question: What color is the square? Answer:" and first.answer == "red"
    assert first.image == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    assert len(first.meta["answers"]) == 10 and first.meta["answers"][-1] == "orange"
    assert first.meta["question_type"] == "what color is the" and first.meta["answer_type"] == "other"
    assert examples[1].meta["answer_type"] == "yes/no"
    # image 7 only exists under the fallback name
    assert examples[2].image == str(tmp_path / "val2014" / "000000000007.jpg")


def test_vqa_v2_without_annotations(tmp_path: Path) -> None:
    examples = read_dataset(_vqa_fixture(tmp_path, with_annotations=False))
    assert [e.answer for e in examples] == ["", "", ""]
    assert examples[0].meta["question_type"] == "what color is the"


def test_vqa_v2_errors(tmp_path: Path) -> None:
    spec = _vqa_fixture(tmp_path)
    Path(spec.path).write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 42}]}))
    with pytest.raises(ValueError, match=r"questions\.json questions\[0\]: missing field 'question'"):
        read_dataset(spec)
    Path(spec.path).write_text(json.dumps({"questions": [{"question_id": 999, "image_id": 42, "question": "?"}]}))
    with pytest.raises(ValueError, match=r"annotations\.json: no annotation for question_id 999"):
        read_dataset(spec)
    spec.annotations = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=r"annotations JSON.*nope\.json.*'annotations'"):
        read_dataset(spec)


def test_jsonl_single_turn(tmp_path: Path) -> None:
    _png(tmp_path / "img" / "x.png")
    path = _write_jsonl(tmp_path / "data.jsonl", [
        {"image": "img/x.png", "prompt": "What is this?", "answer": "a square"},
        "",
        {"image": str(tmp_path / "img" / "x.png"), "prompt": "", "answer": "A red square.", "task": "caption",
         "id": "c1", "meta": {"k": 1}},
    ])
    examples = read_dataset(DatasetSpec(format="jsonl", path=str(path)))
    assert len(examples) == 2
    assert examples[0].image == str(tmp_path / "img" / "x.png") and examples[0].task == "vqa"
    assert examples[0].id == "line1" and examples[0].answer == "a square"
    assert examples[1].task == "caption" and examples[1].id == "c1" and examples[1].meta == {"k": 1}


def test_jsonl_multi_turn(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"image": "x.png", "id": "d", "conversations": [
        {"role": "user", "content": "What shape?"},
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "What color?"},
        {"role": "assistant", "content": "Red."},
    ]}])
    examples = read_dataset(DatasetSpec(format="jsonl", path=str(path)))
    assert [e.task for e in examples] == ["chat", "chat"]
    assert [e.id for e in examples] == ["d:0", "d:1"]
    assert examples[0].prompt == "User: What shape?" and examples[0].answer == "A square."
    assert examples[1].prompt == "User: What shape?\nAssistant: A square.\nUser: What color?"
    assert examples[1].answer == "Red."
    assert conversation_prompt([("user", "hi")]) == "User: hi"


def test_jsonl_reader_and_conversation_prompt_agree(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "What is this?"}, {"role": "assistant", "content": "A bus."},
                {"role": "user", "content": "What color?  "}, {"role": "assistant", "content": "Yellow."},
                {"role": "user", "content": "Is it\nmoving?"}, {"role": "assistant", "content": "No."}]
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"image": "x.png", "conversations": messages}])
    examples = read_dataset(DatasetSpec(format="jsonl", path=str(path)))
    assert [e.prompt for e in examples] == [conversation_prompt(messages[:k]) for k in (1, 3, 5)]
    # the exact text the README documents for a two-turn conversation
    assert examples[1].prompt == "User: What is this?\nAssistant: A bus.\nUser: What color?  "
    with pytest.raises(ValueError, match="role must be one of"):
        conversation_prompt([{"role": "system", "content": "x"}])
    with pytest.raises(TypeError, match="content must be a str"):
        conversation_prompt([{"role": "user", "content": 3}])


@pytest.mark.parametrize("line, message", [
    ({"image": "x.png", "prompt": "q"}, "line 2: missing field 'answer'"),
    ({"prompt": "q", "answer": "a"}, "line 2: missing field 'image'"),
    ({"image": "x.png", "prompt": "q", "answer": 3}, "line 2: field 'answer' has type int"),
    ({"image": "x.png", "prompt": "q", "answer": "a", "task": "dance"}, "line 2: field 'task'"),
    ("{not json", "line 2: invalid JSON"),
    ('{"image": "x.png", "prompt": "unterminated',
     r"line 2: invalid JSON \(Unterminated string starting at column 30\)"),
    ("[1, 2]", "line 2: expected a JSON object"),
    ({"image": "x.png", "conversations": [{"role": "assistant", "content": "hi"}]},
     r"line 2: conversations\[0\]: an assistant turn must follow a user turn"),
    ({"image": "x.png", "conversations": [{"role": "bot", "content": "hi"}]},
     r"line 2: conversations\[0\]: field 'role'"),
    ({"image": "x.png", "conversations": [{"role": "user"}]},
     r"line 2: conversations\[0\]: missing field 'content'"),
    ({"image": "x.png", "conversations": [{"role": "user", "content": "hi"}]},
     "line 2: field 'conversations' has no assistant turn"),
])
def test_jsonl_errors_name_file_line_field(tmp_path: Path, line: object, message: str) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", [{"image": "x.png", "prompt": "q", "answer": "a"}, line])
    with pytest.raises(ValueError, match=r"data\.jsonl " + message):
        read_dataset(DatasetSpec(format="jsonl", path=str(path)))


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"JSONL file.*absent\.jsonl"):
        read_dataset(DatasetSpec(format="jsonl", path=str(tmp_path / "absent.jsonl")))
    with pytest.raises(ValueError, match="field 'path' is required"):
        read_dataset(DatasetSpec(format="jsonl"))


def test_easy_vqa() -> None:
    examples = read_dataset(DatasetSpec(format="easy_vqa", split="train", max_examples=50))
    assert len(examples) == 50
    assert {e.answer for e in examples} <= EASY_VQA_ANSWERS
    assert examples[0].id == "train-0" and examples[49].id == "train-49"
    assert all(Path(e.image).is_file() for e in examples)
    for e in examples:
        assert e.meta["answer_type"] == ("yes/no" if e.answer in ("yes", "no") else "other")
        assert e.meta["question_type"] != "none of the above"
    test = read_dataset(DatasetSpec(format="easy_vqa", split="test", max_examples=5))
    assert [e.id for e in test] == [f"test-{i}" for i in range(5)]
    with pytest.raises(ValueError, match="'split'"):
        read_dataset(DatasetSpec(format="easy_vqa", split="val"))


def test_question_type() -> None:
    assert question_type("What color is the circle?") == "what color is the"
    assert question_type("does the image contain a triangle?") == "does the image contain a"
    assert question_type("is there a red shape?") == "is there a"
    assert question_type("Why?") == "none of the above"


def test_shapes_captions_delegates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coco: tuple[Path, Path]) -> None:
    import sys
    import types

    path, _ = coco
    # lay the fixture out like the shapes builder does: images/<split>/ next to captions_<split>.json
    for name in ("a.png", "b.png"):
        _png(tmp_path / "images" / "train" / name)
    calls = []
    fake = types.ModuleType("mmgpt.data.shapes")
    fake.build_shapes_captions = lambda root, **kw: calls.append(root) or {"train": path}
    fake.build_held_out_scenes = lambda root, **kw: calls.append(root) or path
    monkeypatch.setitem(sys.modules, "mmgpt.data.shapes", fake)
    monkeypatch.setenv("MMGPT_CACHE", str(tmp_path / "cache"))
    examples = read_dataset(DatasetSpec(format="shapes_captions", split="train"))
    assert calls == [tmp_path / "cache" / "shapes"]
    assert len(examples) == 3 and examples[0].task == "caption" and examples[0].source == "shapes_captions"
    assert examples[0].image == str(tmp_path / "images" / "train" / "a.png")
    with pytest.raises(ValueError, match="'split'"):
        read_dataset(DatasetSpec(format="shapes_captions", split="test"))


@pytest.mark.slow
def test_shapes_captions_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mmgpt.data.shapes")
    monkeypatch.setenv("MMGPT_CACHE", str(tmp_path))
    examples = read_dataset(DatasetSpec(format="shapes_captions", split="val", max_examples=20))
    assert len(examples) == 20 and all(Path(e.image).is_file() for e in examples)
    assert all(e.task == "caption" and e.answer and e.answer in e.meta["references"] for e in examples)


# ---------------------------------------------------------------- Mixture


def _examples(tag: str, n: int) -> list[Example]:
    return [Example(image=f"{tag}{i}.png", prompt="p", answer="a", id=f"{tag}{i}", source=tag) for i in range(n)]


def _ids(mix: Mixture) -> list[str]:
    return [mix[i].id for i in range(len(mix))]


def test_apportion_is_exact() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(400, [0.1, 0.3]) == [100, 300]
    assert sum(apportion(1001, [0.37, 2.2, 5.0])) == 1001


def test_mixture_deterministic_per_epoch() -> None:
    parts = [("a", _examples("a", 30), 1.0), ("b", _examples("b", 50), 2.0)]
    mix = Mixture(parts, num_samples=100, seed=7)
    first = _ids(mix)
    assert first == _ids(Mixture(parts, num_samples=100, seed=7))
    mix.set_epoch(1)
    second = _ids(mix)
    assert second != first
    mix.set_epoch(0)
    assert _ids(mix) == first
    assert _ids(Mixture(parts, num_samples=100, seed=8)) != first
    resumed = Mixture(parts, num_samples=100, seed=7)
    resumed.set_epoch(1)
    assert _ids(resumed) == second


def test_mixture_weights_respected() -> None:
    parts = [("a", _examples("a", 10), 1.0), ("b", _examples("b", 10), 3.0), ("z", _examples("z", 5), 0.0)]
    mix = Mixture(parts, num_samples=4000, seed=0)
    counts = Counter(mix[i].source for i in range(len(mix)))
    assert counts["z"] == 0
    assert abs(counts["a"] / 4000 - 0.25) < 0.02 and abs(counts["b"] / 4000 - 0.75) < 0.02
    # oversampled datasets are cycled: every example of 'a' appears about equally often
    per_example = Counter(mix[i].id for i in range(len(mix)) if mix[i].source == "a")
    assert set(per_example.values()) == {100}
    assert mix.locate(0)[0] in ("a", "b")


def test_mixture_weights_proportional_to_size_is_one_pass() -> None:
    parts = [("a", _examples("a", 17), 17.0), ("b", _examples("b", 40), 40.0), ("c", _examples("c", 3), 3.0)]
    mix = Mixture(parts, seed=3)
    assert len(mix) == 60
    for epoch in range(3):
        mix.set_epoch(epoch)
        ids = _ids(mix)
        assert sorted(ids) == sorted(e.id for _, ex, _ in parts for e in ex)


def test_mixture_order_is_interleaved_and_errors() -> None:
    parts = [("a", _examples("a", 50), 1.0), ("b", _examples("b", 50), 1.0)]
    sources = [e.source for e in (Mixture(parts, seed=0)[i] for i in range(100))]
    assert sources != sorted(sources)
    with pytest.raises(ValueError, match="'e'.*no examples"):
        Mixture([("e", [], 1.0)])
    with pytest.raises(ValueError, match="weight > 0"):
        Mixture([("a", _examples("a", 3), 0.0)])
    with pytest.raises(ValueError, match="'a'.*weight"):
        Mixture([("a", _examples("a", 3), -1.0)])
    with pytest.raises(IndexError):
        Mixture(parts)[100]
