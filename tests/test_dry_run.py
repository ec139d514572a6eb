"""`mmgpt train --dry-run`: meta-device counts equal a real build's, per part, with freezing and LoRA."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from standins import causal_lm, vision_tower
from tiny import one_thread  # noqa: F401

from mmgpt import hf_models, lora
from mmgpt.cli import main as cli_main
from mmgpt.dry_run import build_meta_model, dry_run
from mmgpt.model import MMGPT
from mmgpt.training.config import load_train_config
from mmgpt.training.optim import COMPONENTS, apply_freezing


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dry")
    config = {
        "output_dir": str(root / "run"), "batch_size": 8,
        "model": {
            "image_encoder": {"type": "hf", "name": str(vision_tower("clip", root / "clip")), "freeze": True},
            "fusion": {"type": "concat", "dim": 32, "num_layers": 1, "num_heads": 2, "null_token": False},
            "generator": {"name": str(causal_lm("gpt2", root / "gpt2")), "lora": {"r": 4}},
            "text_encoder": {"max_length": 48},
        },
    }
    path = root / "dry.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_dry_run_counts_equal_a_real_build(config_file: Path) -> None:
    cfg = load_train_config(config_file)
    report = dry_run(cfg)
    model = MMGPT.from_config(cfg.model)
    apply_freezing(model)
    for part in COMPONENTS:
        params = list(getattr(model, part).parameters())
        assert report["parts"][part] == {"parameters": sum(p.numel() for p in params),
                                         "trainable": sum(p.numel() for p in params if p.requires_grad)}, part
    assert report["parameters"] == model.num_parameters()
    assert report["trainable"] == model.num_parameters(trainable_only=True)
    assert 0 < report["trainable_share"] < 1
    # frozen CLIP and the generator's base weights: only adapters, fusion and projector train
    assert report["parts"]["image_encoder"]["trainable"] == 0
    assert 0 < report["parts"]["generator"]["trainable"] < report["parts"]["generator"]["parameters"]


def test_the_meta_build_holds_no_weights_and_checkpointing_lowers_the_estimate(config_file: Path) -> None:
    cfg = load_train_config(config_file)
    assert all(p.is_meta for p in build_meta_model(cfg).parameters())
    plain = dry_run(cfg)["memory_gib"]
    cfg.gradient_checkpointing = True
    checkpointed = dry_run(cfg)["memory_gib"]
    assert checkpointed["activations"] < plain["activations"]
    assert checkpointed["weights"] == plain["weights"] > 0
    cfg.model.generator.freeze, cfg.frozen_dtype = True, "bf16"
    frozen = dry_run(cfg)["memory_gib"]
    assert frozen["weights"] < plain["weights"] and frozen["gradients"] < plain["gradients"]


def test_mmgpt_train_dry_run_prints_the_table_and_trains_nothing(config_file: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["train", "--config", str(config_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    total = dry_run(load_train_config(config_file))["parameters"]
    assert f"{total:,}" in out and "trainable share" in out and "estimated memory" in out
    assert not (config_file.parent / "run").exists()


def test_a_preset_with_hub_names_is_counted_from_configs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # stand-in for the hub: AutoConfig answers for the two names; no weights, no tokenizer are asked for
    from transformers import AutoConfig, LlamaConfig, SiglipVisionConfig

    configs = {"google/siglip-base-patch16-224": SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                                                     num_hidden_layers=1, num_attention_heads=2),
               "HuggingFaceTB/SmolLM2-135M": LlamaConfig(hidden_size=576, intermediate_size=64, num_hidden_layers=1,
                                                         num_attention_heads=9, num_key_value_heads=3,
                                                         vocab_size=49152)}
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda name, **kwargs: configs[name])
    monkeypatch.setattr(hf_models, "_hub_unreachable", lambda: "")
    report = dry_run(load_train_config("nanovlm222m"))
    assert report["parts"]["generator"]["trainable"] == report["parts"]["image_encoder"]["trainable"] == 0
    assert report["parts"]["generator"]["parameters"] > 49152 * 576
    assert report["trainable"] == report["parts"]["fusion"]["parameters"] + report["parts"]["projector"]["parameters"]
    assert torch.get_default_device().type == "cpu"


def test_a_later_stage_is_counted_from_its_init_from_folder(config_file: Path, tmp_path: Path) -> None:
    cfg = load_train_config(config_file, ["model.generator.lora.r=0"])
    MMGPT.from_config(cfg.model).save_pretrained(tmp_path / "stage1")
    later = load_train_config(config_file, [f"init_from={tmp_path / 'stage1'}", "model.generator.lora.r=2",
                                            "model.fusion.freeze=true"])
    report = dry_run(later)
    model = MMGPT.from_pretrained(tmp_path / "stage1")
    lora.add_adapters(model, later.model)
    model.config = later.model
    apply_freezing(model)
    assert report["parameters"] == model.num_parameters()
    assert report["trainable"] == model.num_parameters(trainable_only=True)
    assert report["parts"]["fusion"]["trainable"] == 0 < report["parts"]["generator"]["trainable"]


@pytest.mark.slow
def test_offline_a_hub_preset_fails_in_one_line(tmp_path: Path) -> None:
    # before: half a minute of retries, each warned twice, then transformers' generic connection error
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "mmgpt.cli", "train", "--config", "nanovlm222m", "--dry-run"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mmgpt train: error: model.generator.name 'HuggingFaceTB/SmolLM2-135M': "
                                  "cannot fetch config.json from the Hugging Face hub (HF_HUB_OFFLINE is set)")
    assert proc.stderr.count("\n") == 1 and "--local-dir DIR) and set model.generator.name" in proc.stderr
