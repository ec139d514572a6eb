"""eval_vqa.py --lmms-task: the evaluated questions as an lmms-eval task folder, and lmms-eval's score of a served
model on it equal to eval_vqa.py's. The second test needs lmms-eval (`pip install lmms-eval "filelock<4"`, in an
environment of its own: the other extras need filelock 4 and protobuf 7) and is skipped without it; it runs offline
against `mmgpt serve` in this process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import eval_config, one_thread  # noqa: F401 (autouse fixture)

from mmgpt.data.formats import read_dataset
from mmgpt.data.spec import DatasetSpec
from mmgpt.eval import vqa as eval_vqa
from mmgpt.images import load_image
from mmgpt.model import MMGPT

QUESTIONS = 40


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[MMGPT, Path]:
    """A tiny model trained a few seconds on easy-VQA: some answers right, some wrong, so scores can differ."""
    examples = read_dataset(DatasetSpec(format="easy_vqa", split="train", max_examples=256, name="easy_vqa"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the autouse one_thread
    torch.manual_seed(0)
    model = MMGPT.from_config(eval_config(max_answer_length=6),
                              train_texts=[t for e in examples for t in (e.prompt, e.answer)])
    batch = model.processor([e.prompt for e in examples], [load_image(e.image) for e in examples],
                            [e.answer for e in examples])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(100):
        rows = torch.randint(0, len(examples), (32,), generator=generator)
        loss = model(**{k: v[rows] for k, v in batch.items()}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("m") / "model"
    model.save_pretrained(folder)
    return model, folder


def evaluate(folder: Path, out: Path) -> tuple[dict, Path]:
    """eval_vqa.py on the first QUESTIONS test questions, writing the task folder -> (record, task folder)."""
    task = out / "mmgpt_vqa"
    record = eval_vqa.evaluate_vqa(["--model", str(folder), "--max-examples", str(QUESTIONS), "--out",
                                    str(out / "vqa.json"), "--predictions", str(out / "pred.json"), "--lmms-task",
                                    str(task)])
    return record, task


def test_lmms_task_folder_holds_the_evaluated_questions_and_their_pixels(trained_model: tuple, tmp_path: Path) -> None:
    _, folder = trained_model
    record, task = evaluate(folder, tmp_path)
    docs = [json.loads(line) for line in (task / "questions.jsonl").read_text().splitlines()]
    predictions = json.loads((tmp_path / "pred.json").read_text())
    assert [d["question_id"] for d in docs] == [p["question_id"] for p in predictions] and len(docs) == QUESTIONS
    examples = read_dataset(DatasetSpec(format="easy_vqa", split="test", max_examples=QUESTIONS, name="easy_vqa"))
    for doc, example in zip(docs, examples):
        assert doc["question"] == example.meta["question"] and doc["answer"] == example.answer
        # ten official answer records, as eval_vqa.py scores it
        assert [(a["answer"], a["answer_id"]) for a in doc["answers"]] == [(example.answer, i) for i in range(1, 11)]
        # lossless: the served model reads the pixels eval_vqa.py read
        assert np.array_equal(np.asarray(load_image(task / doc["image"]).convert("RGB")),
                              np.asarray(load_image(example.image).convert("RGB")))
    config = (task / "mmgpt_vqa.yaml").read_text()
    assert "task: mmgpt_vqa" in config and str((task / "questions.jsonl").resolve()) in config
    # the answers' length limit is the model's, so a served model stops where eval_vqa.py's did
    assert "max_new_tokens: 6" in config and record["lmms_task"] == str(task)
    assert 0 < record["metrics"]["overall"] < 100  # the trained model gets some right and some wrong


@pytest.mark.parametrize("bad, message", [
    ("tasks/my-task", "the folder's name is the task's, so it must be letters, digits and underscores"),
    ("full", "exists and is not an empty folder; give a new one"),
])
def test_a_bad_task_folder_is_refused_before_the_model_runs(bad: str, message: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        eval_vqa.evaluate_vqa(["--model", str(tmp_path / "none"), "--lmms-task", str(tmp_path / bad)])
    assert message in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_lmms_eval_scores_the_served_model_as_eval_vqa_does(trained_model: tuple, tmp_path: Path) -> None:
    pytest.importorskip("lmms_eval", reason="needs lmms-eval: pip install lmms-eval")
    from test_serve import NAME, running_server

    model, folder = trained_model
    record, task = evaluate(folder, tmp_path)
    env = {**os.environ, "OPENAI_API_KEY": "unused", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false"}
    with running_server(model) as url:
        run = subprocess.run(
            [sys.executable, "-m", "lmms_eval", "--model", "openai", "--model_args",
             f"model={NAME},base_url={url}/v1,num_concurrent=1", "--include_path", str(task), "--tasks", "mmgpt_vqa",
             "--batch_size", "1", "--output_path", str(tmp_path / "lmms"), "--log_samples"],
            env=env, capture_output=True, text=True, timeout=600)
    found = list((tmp_path / "lmms").rglob("*results.json"))
    assert run.returncode == 0 and found, run.stdout[-3000:] + run.stderr[-3000:]
    results = found[0]
    score = json.loads(results.read_text())["results"]["mmgpt_vqa"]["exact_match,none"]
    assert 100 * score == pytest.approx(record["metrics"]["overall"], abs=0.01)
    # answer by answer, not only on average
    samples = [json.loads(line) for path in (tmp_path / "lmms").rglob("*mmgpt_vqa*.jsonl")
               for line in path.read_text().splitlines()]
    served = {s["doc_id"]: s["filtered_resps"] for s in samples}
    answered = [p["answer"] for p in json.loads((tmp_path / "pred.json").read_text())]
    assert [served[i] for i in range(QUESTIONS)] == answered
