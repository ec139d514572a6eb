"""A resumed run keeps its own config; `base:` chains, config-relative data paths, --print-config, output folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_train import make_jsonl, tiny_config
from tiny import one_thread  # noqa: F401  (autouse fixture)

from mmgpt.config import ConfigError
from mmgpt.training.config import RESUMABLE_KEYS
from mmgpt.training.loop import main, parse_args


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_jsonl(tmp_path_factory.mktemp("data"))


def test_resume_latest_continues_with_the_runs_own_config(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(tmp_path, data, out, max_steps=5)
    started = ["optim.lr=5e-3", "model.fusion.type=product", "batch_size=4"]
    assert main(["--config", str(config), *started, "stop_at_step=2"]) == {"stopped_at_step": 2}
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
    result = main(["--config", str(config), "--resume", "latest", "max_steps=6", "log_every=2"])
    assert result["step"] == 6
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["batch_size"], saved["max_steps"], saved["model"]["fusion"]["type"]) == (4, 6, "product")
    assert json.loads((out / "model" / "config.json").read_text())["model"]["fusion"]["type"] == "product"
