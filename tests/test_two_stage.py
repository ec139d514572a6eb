"""The two-stage recipe end to end on stand-ins: align (fusion + projector), then fine-tune with LoRA from init_from."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from standins import causal_lm, vision_tower
from test_train import make_jsonl
from tiny import one_thread  # noqa: F401

from mmgpt import lora
from mmgpt.model import MMGPT
from mmgpt.training.loop import build_run, finish, parse_args, run_training, train
from mmgpt.training.memory import cast_frozen
from mmgpt.training.optim import apply_freezing


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("two_stage")
    return {"root": root, "data": make_jsonl(root / "data", n=16), "siglip": vision_tower("siglip", root / "siglip"),
            "llama": causal_lm("llama", root / "llama")}


def write_config(setup: dict, name: str, output: Path, **top: object) -> Path:
    """A seconds-long run of the nanoVLM-shaped recipe on stand-ins; `top` adds or replaces top-level keys."""
    config = {
        "output_dir": str(output), "seed": 0, "batch_size": 4, "max_steps": 3, "eval_every": 0, "save_every": 0,
        "log_every": 1, "cpu_threads": 1,
        "model": {
            "text_encoder": {"type": "lm_embeddings", "max_length": 48},
            "image_encoder": {"type": "hf", "name": str(setup["siglip"]), "freeze": True},
            "fusion": {"type": "concat", "dim": 32, "num_layers": 1, "num_heads": 2, "null_token": False},
            "generator": {"name": str(setup["llama"]), "freeze": True},
            "max_answer_length": 8,
        },
        "data": {"train": [{"format": "jsonl", "path": str(setup["data"]), "name": "train"}],
                 "eval": [{"format": "jsonl", "path": str(setup["data"]), "name": "eval", "max_examples": 4}]},
        "optim": {"lr": 1e-2, "warmup_steps": 0},
    }
    for key, value in top.items():
        config[key] = value
    path = setup["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_and_compare(config: Path) -> tuple[dict, dict, object]:
    """Train `config` -> (weights before, weights after, the run), after saving its model."""
    cfg, args = parse_args(["--config", str(config)])
    run = build_run(cfg, args)
    before = {k: v.clone() for k, v in run.raw_model.state_dict().items()}
    assert train(run)
    after = {k: v.clone() for k, v in run.raw_model.state_dict().items()}
    finish(run)
    return before, after, run


def changed(before: dict, after: dict) -> set[str]:
    """The components (or 'lora' for adapters) whose tensors changed, and every frozen one checked bit for bit."""
    parts = set()
    for key, value in before.items():
        if not torch.equal(value, after[key]):
            parts.add("lora" if lora.is_adapter(key) else key.split(".", 1)[0])
    return parts


def test_two_stages_train_only_what_each_stage_names(setup: dict) -> None:
    stage1 = setup["root"] / "stage1"
    before, after, run = run_and_compare(write_config(setup, "stage1", stage1))
    assert changed(before, after) == {"fusion", "projector"}
    # the fused AdamW kernel, on CPU too (0.4x the default foreach step's time on the main job's weights)
    assert run.optimizer.optimizer.defaults["fused"] is True
    # the frozen parts are still exactly the pretrained stand-ins
    saved = load_file(stage1 / "model" / "model.safetensors")
    pretrained = load_file(setup["llama"] / "model.safetensors")
    for key, value in pretrained.items():
        if f"generator.{key}" in saved:
            assert torch.equal(saved[f"generator.{key}"], value), key

    stage2 = setup["root"] / "stage2"
    model = {"generator": {"freeze": False, "lora": {"r": 4, "alpha": 8.0, "target_modules": "auto"}}}
    config2 = write_config(setup, "stage2", stage2, init_from=str(stage1 / "model"), model=model)
    before2, after2, run2 = run_and_compare(config2)
    # stage 2 starts from stage 1's weights
    for key, value in load_file(stage1 / "model" / "model.safetensors").items():
        assert torch.equal(before2[key.replace("_proj.weight", "_proj.base_layer.weight")
                                   if key.replace("_proj.weight", "_proj.base_layer.weight") in before2 else key],
                           value), key
    assert changed(before2, after2) == {"lora", "fusion", "projector"}
    assert any(lora.is_adapter(k) for k in after2)

    # the saved model has the adapters merged, loads without peft and answers as the trained one did
    merged = MMGPT.from_pretrained(stage2 / "model")
    assert not lora.has_adapters(merged)
    # (the saved weights are the run's eval model: its EMA average when optim.ema_decay > 0)
    trained = run2.eval_model().eval()
    batch = trained.processor(["what color is the square?"], [torch.zeros(3, 32, 32)], ["red"])
    with torch.no_grad():
        assert (trained(**batch).logits - merged(**batch).logits).abs().max() <= 1e-5
    card = (stage2 / "model" / "README.md").read_text()
    assert "eval/loss" in card and "LoRA r=4" not in card  # merged: no adapters left in the saved config


def test_a_lora_stage_resumes_exactly(setup: dict) -> None:
    stage1 = setup["root"] / "resume_base"
    run_training(["--config", str(write_config(setup, "resume_base", stage1, max_steps=1))])
    model = {"generator": {"freeze": False, "lora": {"r": 2}}}
    full = setup["root"] / "full"
    run_training(["--config", str(write_config(setup, "full", full, init_from=str(stage1 / "model"), model=model,
                                       max_steps=4))])
    resumed = setup["root"] / "resumed"
    config = write_config(setup, "resumed", resumed, init_from=str(stage1 / "model"), model=model, max_steps=4,
                          stop_at_step=2)
    assert run_training(["--config", str(config)]) == {"stopped_at_step": 2}
    run_training(["--config", str(write_config(setup, "resumed", resumed, init_from=str(stage1 / "model"), model=model,
                                       max_steps=4)), "--resume", "latest"])
    one, two = (load_file(folder / "model" / "model.safetensors") for folder in (full, resumed))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key


def test_frozen_parts_in_bf16_still_train_the_rest(setup: dict) -> None:
    cfg, _ = parse_args(["--config", str(write_config(setup, "bf16", setup["root"] / "bf16"))])
    model = MMGPT.from_config(cfg.model)
    frozen = apply_freezing(model)
    assert cast_frozen(model, frozen, "bf16") == ["image_encoder", "generator"]
    assert next(model.generator.parameters()).dtype == torch.bfloat16
    assert next(model.fusion.parameters()).dtype == torch.float32
    batch = model.processor(["what color is the square?"], [torch.zeros(3, 32, 32)], ["red"])
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.projector.parameters())
