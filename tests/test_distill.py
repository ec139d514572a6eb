"""Distillation: the loss by hand, zero against itself, tokenizer checks, exact resume and two processes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_train import launch_two_processes, make_jsonl, tiny_config, weights
from tiny import TEXTS, build, make_batch, one_thread  # noqa: F401 (autouse fixture)
from tiny import tiny_config as tiny_model_config

from mmgpt.config import ConfigError
from mmgpt.model import MMGPT
from mmgpt.training.config import DistillConfig
from mmgpt.training.distill import check_same_tokenizer, distill_loss_sum, distill_token_loss
from mmgpt.training.loop import run_training

# the student: half the teacher's MLP width
STUDENT = {"model.generator.kwargs": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 32,
                                      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                                      "max_position_embeddings": 64}}


def test_loss_equals_a_hand_computation() -> None:
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]])
    teacher = torch.tensor([[[0.0, 2.0, 0.0], [1.0, -1.0, 0.0]]])
    targets = torch.tensor([[2, -100]])
    alpha, t = 0.25, 2.0

    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    ps, pt = softmax([1.0, 0.0, -1.0]), softmax([0.0, 2.0, 0.0])
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
    ce = -math.log(math.exp(-1.0) / sum(math.exp(v) for v in (1.0, 0.0, -1.0)))
    loss = distill_token_loss(student, teacher, targets, alpha, t)
    assert loss[0, 0].item() == pytest.approx((1 - alpha) * ce + alpha * t * t * kl, rel=1e-6)
    assert loss[0, 1].item() == 0.0  # unsupervised position


def test_loss_is_zero_when_the_student_is_the_teacher_at_t1_alpha1() -> None:
    model = build(tiny_model_config()).eval()
    batch = make_batch(model, ["what color is the shape?", "is there a circle?"], ["red", "a big red circle"])
    out = model(**batch)
    loss = distill_loss_sum(out, model, batch, DistillConfig(teacher="x", alpha=1.0, temperature=1.0))
    assert abs(loss.item()) < 1e-6
    half = distill_loss_sum(out, model, batch, DistillConfig(teacher="x", alpha=0.5, temperature=1.0))
    assert half.item() == pytest.approx(0.5 * out.loss_sum.item(), rel=1e-5)


def test_a_teacher_with_another_tokenizer_is_refused() -> None:
    student = build(tiny_model_config())
    other = MMGPT.from_config(tiny_model_config(), train_texts=[t[::-1] for t in TEXTS])  # reversed: other merges
    check_same_tokenizer(student, build(tiny_model_config(), seed=1), "same")
    with pytest.raises(ValueError, match="must share the student's tokenizer"):
        check_same_tokenizer(student, other, "/teacher")


def test_bad_distill_settings_name_the_key(tmp_path: Path) -> None:
    from mmgpt.training.config import load_train_config

    for override, key in (("distill.alpha=1.5", "distill.alpha"), ("distill.temperature=0", "distill.temperature")):
        with pytest.raises(ConfigError, match=key):
            load_train_config("default", [override])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distill")
    data = make_jsonl(root)
    run_training(["--config", str(tiny_config(root, data, root / "teacher", max_steps=6))])
    return data, root / "teacher" / "model"


def _student(root: Path, data: Path, name: str, teacher: Path, **overrides) -> Path:
    return tiny_config(root, data, root / name, **STUDENT, distill={"teacher": str(teacher)}, **overrides)


@pytest.mark.slow
def test_distilled_training_resumes_exactly_and_two_processes_match_one(tmp_path: Path,
                                                                        teacher: tuple[Path, Path]) -> None:
    data, teacher_model = teacher
    cfg = _student(tmp_path, data, "full", teacher_model, max_steps=4)
    run_training(["--config", str(cfg)])
    plain = tiny_config(tmp_path, data, tmp_path / "plain", max_steps=4, **STUDENT)
    run_training(["--config", str(plain)])
    a, b = weights(tmp_path / "full"), weights(tmp_path / "plain")
    assert any(not torch.equal(a[k], b[k]) for k in a), "the teacher changed nothing"

    cfg = _student(tmp_path, data, "resumed", teacher_model, max_steps=4, stop_at_step=2)
    assert run_training(["--config", str(cfg)]) == {"stopped_at_step": 2}
    cfg = _student(tmp_path, data, "resumed", teacher_model, max_steps=4)
    run_training(["--config", str(cfg), "--resume", "latest"])
    resumed = weights(tmp_path / "resumed")
    for name in a:
        assert torch.equal(a[name], resumed[name]), name

    cfg = _student(tmp_path, data, "double", teacher_model, max_steps=4, batch_size=4)
    proc = launch_two_processes(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = weights(tmp_path / "double")
    for name in a:
        torch.testing.assert_close(a[name], double[name], rtol=1e-3, atol=1e-4, msg=f"{name} differs")
    history = json.loads((tmp_path / "full" / "history.json").read_text())["train"]
    assert len(history) == 4
