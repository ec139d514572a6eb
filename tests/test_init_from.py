"""init_from: a run starts from a saved model folder's config and weights (e.g. a pruned model's recovery)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train import make_jsonl, tiny_config, weights
from tiny import one_thread  # noqa: F401 (autouse fixture)

from mmgpt.compress.prune import prune
from mmgpt.config import ConfigError
from mmgpt.training.config import load_train_config
from mmgpt.training.loop import run_training

ZERO_LR = {name: 0.0 for name in ("text_encoder", "image_encoder", "fusion", "projector", "generator")}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("init_from")
    data = make_jsonl(root)
    run_training(["--config", str(tiny_config(root, data, root / "source", max_steps=3))])
    prune(root / "source" / "model", root / "pruned", 0.5)
    return root, data, root / "pruned"


@pytest.mark.slow
def test_the_model_section_comes_from_the_folder(pruned: tuple[Path, Path, Path]) -> None:
    root, _, folder = pruned
    cfg = load_train_config("default", [f"init_from={folder}", "model.generator.freeze=true"])
    assert cfg.model.generator.kwargs["intermediate_size"] == 32
    assert cfg.model.fusion.dim == 32 and cfg.model.generator.freeze
    # repeating the folder's own value is no conflict
    load_train_config("default", [f"init_from={folder}", "model.fusion.dim=32"])
    with pytest.raises(ConfigError, match="override 'model.fusion.dim' conflicts with init_from"):
        load_train_config("default", [f"init_from={folder}", "model.fusion.dim=64"])
    with pytest.raises(ConfigError, match="is not a model folder"):
        load_train_config("default", [f"init_from={root}"])


@pytest.mark.slow
def test_recovery_training_starts_from_the_folders_weights(pruned: tuple[Path, Path, Path]) -> None:
    root, data, folder = pruned
    # with every learning rate zero the run ends where it started: exactly the folder's weights
    config = tiny_config(root, data, root / "frozen", max_steps=2, init_from=str(folder),
                         **{"optim.lr_multipliers": ZERO_LR})
    run_training(["--config", str(config)])
    start, end = load_file(str(folder / "model.safetensors")), weights(root / "frozen")
    assert start.keys() == end.keys()
    for name in start:
        assert torch.equal(start[name], end[name]), name
    saved = yaml.safe_load((root / "frozen" / "config.yaml").read_text())
    assert saved["init_from"] == str(folder)
    assert saved["model"]["generator"]["kwargs"]["intermediate_size"] == 32

    config = tiny_config(root, data, root / "recovered", max_steps=3, init_from=str(folder))
    run_training(["--config", str(config)])
    end = weights(root / "recovered")
    assert end["generator.model.layers.0.mlp.up_proj.weight"].shape == (32, 32)
    assert any(not torch.equal(start[k], end[k]) for k in start)
    model_config = json.loads((root / "recovered" / "model" / "config.json").read_text())["model"]
    assert model_config["generator"]["kwargs"]["intermediate_size"] == 32
