"""A resumed run keeps its own config; `base:` chains, config-relative data paths, --print-config, output folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_train import make_jsonl, tiny_config
from tiny import one_thread  # noqa: F401  (autouse fixture)

from mmgpt.config import ConfigError, to_dict
from mmgpt.training.config import RESUMABLE_KEYS, TrainConfig, load_train_config
from mmgpt.training.loop import parse_args, run_training


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_jsonl(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_resume_latest_continues_with_the_runs_own_config(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(tmp_path, data, out, max_steps=5)
    started = ["optim.lr=5e-3", "model.fusion.type=product", "batch_size=4"]
    assert run_training(["--config", str(config), *started, "stop_at_step=2"]) == {"stopped_at_step": 2}
    # the command line names only the config that locates the run, as `train.py --resume latest` does
    cfg, _ = parse_args(["--config", str(config), "--resume", "latest"])
    assert (cfg.optim.lr, cfg.model.fusion.type, cfg.batch_size) == (5e-3, "product", 4)
    with pytest.raises(ConfigError) as info:
        parse_args(["--config", str(config), "--resume", "latest", "batch_size=16"])
    assert "'batch_size'" in str(info.value) and all(key in str(info.value) for key in RESUMABLE_KEYS)
    with pytest.raises(ConfigError, match="'model.fusion.type'"):
        parse_args(["--config", str(config), "--resume", "latest", "model.fusion.type=cross_attention"])
    # repeating a setting the run already has changes nothing, so it is accepted
    assert parse_args(["--config", str(config), "--resume", "latest", "batch_size=4"])[0] == cfg
    result = run_training(["--config", str(config), "--resume", "latest", "max_steps=6", "log_every=2"])
    assert result["step"] == 6
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["batch_size"], saved["max_steps"], saved["model"]["fusion"]["type"]) == (4, 6, "product")
    assert json.loads((out / "model" / "config.json").read_text())["model"]["fusion"]["type"] == "product"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chains_merge_deeply_and_the_files_keys_win(tmp_path: Path) -> None:
    write(tmp_path / "shared" / "gpu.yaml", "base: gpu200m\nmodel:\n  fusion:\n    num_layers: 1\nmax_steps: 50\n")
    mine = write(tmp_path / "mine.yaml", "base: shared/gpu.yaml\nmax_steps: 7\nmodel:\n  fusion:\n    num_heads: 3\n")
    cfg = load_train_config(mine)
    gpu = load_train_config("gpu200m")
    assert (cfg.batch_size, cfg.mixed_precision, cfg.max_steps) == (gpu.batch_size, "bf16", 7)
    # a section merges key by key down the chain: the preset's width, the middle file's layers, this file's heads
    assert (cfg.model.fusion.dim, cfg.model.fusion.num_layers, cfg.model.fusion.num_heads) == (576, 1, 3)
    assert cfg.model.image_encoder.name == gpu.model.image_encoder.name
    assert load_train_config(write(tmp_path / "plain.yaml", "base: default\n")).model == TrainConfig().model
    # a kwargs mapping is one model's settings: a file's own replaces its base's whole
    gpt2 = write(tmp_path / "gpt2.yaml",
                 "base: default\nmodel:\n  generator:\n    kwargs: {model_type: gpt2, n_embd: 32}\n")
    assert load_train_config(gpt2).model.generator.kwargs == {"model_type": "gpt2", "n_embd": 32}


def test_a_base_cycle_is_refused_naming_the_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "base: b.yaml\nbatch_size: 2\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"loops: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_train_config(a)
    with pytest.raises(ConfigError, match="base"):
        load_train_config(write(tmp_path / "bad.yaml", "base: [default]\n"))


def test_data_paths_are_relative_to_the_config_that_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "base" / "common.yaml", "data:\n  eval:\n    - {format: jsonl, path: held_out.jsonl}\n")
    mine = write(tmp_path / "project" / "run.yaml",
                 "base: ../base/common.yaml\ndata:\n  train:\n"
                 "    - {format: coco_captions, path: ann/train.json, images: img/, weight: 2.0}\n"
                 f"    - {{format: jsonl, path: {tmp_path / 'elsewhere.jsonl'}}}\n")
    monkeypatch.chdir(tmp_path / "base")
    cfg = load_train_config(mine)
    coco, absolute = cfg.data.train
    assert Path(coco.path) == tmp_path / "project" / "ann" / "train.json"
    assert Path(coco.images) == tmp_path / "project" / "img"
    assert coco.annotations == "" and Path(absolute.path) == tmp_path / "elsewhere.jsonl"
    assert Path(cfg.data.eval[0].path) == tmp_path / "base" / "held_out.jsonl"


def test_print_config_prints_the_resolved_yaml_and_trains_nothing(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from mmgpt.cli import main as cli

    mine = write(tmp_path / "mine.yaml", f"base: default\noutput_dir: {tmp_path / 'run'}\nmax_steps: 9\n")
    run_training(["--print-config", "--config", str(mine), "batch_size=3"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["max_steps"], printed["batch_size"]) == (9, 3) and "base" not in printed
    assert printed["model"] == to_dict(TrainConfig())["model"]
    assert cli(["train", "--print-config", "--config", str(mine)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["max_steps"] == 9
    assert not (tmp_path / "run").exists()


def test_each_config_writes_to_its_own_folder_by_default(tmp_path: Path) -> None:
    assert load_train_config("default").output_dir == "runs/default"
    for name in ("gpu200m", "nanovlm222m"):
        assert load_train_config(name).output_dir == f"runs/{name}"
    mine = write(tmp_path / "captions_small.yaml", "batch_size: 4\n")
    assert load_train_config(mine).output_dir == "runs/captions_small"
    # a base's folder is the base's own: inheriting it would mix two runs in one folder
    child = write(tmp_path / "child.yaml", "base: gpu200m\n")
    assert load_train_config(child).output_dir == "runs/child"
    set_here = write(tmp_path / "named.yaml", "base: child.yaml\noutput_dir: /tmp/elsewhere\n")
    assert load_train_config(set_here).output_dir == "/tmp/elsewhere"
    assert load_train_config(mine, ["output_dir=runs/x"]).output_dir == "runs/x"
