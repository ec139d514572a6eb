"""mmgpt compare-fusions on a tiny model: every run trains with the normal loop, resumes, and is not redone."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny import one_thread  # noqa: F401 (autouse fixture)

from mmgpt import compare, compare_report
from mmgpt.eval.significance import paired_bootstrap, seed_statistics

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


@pytest.mark.slow
def test_an_interrupted_comparison_resumes_and_finished_runs_are_not_redone(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cmp"
    argv = ["--config", str(config), "--fusions", "mlb", "film", "--steps", "4", "--seeds", "0",
            "--eval-points", "2", "--out", str(out)]
    # stopped at step 2 as a stop request leaves it: a checkpoint, no record; the comparison ends there
    stopped = compare.compare_fusions([*argv, "stop_at_step=2"])
    assert [r["fusion"] for r in stopped["runs"]] == ["prior"]  # the prior needs no training
    assert stopped["pending"] == ["mlb-seed0", "film-seed0", "blind-seed0"]
    assert "Not finished yet" in (out / "report.md").read_text()
    assert (out / "runs" / "mlb-seed0" / "checkpoints" / "step_2").is_dir()
    assert not (out / "runs" / "film-seed0").exists()

    report = compare.compare_fusions(argv)
    assert report["pending"] == []
    records = {r["fusion"]: r for r in report["runs"]}
    assert set(records) == {"mlb", "film", "blind", "prior"}
    blind = yaml.safe_load((out / "runs" / "blind-seed0" / "config.yaml").read_text())
    # the blind control: the config's own fusion, every image one constant image
    assert blind["data"]["blind"] is True and blind["model"]["fusion"]["type"] == "cross_attention"
    assert records["blind"]["architecture"] == "cross_attention"
    prior = records["prior"]
    hits = prior["per_question"]["easy_vqa_test"]
    assert len(hits) == 12 and prior["metrics"]["easy_vqa_test/vqa_exact_match"] == pytest.approx(100 * sum(hits) / 12)
    records = {f: records[f] for f in ("mlb", "film")}
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
    assert "| blind (cross_attention) | 1 |" in markdown and "| prior | - |" in markdown
    # one seed: the value alone, the interval column saying n=1, never a spread of zero
    tables = "\n".join(line for line in markdown.splitlines() if line.startswith("|"))
    assert "n=1, no interval" in tables and "±" not in tables
    assert "Wall time of the finished runs: setup" in markdown
    wall = json.loads((out / "report.json").read_text())["wall_seconds"]
    assert set(wall) == {"setup", "training", "evaluation"} and all(v > 0 for v in wall.values())
    assert all(set(r["wall_seconds"]) == set(wall) for r in report["runs"] if r["fusion"] != "prior")
    assert "gain over blind" in markdown and "p vs best" in markdown
    html = (out / "report.html").read_text()
    assert "<table id='main'>" in html and "<figure id='eval_curves'><svg" in html
    assert (out / "eval_curves.png").stat().st_size > 1000 and (out / "vqa.png").is_file()
    assert "![eval_curves](eval_curves.png)" in markdown

    # a third call trains nothing: every run has its record
    def no_training(*args: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("mmgpt.training.loop.build_run", no_training)
    again = compare.compare_fusions(argv)
    assert again["runs"] == report["runs"]


def test_seed_statistics_give_the_t_interval_and_nothing_for_one_seed() -> None:
    stats = seed_statistics([50.0, 70.0, 60.0, float("nan")])
    assert stats["mean"] == 60.0 and stats["std"] == pytest.approx(10.0) and stats["n"] == 3
    assert stats["ci95"] == pytest.approx(4.303 * 10.0 / math.sqrt(3), rel=1e-3)  # t(0.975, 2) = 4.303
    one = seed_statistics([3.0])
    assert one["mean"] == 3.0 and one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci95"])


def test_paired_bootstrap_separates_a_real_gain_from_noise() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, size=(3, 200))
    assert paired_bootstrap(base, base) == 1.0
    better = base.copy()
    better[:, :60] = 1  # right wherever base was wrong on the first 60 questions, under every seed
    assert paired_bootstrap(better, base) < 0.01
    flipped = base.copy()
    flipped[0, :3] = 1 - flipped[0, :3]  # a handful of changes on one seed
    assert paired_bootstrap(flipped, base) > 0.05  # 3 of 600 answers: not significant


def test_paired_bootstrap_counts_the_spread_between_seeds() -> None:
    rng = np.random.default_rng(0)
    base = (rng.random((3, 2000)) < 0.85).astype(int)
    other = base.copy()
    for seed, lost in ((0, 120), (2, 40)):  # base 6 and 2 points better under seeds 0 and 2
        other[seed, np.flatnonzero(other[seed] == 1)[:lost]] = 0
    other[1, np.flatnonzero(other[1] == 0)[:40]] = 1  # and 2 points worse under seed 1
    assert (base - other).mean(axis=1).tolist() == pytest.approx([0.06, -0.02, 0.02])
    # the questions alone call a gap that flips sign between runs significant; with the seeds it is not
    assert paired_bootstrap(base.reshape(1, -1), other.reshape(1, -1)) < 0.001
    assert paired_bootstrap(base, other) > 0.1


def test_table_has_controls_gain_interval_and_p_value() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, size=100)

    def run(fusion: str, seed: int | None, accuracy: float) -> dict:
        hits = [int(rng.random() < accuracy) for _ in truth]
        return {"fusion": fusion, "seed": seed, "steps": 4, "parameters": 1000, "fusion_parameters": 100,
                "seconds_per_step": 0.1, "metrics": {"s/vqa_exact_match": 100.0 * sum(hits) / len(hits)},
                "per_question_type": {}, "per_question": {"s": hits}, "eval_curve": [],
                "architecture": "film"}

    records = [run(f, seed, a) for f, a in (("film", 0.9), ("mlb", 0.5), ("blind", 0.3)) for seed in (0, 1, 2)]
    records.append(run("prior", None, 0.2))
    summary = compare_report.summarise(records)
    compare_report.compare_to_best(records, summary)
    assert summary["film"]["best"] and summary["mlb"]["p_vs_best"] < 0.01 and summary["mlb"]["paired_seeds"] == 3
    assert summary["prior"]["p_vs_best"] < 0.01 and summary["prior"]["paired_seeds"] == 3
    means = {f: summary[f]["columns"]["s/vqa_exact_match"]["mean"] for f in summary}
    gain = means["film"] - means["blind"]
    assert summary["film"]["gain_over_blind"] == pytest.approx(gain) and gain > 0
    markdown = compare_report.markdown_table(summary)
    film = next(line for line in markdown.splitlines() if line.startswith("| film |"))
    assert "| best |" in film and f"{gain:+.1f}" in film and " to " in film and "n=1" not in film
    assert "| blind (film) | 3 |" in markdown


def test_out_must_be_new_empty_or_an_earlier_comparison(config: Path, tmp_path: Path) -> None:
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "report.md").write_text("# my own report")
    (tmp_path / "notes.txt").write_text("keep me")
    for out, problem in ((mine, "is a folder that mmgpt did not write"), (tmp_path / "notes.txt", "is a file")):
        with pytest.raises(FileExistsError, match=f"{out} {problem}"):
            compare.compare_fusions(["--config", str(config), "--fusions", "mlb", "--steps", "1", "--seeds", "0",
                          "--eval-points", "1", "--out", str(out)])
    assert sorted(p.name for p in mine.iterdir()) == ["report.md"]
    assert (mine / "report.md").read_text() == "# my own report" and (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad, message", [
    (["--fusions", "sum"], "unknown fusion(s) sum; available: all, "),
    (["--steps", "0"], "--steps and --eval-points must be >= 1"),
    (["model.fusion.type=concat"], "model.fusion.type=concat: set by compare-fusions itself"),
    (["--match-params", "5000", "model.fusion.dim=64"], "model.fusion.dim=64: set by compare-fusions itself"),
    (["--match-params", "0"], "--match-params must be >= 1, got 0"),
])
def test_bad_arguments_name_the_fix(bad: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        compare.parse_args(bad)
    assert message in capsys.readouterr().err


def test_match_params_gives_every_fusion_a_width_within_five_percent(config: Path, tmp_path: Path) -> None:
    import dataclasses

    from mmgpt.config import FusionConfig
    from mmgpt.fusion import FUSIONS, build_fusion

    target = 30000
    args = compare.parse_args(["--config", str(config), "--match-params", str(target), "--out", str(tmp_path / "c")])
    widths = compare.matched_widths(args)
    assert set(widths) == set(FUSIONS) | {"blind"} and widths["blind"] == widths["cross_attention"]
    # the tiny config's encoders: lm_embeddings of the 32-wide generator, the CNN's last stage of 16
    base = FusionConfig(**CONFIG["model"]["fusion"])
    counts = {}
    for fusion in FUSIONS:
        built = build_fusion(dataclasses.replace(base, type=fusion, dim=widths[fusion]), 32, 16)
        counts[fusion] = sum(p.numel() for p in built.parameters())
        assert abs(counts[fusion] - target) <= 0.05 * target, (fusion, widths[fusion], counts[fusion])
        assert widths[fusion] % base.num_heads == 0
    # matching changes the widths: at one width the fusions' sizes differ by far more than 5%
    assert len(set(widths.values())) > 1
    args.widths = widths
    assert f"model.fusion.dim={widths['film']}" in compare.train_argv(args, "film", 0)
    assert "model.fusion.dim=" not in " ".join(compare.train_argv(compare.parse_args(["--out", "x"]), "film", 0))


def test_match_params_names_the_fusion_that_cannot_reach_the_target(config: Path, tmp_path: Path) -> None:
    from mmgpt.config import ConfigError

    out = tmp_path / "c"
    with pytest.raises(ConfigError, match=r"fusion 'cross_attention' cannot have 50 trainable parameters within 5%: "
                                          r"width 2 gives [\d,]+"):
        compare.compare_fusions(["--config", str(config), "--fusions", "cross_attention", "--match-params", "50",
                                 "--out", str(out)])
    assert not out.exists()  # refused before anything was written
