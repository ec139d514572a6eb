"""The HTML reports of eval_vqa.py and eval_caption.py: every row's image, prompt, references and prediction agree."""
from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from mmgpt.config import PromptTemplates
from mmgpt.eval import caption as eval_caption
from mmgpt.eval import common
from mmgpt.eval import vqa as eval_vqa

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20),
           "black": (0, 0, 0), "white": (255, 255, 255)}


def _colour_of(image: Any) -> str:
    """The name of the COLOURS entry nearest to the image's centre pixel."""
    from mmgpt.images import load_image

    picture = load_image(image)
    pixel = picture.getpixel((picture.width // 2, picture.height // 2))
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], pixel)))


class _Rows(HTMLParser):
    """Collects each report table's rows as lists of (text, image src) cells, grouped by the h2 heading above."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[list[dict[str, str]]]] = {}
        self._heading: str | None = None
        self._in_h2 = False
        self._cell: dict[str, str] | None = None
        self._row: list[dict[str, str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._in_h2, self._heading = True, ""
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"text": "", "src": "", "tag": tag}
        elif tag == "img" and self._cell is not None:
            self._cell["src"] = dict(attrs).get("src") or ""
        elif tag == "br" and self._cell is not None:
            self._cell["text"] += "\n"

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False
            self.sections.setdefault(self._heading or "", [])
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.sections[self._heading or ""].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self._heading = (self._heading or "") + data
        elif self._cell is not None:
            self._cell["text"] += data


def _example_rows(report: Path) -> dict[str, list[dict[str, Any]]]:
    """Best/worst sections of a report -> rows {colour, prompt, references, prediction, score}."""
    parser = _Rows()
    parser.feed(report.read_text(encoding="utf-8"))
    out: dict[str, list[dict[str, Any]]] = {}
    for heading in ("Best examples", "Worst examples"):
        rows = []
        for cells in parser.sections[heading]:
            if all(cell["tag"] == "th" for cell in cells):
                continue
            image, prompt, references, prediction, score = cells
            data = base64.b64decode(image["src"].split(",", 1)[1])
            rows.append({"colour": _colour_of(Image.open(io.BytesIO(data))), "prompt": prompt["text"],
                         "references": references["text"], "prediction": prediction["text"],
                         "score": float(score["text"])})
        out[heading] = rows
    out["tables"] = parser.sections  # type: ignore[assignment]
    return out


def _solid_images(folder: Path, names: list[str], suffix: str) -> None:
    folder.mkdir()
    for i, colour in enumerate(names):
        Image.new("RGB", (32, 32), COLOURS[colour]).save(folder / f"{i:012d}{suffix}")


def _fake_generation(wrong: set[int]) -> Any:
    """A stand-in for the model: names each example's colour, except at the positions in `wrong`."""

    def generate(args: Any, read: Any, variants: Any = None) -> tuple[list[Any], list[list[str]], dict[str, Any], Any]:
        examples = read(PromptTemplates())
        answers = ["purple" if i in wrong else _colour_of(e.image) for i, e in enumerate(examples)]
        return examples, [answers], {"model": "fake"}, SimpleNamespace(is_main_process=True)

    return generate


# the image order deliberately differs from the image ids' order, and some ids repeat across questions
NAMES = ["red", "green", "blue", "yellow", "black", "white"]


