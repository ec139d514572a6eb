"""eval_vqa.py and eval_caption.py: scoring results files in the official layouts, and running a model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmgpt.eval import caption as eval_caption
from mmgpt.eval import vqa as eval_vqa


def _vqa_files(folder: Path) -> tuple[Path, Path, Path]:
    """Three questions in the official VQA layout, with hand-checkable accuracies."""
    questions = {"data_subtype": "val2014", "questions": [
        {"question_id": 1, "image_id": 10, "question": "What color is the bus?"},
        {"question_id": 2, "image_id": 10, "question": "How many dogs?"},
        {"question_id": 3, "image_id": 11, "question": "Is it raining?"},
    ]}

    def answers(*values: str) -> list[dict]:
        return [{"answer": v, "answer_id": i + 1, "answer_confidence": "yes"} for i, v in enumerate(values)]

    annotations = {"annotations": [
        # 2 of 10 humans said "yellow": accuracy = mean over 10 leave-one-out subsets of min(matches/3, 1)
        # = (8 * 2/3 + 2 * 1/3) / 10 = 0.6
        {"question_id": 1, "image_id": 10, "question_type": "what color is the", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": answers(*(["red"] * 8 + ["yellow"] * 2))},
        # "two" is normalised to "2" because the human answers differ
        {"question_id": 2, "image_id": 10, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": answers(*(["2"] * 9 + ["3"]))},
        {"question_id": 3, "image_id": 11, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "no", "answers": answers(*(["no"] * 10))},
    ]}
    results = [{"question_id": 1, "answer": "yellow"}, {"question_id": 2, "answer": "two"},
               {"question_id": 3, "answer": "yes"}]
    paths = folder / "q.json", folder / "a.json", folder / "r.json"
    for path, data in zip(paths, (questions, annotations, results)):
        path.write_text(json.dumps(data))
    return paths


def test_vqa_scores_a_results_file_without_a_model(tmp_path: Path) -> None:
    q, a, r = _vqa_files(tmp_path)
    out = tmp_path / "metrics.json"
    record = eval_vqa.evaluate_vqa(["--results", str(r), "--questions", str(q), "--annotations", str(a), "--out",
                                    str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    assert record["metrics"] == metrics
    # (0.6 + 1.0 + 0.0) / 3 = 53.33
    assert metrics["overall"] == pytest.approx(53.33)
    assert metrics["perAnswerType"] == {"other": 60.0, "number": 100.0, "yes/no": 0.0}
    assert (tmp_path / "metrics.html").read_text().count("<tr>") >= 4


def test_existing_outputs_are_replaced_only_with_overwrite_and_a_folder_never(tmp_path: Path) -> None:
    q, a, r = _vqa_files(tmp_path)
    out = tmp_path / "metrics.json"
    out.write_text("my notes")
    argv = ["--results", str(r), "--questions", str(q), "--annotations", str(a), "--out", str(out)]
    with pytest.raises(FileExistsError, match=f"{out} already exists: replace it with --overwrite"):
        eval_vqa.evaluate_vqa(argv)
    assert out.read_text() == "my notes" and not (tmp_path / "metrics.html").exists()
    (tmp_path / "metrics.html").write_text("my page")
    with pytest.raises(FileExistsError, match="metrics.html already exists"):
        eval_vqa.evaluate_vqa([*argv[:-1], str(tmp_path / "other.json"), "--report", str(tmp_path / "metrics.html")])
    assert eval_vqa.evaluate_vqa([*argv, "--overwrite"])["metrics"]["overall"] == pytest.approx(53.33)
    assert json.loads(out.read_text())["metrics"]["overall"] == pytest.approx(53.33)
    with pytest.raises(FileExistsError, match=f"{tmp_path} is a folder, not a file"):
        eval_caption.evaluate_captions(["--results", str(r), "--annotations", str(a), "--out", str(tmp_path),
                                        "--overwrite"])


def test_vqa_rejects_results_missing_questions(tmp_path: Path) -> None:
    q, a, r = _vqa_files(tmp_path)
    r.write_text(json.dumps([{"question_id": 1, "answer": "red"}]))
    with pytest.raises(ValueError, match="question"):
        eval_vqa.evaluate_vqa(["--results", str(r), "--questions", str(q), "--annotations", str(a),
                       "--out", str(tmp_path / "m.json")])


def test_caption_scores_a_results_file_without_a_model(tmp_path: Path) -> None:
    annotations = {"images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"}],
                   "annotations": [
                       {"id": 1, "image_id": 1, "caption": "A red circle on the left."},
                       {"id": 2, "image_id": 1, "caption": "a red circle"},
                       {"id": 3, "image_id": 2, "caption": "Two blue squares."},
                       {"id": 4, "image_id": 2, "caption": "two squares that are blue"}]}
    results = [{"image_id": 1, "caption": "a red circle"}, {"image_id": 2, "caption": "a green triangle"}]
    (tmp_path / "captions.json").write_text(json.dumps(annotations))
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "caption_metrics.json"
    eval_caption.evaluate_captions(["--results", str(tmp_path / "results.json"), "--annotations",
                                    str(tmp_path / "captions.json"),
                       "--out", str(out)])
    record = json.loads(out.read_text())
    metrics = record["metrics"]
    assert set(metrics) >= {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    # image 1 matches a reference exactly (ROUGE-L 1), image 2 shares no word with its references (0)
    assert metrics["ROUGE_L"] == pytest.approx(0.5)
    assert 0.0 < metrics["Bleu_1"] < 1.0
    assert "METEOR" in record["unavailable"] or "METEOR" in metrics
    assert (tmp_path / "caption_metrics.html").is_file()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny import eval_config

    from mmgpt.model import MMGPT

    model = MMGPT.from_config(eval_config(max_answer_length=6),
                              train_texts=["what color is the shape?", "red", "blue circle", "yes no"] * 4)
    folder = tmp_path_factory.mktemp("m") / "model"
    model.save_pretrained(folder)
    return folder


def test_vqa_runs_a_model_on_easy_vqa(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "vqa.json"
    predictions = tmp_path / "pred.json"
    record = eval_vqa.evaluate_vqa(["--model", str(tiny_model), "--max-examples", "12", "--out", str(out),
                            "--predictions", str(predictions), "--export-official", str(tmp_path / "official")])
    assert record["num_questions"] == 12
    assert 0.0 <= record["metrics"]["overall"] <= 100.0
    assert record["decoding"]["num_beams"] == 1 and "torch" in record["versions"]
    assert record["decoding"]["max_new_tokens"] == 6, "the record holds the model's effective generation config"
    # the exported official files score the written predictions to the same number
    again = eval_vqa.evaluate_vqa(["--results", str(predictions), "--questions",
                                   str(tmp_path / "official" / "questions.json"),
                           "--annotations", str(tmp_path / "official" / "annotations.json"),
                           "--out", str(tmp_path / "again.json")])
    assert again["metrics"] == record["metrics"]


def test_caption_runs_a_model_on_a_coco_folder(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "cap.json"
    record = eval_caption.evaluate_captions(["--model", str(tiny_model), *coco_folder(tmp_path), "--out", str(out)])
    assert record["num_images"] == 3
    assert "CIDEr" in record["metrics"]
    assert "data:image/png;base64" in (tmp_path / "cap.html").read_text()


def coco_folder(folder: Path) -> list[str]:
    """Three images with five captions each in COCO's layout -> eval_caption.py's --annotations/--images options."""
    (folder / "images").mkdir()
    images, annotations = [], []
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 100, 200)).save(folder / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png"})
        annotations += [{"id": 10 * i + k, "image_id": i, "caption": f"caption {k} of image {i}"} for k in range(5)]
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return ["--annotations", str(folder / "captions.json"), "--images", str(folder / "images")]


@pytest.mark.slow
def test_the_eval_scripts_score_an_export_as_its_model(tmp_path: Path, tiny_model: Path) -> None:
    from mmgpt.export import export_onnx

    exported = export_onnx(tiny_model, tmp_path / "onnx")
    coco = coco_folder(tmp_path)
    records, answers = {}, {}
    for name, folder in (("torch", tiny_model), ("onnx", exported)):
        records[name] = eval_vqa.evaluate_vqa(["--model", str(folder), "--max-examples", "16", "--closed-set",
                                               "--out", str(tmp_path / f"{name}.json"),
                                               "--predictions", str(tmp_path / f"{name}-answers.json")])
        answers[name] = json.loads((tmp_path / f"{name}-answers.json").read_text())
        records[f"{name} captions"] = eval_caption.evaluate_captions(
            ["--model", str(folder), *coco, "--out", str(tmp_path / f"{name}-captions.json")])
    assert answers["onnx"] == answers["torch"] and len(answers["onnx"]) == 16
    assert records["onnx"]["metrics"] == records["torch"]["metrics"]
    assert records["onnx"]["closed_set"] == records["torch"]["closed_set"]
    assert records["onnx captions"]["metrics"] == records["torch captions"]["metrics"]
    assert records["onnx"]["model"] == str(exported)


@pytest.mark.slow
def test_two_processes_give_the_same_numbers(tmp_path: Path, tiny_model: Path) -> None:
    import os
    import subprocess
    import sys

    single = eval_vqa.evaluate_vqa(["--model", str(tiny_model), "--max-examples", "24", "--out",
                                    str(tmp_path / "one.json"),
                            "--predictions", str(tmp_path / "one_predictions.json")])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "LOCAL_RANK", "RANK", "WORLD_SIZE"))}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(Path(__file__).resolve().parent.parent / "eval_vqa.py"), "--model", str(tiny_model),
               "--max-examples", "24", "--out", str(tmp_path / "two.json"),
               "--predictions", str(tmp_path / "two_predictions.json")]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = json.loads((tmp_path / "two.json").read_text())
    assert double["processes"] == 2
    assert double["metrics"] == single["metrics"]
    # the same answers in the same order: each process's share is gathered back in place
    assert json.loads((tmp_path / "two_predictions.json").read_text()) == json.loads(
        (tmp_path / "one_predictions.json").read_text())


def test_default_outputs_go_beside_the_model_not_into_it_or_the_current_folder(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    before = sorted(p.relative_to(tiny_model) for p in tiny_model.rglob("*"))
    eval_vqa.evaluate_vqa(["--model", str(tiny_model), "--max-examples", "4"])
    expected = tiny_model.parent / "eval"  # the tiny model is saved as <run>/model
    assert (expected / "eval_vqa.json").is_file() and (expected / "eval_vqa.html").is_file()
    assert f"metrics: {expected / 'eval_vqa.json'}" in capsys.readouterr().out
    assert not any(here.iterdir()), "nothing is written into the current folder"
    assert sorted(p.relative_to(tiny_model) for p in tiny_model.rglob("*")) == before
    # a results file is scored into its own folder; --out still wins
    q, a, r = _vqa_files(tmp_path)
    eval_vqa.evaluate_vqa(["--results", str(r), "--questions", str(q), "--annotations", str(a)])
    assert (tmp_path / "eval_vqa.json").is_file() and (tmp_path / "eval_vqa.html").is_file()
    eval_vqa.evaluate_vqa(["--results", str(r), "--questions", str(q), "--annotations", str(a),
                   "--out", str(tmp_path / "x" / "m.json"), "--report", str(tmp_path / "y.html")])
    assert (tmp_path / "x" / "m.json").is_file() and (tmp_path / "y.html").is_file()
    assert not any(here.iterdir())


def test_output_folder_for_other_model_names(tmp_path: Path) -> None:
    from argparse import Namespace

    from mmgpt.eval.common import output_folder

    assert output_folder(Namespace(results=None, model=str(tmp_path / "mine"))) == tmp_path / "mine-eval"
    assert output_folder(Namespace(results=None, model="hf://org/name")) == Path("eval") / "org--name"


def test_a_cpu_launch_of_several_processes_that_runs_one_is_warned_about(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mmgpt.devices import warn_if_one_process_launched

    for key in ("WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    assert not warn_if_one_process_launched(1, "x.py"), "a plain python run is not warned about"
    # what accelerate's CPU launcher leaves for `accelerate launch --num_processes 4 eval_vqa.py`
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert not warn_if_one_process_launched(4, "x.py")
    with caplog.at_level("WARNING"):
        eval_vqa.evaluate_vqa(["--model", str(tiny_model), "--max-examples", "2", "--out", str(tmp_path / "m.json")])
    assert "--multi_gpu --num_processes N" in caplog.text


def test_vqa_closed_set_reports_open_and_closed_accuracy_side_by_side(tmp_path: Path, tiny_model: Path) -> None:
    record = eval_vqa.evaluate_vqa(["--model", str(tiny_model), "--max-examples", "12", "--out",
                                    str(tmp_path / "v.json"),
                            "--closed-set"])
    choices = record["closed_set"]["answer_choices"]
    assert choices and choices == sorted(set(choices))
    assert 0.0 <= record["closed_set"]["metrics"]["overall"] <= 100.0
    # the open answers are the plain run's: the closed-set pass leaves them as they were
    plain = eval_vqa.evaluate_vqa(["--model", str(tiny_model), "--max-examples", "12", "--out",
                                   str(tmp_path / "o.json")])
    assert plain["metrics"] == record["metrics"] and "closed_set" not in plain
    report = (tmp_path / "v.html").read_text()
    assert f"Open vs closed-set accuracy ({len(choices)} choices)" in report
    assert f"{record['closed_set']['metrics']['overall']:.2f} closed-set" in report
    with pytest.raises(SystemExit):
        eval_vqa.evaluate_vqa(["--results", "r.json", "--questions", "q.json", "--annotations", "a.json",
                               "--closed-set"])


def test_a_bad_image_in_the_set_is_skipped_and_counted_not_fatal(tmp_path: Path, tiny_model: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "good.png").write_bytes(b"")
    Image.new("RGB", (40, 40), (200, 20, 20)).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = [{"image": "good.png", "prompt": f"what color is it? {i}", "answer": "red"} for i in range(5)]
    lines.append({"image": "corrupt.png", "prompt": "what color is it?", "answer": "red"})  # the last line
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    record = eval_vqa.evaluate_vqa(["--model", str(tiny_model), "--dataset",
                                    f"{{format: jsonl, path: {tmp_path / 'set.jsonl'}}}", "--out",
                                    str(tmp_path / "vqa.json")])
    assert record["num_questions"] == 5
    assert record["bad_images"].startswith("1 of 2 images skipped"), record["bad_images"]
    assert json.loads((tmp_path / "vqa.json").read_text())["bad_images"] == record["bad_images"]
    # questions without an answer type print no unnamed per-type line
    printed = capsys.readouterr().out.splitlines()
    assert printed and not [line for line in printed if line.strip().startswith(":")], printed
