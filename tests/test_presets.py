"""Presets in configs/: default.yaml is the dataclass defaults, every preset parses, `--config NAME` finds them."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import torch

from mmgpt.config import ConfigError, from_dict, load_yaml, to_dict
from mmgpt.model import MMGPT
from mmgpt.training.config import (
    TrainConfig,
    config_path,
    default_config_path,
    load_train_config,
    presets,
)
from mmgpt.training.loop import parse_args


def missing_keys(cls: type, data: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields of dataclass `cls` (and its dataclass sections) that `data` does not set."""
    missing = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if field.name not in data:
            missing.append(key)
        elif dataclasses.is_dataclass(hints[field.name]):
            missing += missing_keys(hints[field.name], data[field.name], f"{key}.")
    return missing


def test_default_yaml_is_complete_and_equals_the_dataclass_defaults() -> None:
    data = load_yaml(default_config_path())
    assert missing_keys(TrainConfig, data) == [], "configs/default.yaml must list every setting"
    assert from_dict(TrainConfig, data) == TrainConfig(), "configs/default.yaml and the dataclass defaults differ"


def test_the_default_run_keeps_its_settings() -> None:
    config = to_dict(load_train_config("default"))
    expected = {
        ("max_steps",): 3000, ("batch_size",): 128, ("eval_every",): 1000, ("save_every",): 1000,
        ("optim", "ema_decay"): 0.999, ("model", "tokenizer", "lowercase"): True,
        ("model", "image_encoder", "name"): "mmgpt_tiny_cnn_s2d",
        ("model", "text_encoder", "max_length"): 32, ("model", "max_answer_length"): 32,
        ("model", "fusion", "num_layers"): 2, ("model", "fusion", "null_token"): True,
        ("model", "generator", "kwargs", "intermediate_size"): 384,
        ("model", "generator", "kwargs", "max_position_embeddings"): 128,
        ("model", "generator", "kwargs", "initializer_range"): 0.12,
        ("optim", "lr"): 4e-4, ("optim", "warmup_steps"): 100,
    }
    for path, value in expected.items():
        node = config
        for key in path:
            node = node[key]
        assert node == value, (".".join(path), node)
    train = config["data"]["train"]
    assert [(d["format"], d["weight"], d["augment"]) for d in train] == [
        ("easy_vqa", 3.0, ["hflip"]), ("shapes_captions", 1.0, [])]


def test_every_preset_parses_into_a_valid_config() -> None:
    assert presets() == ["default", "gpu200m", "highres_shapes", "highres_shapes_pretrained", "highres_shapes_tiles",
                         "highres_shapes_tiles_pretrained", "llava", "llava_lora", "multi_image_shapes",
                         "multi_image_shapes_pretrained", "nanovlm222m", "nanovlm222m_sft", "nanovlm222m_tiles",
                         "qwen2", "qwen2_lora"]
    stage_two = {"llava_lora": "llava", "nanovlm222m_sft": "nanovlm222m", "qwen2_lora": "qwen2"}
    for name in presets():
        # a second stage starts from the first stage's model, which a fresh clone does not have yet
        overrides = ["init_from="] if name in stage_two else []
        assert isinstance(load_train_config(name, overrides), TrainConfig), name
    for second, first in stage_two.items():
        assert load_yaml(config_path(second))["init_from"] == f"runs/{first}/model"
        assert load_train_config(first).output_dir == f"runs/{first}"
    nanovlm = load_train_config("nanovlm222m").model
    assert (nanovlm.image_encoder.type, nanovlm.image_encoder.name) == ("hf", "google/siglip-base-patch16-224")
    assert nanovlm.generator.name == "HuggingFaceTB/SmolLM2-135M"


def test_gpu200m_builds_a_model_of_about_200m_parameters() -> None:
    config = load_train_config("gpu200m")
    assert (config.batch_size, config.mixed_precision) == (64, "bf16")
    # on the meta device nothing is allocated, so the full-size model costs no memory
    with torch.device("meta"):
        model = MMGPT.from_config(config.model, train_texts=["what color is the shape?", "red", "Describe the image."])
    assert next(model.parameters()).is_meta
    assert 200e6 <= model.num_parameters() <= 260e6, model.num_parameters()


def test_config_takes_a_preset_name_or_a_path(tmp_path: Path) -> None:
    config, _ = parse_args(["--config", "gpu200m", "batch_size=8"])
    assert config.model.image_encoder.name == "vit_base_patch16_224" and config.batch_size == 8
    assert parse_args([])[0] == TrainConfig()
    path = tmp_path / "gpu200m"
    path.write_text("batch_size: 3\n")
    assert config_path(str(path)) == path, "an existing file wins over a preset's name"
    with pytest.raises(ConfigError, match="unknown config preset 'gpu2000m'; available: default, gpu200m, "):
        parse_args(["--config", "gpu2000m"])
    with pytest.raises(ConfigError, match="config file not found"):
        parse_args(["--config", str(tmp_path / "absent.yaml")])
