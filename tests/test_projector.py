"""The projector section (model.projector) and the config keys it and the fusion were renamed from."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from tiny import TEXTS, build, make_batch, tiny_config
from torch import nn

from mmgpt.config import (
    ConfigError,
    ModelConfig,
    ProjectorConfig,
    from_dict,
    load_config,
    to_dict,
)
from mmgpt.model import MMGPT
from mmgpt.training.loop import parse_args
from mmgpt.training.optim import apply_freezing


def test_projector_types_and_hidden_size() -> None:
    config = tiny_config()
    config.projector = ProjectorConfig(type="mlp", hidden_size=24)
    mlp = build(config).projector
    assert [m.weight.shape for m in mlp if isinstance(m, nn.Linear)] == [(24, 16), (32, 24)]
    config.projector = ProjectorConfig(type="linear")
    model = build(config)
    assert isinstance(model.projector, nn.Linear) and model.projector.weight.shape == (32, 16)
    batch = make_batch(model, TEXTS[:2], TEXTS[2:4])
    assert torch.isfinite(model(**batch).loss)
    with pytest.raises(ConfigError, match="unknown model.projector.type 'mlp3'; available: mlp, linear"):
        ProjectorConfig(type="mlp3")
    with pytest.raises(ConfigError, match="model.projector.hidden_size must be >= 0"):
        ProjectorConfig(hidden_size=-1)


def test_projector_freeze_freezes_only_the_projector() -> None:
    config = tiny_config()
    config.projector.freeze = True
    model = build(config)
    frozen = apply_freezing(model)
    assert frozen["projector"] and not frozen["fusion"] and not frozen["generator"]
    assert not any(p.requires_grad for p in model.projector.parameters())
    assert all(p.requires_grad for p in model.fusion.parameters())


OLD_SPELLINGS = {"fusion": {"name": "product"}, "generator": {"hf_config": {"model_type": "gpt2", "n_embd": 32},
                                                              "freeze_projector": True},
                 "text_encoder": {"hf_config": {"model_type": "bert"}}}


def test_old_key_spellings_are_read_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning) as caught:
        config = from_dict(ModelConfig, json.loads(json.dumps(OLD_SPELLINGS)), prefix="model")
    messages = " | ".join(str(w.message) for w in caught)
    for old, new in [("model.fusion.name", "model.fusion.type"),
                     ("model.generator.hf_config", "model.generator.kwargs"),
                     ("model.generator.freeze_projector", "model.projector.freeze"),
                     ("model.text_encoder.hf_config", "model.text_encoder.kwargs")]:
        assert f"'{old}' is now '{new}'" in messages
    assert config.fusion.type == "product" and config.projector.freeze is True
    assert config.generator.kwargs == {"model_type": "gpt2", "n_embd": 32}
    assert config.text_encoder.kwargs == {"model_type": "bert"}
    # the same from a YAML file, and the new spelling gives no warning
    path = tmp_path / "old.yaml"
    path.write_text("fusion: {name: concat, dim: 8}\n")
    with pytest.warns(FutureWarning, match="'fusion.name' is now 'fusion.type'"):
        assert load_config(ModelConfig, path).fusion.type == "concat"
    path.write_text("fusion: {type: concat, dim: 8}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(ModelConfig, path).fusion.type == "concat"
    # an override in the old spelling edits the default mapping under its new key, as the new spelling would
    with pytest.warns(FutureWarning, match="'model.generator.hf_config' is now 'model.generator.kwargs'"):
        train, _ = parse_args(["--config", "default", "model.generator.hf_config.num_hidden_layers=3"])
    assert train.model.generator.kwargs == {**ModelConfig().generator.kwargs, "num_hidden_layers": 3}
    # an old spelling in the file and a new one on the command line meet under the new key
    path.write_text("generator: {hf_config: {model_type: gpt2, n_embd: 32}}\n")
    with pytest.warns(FutureWarning):
        config = load_config(ModelConfig, path, ["generator.kwargs.n_layer=1"])
    assert config.generator.kwargs == {"model_type": "gpt2", "n_embd": 32, "n_layer": 1}
    path.write_text("fusion: {name: concat, type: product}\n")
    with pytest.raises(ConfigError,
                       match="'fusion.name' and 'fusion.type' are the same setting: keep only 'fusion.type'"):
        load_config(ModelConfig, path)


def test_a_model_folder_saved_with_the_old_spellings_loads(tmp_path: Path) -> None:
    model = build(tiny_config(fusion="product"))
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    saved = data["model"]
    saved["fusion"]["name"] = saved["fusion"].pop("type")
    saved["generator"]["hf_config"] = saved["generator"].pop("kwargs")
    saved["generator"]["freeze_projector"] = saved.pop("projector")["freeze"]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.warns(FutureWarning):
        loaded = MMGPT.from_pretrained(folder)
    assert to_dict(loaded.config) == to_dict(model.config)
    batch = make_batch(model, TEXTS[:2], TEXTS[2:4])
    model.eval()
    loaded.eval()
    assert torch.equal(model(**batch).logits, loaded(**batch).logits)