def test_vqa_report_rows_pair_each_image_with_its_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _solid_images(tmp_path / "images", NAMES, ".jpg")
    order = [3, 0, 5, 1, 4, 2, 3, 0, 5, 1, 4, 2]  # two questions per image, image ids out of order
    questions = {"data_subtype": "", "questions": [
        {"question_id": 100 + n, "image_id": image_id, "question": f"is it {NAMES[image_id]} or purple?"}
        for n, image_id in enumerate(order)]}
    annotations = {"annotations": [
        {"question_id": 100 + n, "image_id": image_id, "question_type": "is it",
         "answer_type": "first" if n < 6 else "second", "multiple_choice_answer": NAMES[image_id],
         "answers": [{"answer": NAMES[image_id], "answer_id": k + 1, "answer_confidence": "yes"} for k in range(10)]}
        for n, image_id in enumerate(order)]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    monkeypatch.setattr(common, "generate_for_eval", _fake_generation(wrong={1, 4, 8}))
    out = tmp_path / "vqa.json"
    record = eval_vqa.evaluate_vqa(["--questions", str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json"),
                            "--images", str(tmp_path / "images"), "--out", str(out)])
    assert record["metrics"]["overall"] == pytest.approx(75.0)
    rows = _example_rows(tmp_path / "vqa.html")
    for row in rows["Best examples"] + rows["Worst examples"]:
        assert row["colour"] in row["prompt"] and row["references"] == row["colour"], row
        assert (row["prediction"] == row["colour"]) == (row["score"] > 0), row
    best = [row["colour"] for row in rows["Best examples"]]
    assert len(set(best)) == len(best), "the best examples show distinct images"
    # the three wrong answers, and no correct one after them
    assert [(row["prediction"], row["score"]) for row in rows["Worst examples"]] == [("purple", 0.0)] * 3
    # a percentage as the terminal prints it, not 75.0000
    assert [cells[1]["text"] for cells in rows["tables"]["Metrics"] if cells[0]["text"] == "overall"] == ["75"]
    # the per-answer-type table, as the terminal prints it
    assert any(cells[0]["text"] == "first" for cells in rows["tables"]["Per answer type"])


def test_caption_report_rows_pair_each_image_with_its_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _solid_images(tmp_path / "images", NAMES, ".png")
    ids = [3, 0, 5, 1, 4, 2]  # annotation order differs from the images' ids
    images = [{"id": i, "file_name": f"{i:012d}.png"} for i in range(len(NAMES))]
    annotations = [{"id": 10 * i + k, "image_id": i, "caption": f"a square that is {NAMES[i]} all over"}
                   for i in ids for k in range(2)]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    monkeypatch.setattr(common, "generate_for_eval", _fake_generation(wrong={0, 2}))
    record = eval_caption.evaluate_captions(["--annotations", str(tmp_path / "captions.json"), "--images",
                                             str(tmp_path / "images"),
                                "--out", str(tmp_path / "cap.json")])
    assert record["num_images"] == 6
    rows = _example_rows(tmp_path / "cap.html")
    for row in rows["Best examples"] + rows["Worst examples"]:
        assert row["colour"] in row["references"], row
        assert row["prompt"] == "Describe the image.", row
        assert (row["colour"] in row["prediction"]) == (row["score"] > 0), row
    assert any(cells[0]["text"] == "CIDEr" for cells in rows["tables"]["Metrics"])


def test_caption_report_of_a_results_file_pairs_images_by_id(tmp_path: Path) -> None:
    _solid_images(tmp_path / "images", NAMES, ".png")
    images = [{"id": i, "file_name": f"{i:012d}.png"} for i in range(len(NAMES))]
    annotations = [{"id": i, "image_id": i, "caption": f"{NAMES[i]} square"} for i in (5, 2, 0, 4, 1, 3)]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    results = [{"image_id": i, "caption": f"{NAMES[i]} square" if i % 2 else "purple"} for i in (1, 4, 0, 3, 5, 2)]
    (tmp_path / "results.json").write_text(json.dumps(results))
    eval_caption.evaluate_captions(["--results", str(tmp_path / "results.json"), "--annotations",
                                    str(tmp_path / "captions.json"),
                       "--images", str(tmp_path / "images"), "--out", str(tmp_path / "m.json")])
    rows = _example_rows(tmp_path / "m.html")
    for row in rows["Best examples"] + rows["Worst examples"]:
        assert row["colour"] in row["references"], row
        assert (row["colour"] in row["prediction"]) == (row["score"] > 0), row


def test_official_files_give_every_question_its_own_id() -> None:
    from mmgpt.data.example import Example

    # an int id equal to another example's position must not give two questions one id
    examples = [Example(image="a.png", prompt="q0", answer="red", task="vqa", id=1),
                Example(image="b.png", prompt="q1", answer="blue", task="vqa", id="second"),
                Example(image="c.png", prompt="q2", answer="green", task="vqa", id=7)]
    questions, annotations, ids = eval_vqa.official_files(examples)
    assert len(set(ids)) == 3
    assert [q["question_id"] for q in questions["questions"]] == ids
    assert [a["multiple_choice_answer"] for a in annotations["annotations"]] == ["red", "blue", "green"]
