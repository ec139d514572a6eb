"""mmgpt compare-fusions on a tiny model: every run trains with the normal loop, resumes, and is not redone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny import one_thread  # noqa: F401 (autouse fixture)

from mmgpt import compare

CONFIG = {
    "batch_size": 8, "log_every": 1, "keep_checkpoints": 1,
    "model": {
        "text_encoder": {"type": "lm_embeddings", "max_length": 16},
        "image_encoder": {"type": "timm", "name": "mmgpt_tiny_cnn",
                          "kwargs": {"img_size": 32, "widths": [8, 16], "stem_width": 8}},
        "fusion": {"type": "cross_attention", "dim": 16, "num_layers": 1, "num_heads": 2},
        "generator": {"kwargs": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                 "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                                 "max_position_embeddings": 64}},
        "tokenizer": {"vocab_size": 300}, "max_answer_length": 8,
    },
    "data": {
        "train": [{"format": "easy_vqa", "split": "train", "max_examples": 32, "name": "easy_vqa"}],
        "eval": [{"format": "easy_vqa", "split": "test", "max_examples": 12, "name": "easy_vqa_test"}],
        "eval_max_examples": 12,
    },
    "optim": {"lr": 3e-3, "warmup_steps": 1},
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_an_interrupted_comparison_resumes_and_finished_runs_are_not_redone(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cmp"
    argv = ["--config", str(config), "--fusions", "mlb", "film", "--steps", "4", "--seeds", "0",
            "--eval-points", "2", "--out", str(out)]
    # stopped at step 2 as a stop request leaves it: a checkpoint, no record; the comparison ends there
    stopped = compare.main([*argv, "stop_at_step=2"])
    assert stopped["runs"] == [] and stopped["pending"] == ["mlb-seed0", "film-seed0"]
    assert "Not finished yet" in (out / "report.md").read_text()
    assert (out / "runs" / "mlb-seed0" / "checkpoints" / "step_2").is_dir()
    assert not (out / "runs" / "film-seed0").exists()

    report = compare.main(argv)
    assert report["pending"] == []
    records = {r["fusion"]: r for r in report["runs"]}
    assert set(records) == {"mlb", "film"}
    assert records["mlb"]["resumed_from_step"] == 2 and records["film"]["resumed_from_step"] == 0
    for fusion, record in records.items():
        assert record["steps"] == 4
        saved = yaml.safe_load((out / "runs" / f"{fusion}-seed0" / "config.yaml").read_text())
        # only the fusion differs between the runs
        assert saved["model"]["fusion"]["type"] == fusion and saved["max_steps"] == 4
        assert record["parameters"] > record["fusion_parameters"] > 0 and record["seconds_per_step"] > 0
        assert 0.0 <= record["metrics"]["easy_vqa_test/vqa_exact_match"] <= 100.0
        # question types of easy-VQA, each an exact match in percent
        types = record["per_question_type"]["easy_vqa_test"]
        assert types and all(0.0 <= v <= 100.0 for v in types.values())
        assert [step for step, _ in record["eval_curve"]] == [2]
    # the film fusion has its modulation and attention on top of the shared projections
    assert records["film"]["fusion_parameters"] > records["mlb"]["fusion_parameters"]
    summary = json.loads((out / "report.json").read_text())["summary"]
    # the curve: the periodic evaluation at step 2, then the final one at step 4
    assert [step for step, _ in summary["film"]["eval_curve"]] == [2, 4]
    assert summary["mlb"]["columns"]["easy_vqa_test/vqa_exact_match"]["n"] == 1
    markdown = (out / "report.md").read_text()
    assert "| mlb | 1 |" in markdown and "| film | 1 |" in markdown and "Not finished" not in markdown
    html = (out / "report.html").read_text()
    assert "<table>" in html and "eval_curves.png" in html
    assert (out / "eval_curves.png").stat().st_size > 1000 and (out / "vqa.png").is_file()

    # a third call trains nothing: every run has its record
    def no_training(*args: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("mmgpt.training.loop.build_run", no_training)
    again = compare.main(argv)
    assert again["runs"] == report["runs"]


def test_mean_and_std_over_seeds() -> None:
    stats = compare.mean_std([50.0, 70.0, float("nan")])
    assert stats == {"mean": 60.0, "std": pytest.approx(14.1421, abs=1e-3), "n": 2}
    assert compare.mean_std([3.0])["std"] == 0.0


def test_out_must_be_new_empty_or_an_earlier_comparison(config: Path, tmp_path: Path) -> None:
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "report.md").write_text("# my own report")
    (tmp_path / "notes.txt").write_text("keep me")
    for out, problem in ((mine, "is a folder that mmgpt did not write"), (tmp_path / "notes.txt", "is a file")):
        with pytest.raises(FileExistsError, match=f"{out} {problem}"):
            compare.main(["--config", str(config), "--fusions", "mlb", "--steps", "1", "--seeds", "0",
                          "--eval-points", "1", "--out", str(out)])
    assert sorted(p.name for p in mine.iterdir()) == ["report.md"]
    assert (mine / "report.md").read_text() == "# my own report" and (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad, message", [
    (["--fusions", "sum"], "unknown fusion(s) sum; available: all, "),
    (["--steps", "0"], "--steps and --eval-points must be >= 1"),
    (["model.fusion.type=concat"], "model.fusion.type=concat: set by compare-fusions itself"),
])
def test_bad_arguments_name_the_fix(bad: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        compare.parse_args(bad)
    assert message in capsys.readouterr().err
