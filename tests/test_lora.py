"""LoRA through peft on stand-ins of hub models: targets per architecture, what trains, merged and adapter saves."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from standins import causal_lm, vision_tower
from tiny import TEXTS, one_thread  # noqa: F401

from mmgpt import lora
from mmgpt.config import FusionConfig, GeneratorConfig, ImageEncoderConfig, LoraConfig, ModelConfig, TextEncoderConfig
from mmgpt.model import MMGPT
from mmgpt.training.memory import enable_gradient_checkpointing
from mmgpt.training.optim import apply_freezing


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stand-in folders named like hub models: siglip, clip, llama, qwen2, gpt2."""
    root = tmp_path_factory.mktemp("hub")
    folders = {kind: vision_tower(kind, root / kind) for kind in ("siglip", "clip")}
    folders.update({kind: causal_lm(kind, root / kind) for kind in ("llama", "qwen2", "gpt2")})
    return folders


def config(hub: dict[str, Path], generator: str = "llama", vision: str = "siglip", generator_lora: int = 4,
           vision_lora: int = 0, **changes: object) -> ModelConfig:
    """A concat-fused model of stand-ins with LoRA on the generator (and on the vision tower)."""
    cfg = ModelConfig(
        text_encoder=TextEncoderConfig(max_length=64),
        image_encoder=ImageEncoderConfig(type="hf", name=str(hub[vision]), freeze=True,
                                         lora=LoraConfig(r=vision_lora)),
        fusion=FusionConfig(type="concat", dim=32, num_layers=1, num_heads=2, null_token=False),
        generator=GeneratorConfig(name=str(hub[generator]), lora=LoraConfig(r=generator_lora, alpha=8.0)),
        max_answer_length=12,
    )
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def randomized(model: MMGPT) -> MMGPT:
    """lora_B starts at zero (the adapter is a no-op): random values make merging matter."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return model.eval()


def batch(model: MMGPT) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 32, 32, generator=g) for _ in range(2)]
    return model.processor(["what color is the shape?", "is there a circle?"], images, ["red", "no"])


def adapted(model: MMGPT, part: str) -> set[str]:
    """The short names of the modules that carry adapters in one part."""
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters()
            if name.startswith(part + ".") and ".lora_A" in name}


@pytest.mark.parametrize(("generator", "expected"), [("llama", {"q_proj", "k_proj", "v_proj", "o_proj"}),
                                                     ("qwen2", {"q_proj", "k_proj", "v_proj", "o_proj"}),
                                                     ("gpt2", {"c_attn", "c_proj"})])
def test_auto_targets_the_attention_projections_of_each_architecture(hub: dict, generator: str, expected: set) -> None:
    model = MMGPT.from_config(config(hub, generator, vision="clip", vision_lora=2))
    assert adapted(model, "generator") == expected
    assert adapted(model, "image_encoder") == {"q_proj", "k_proj", "v_proj", "out_proj"}


def test_only_adapters_and_configured_parts_get_gradients(hub: dict) -> None:
    model = randomized(MMGPT.from_config(config(hub)))
    apply_freezing(model)
    model.train()
    model(**batch(model)).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert {name.split(".", 1)[0] for name in trainable} == {"fusion", "projector", "generator"}
    assert all(lora.is_adapter(name) for name in trainable if name.startswith("generator."))
    assert sum(lora.is_adapter(name) for name in trainable) == 8  # A and B of q, k, v, o in one layer


@pytest.mark.parametrize("generator", ["llama", "gpt2"])
def test_merged_save_gives_the_same_logits_without_peft(hub: dict, generator: str, tmp_path: Path) -> None:
    model = randomized(MMGPT.from_config(config(hub, generator, vision_lora=2)))
    model.save_pretrained(tmp_path / "merged")
    assert not any(lora.is_adapter(k) or ".base_layer." in k for k in load_file(tmp_path / "merged/model.safetensors"))
    merged = MMGPT.from_pretrained(tmp_path / "merged")
    assert not lora.has_adapters(merged) and merged.config.generator.lora.r == 0
    inputs = batch(model)
    with torch.no_grad():
        difference = (model(**inputs).logits - merged(**inputs).logits).abs().max()
    assert difference <= 1e-5
    # the adapters must matter, or equal logits would prove nothing
    with torch.no_grad():
        plain = MMGPT.from_config(config(hub, generator, generator_lora=0)).eval()
        plain.fusion.load_state_dict(model.fusion.state_dict())
        plain.projector.load_state_dict(model.projector.state_dict())
        assert (model(**inputs).logits - plain(**inputs).logits).abs().max() > 1e-2


def test_adapter_only_folder_round_trips_exactly(hub: dict, tmp_path: Path) -> None:
    model = randomized(MMGPT.from_config(config(hub, vision_lora=2)))
    model.save_pretrained(tmp_path / "adapters", merge_lora=False)
    adapters = load_file(tmp_path / "adapters" / lora.ADAPTER_WEIGHTS)
    rest = load_file(tmp_path / "adapters" / "model.safetensors")
    assert adapters and all(lora.is_adapter(k) for k in adapters)
    # the base models' own weights are not copied: they come from the names in adapter_config.json
    assert {k.split(".", 1)[0] for k in rest} == {"fusion", "projector"}
    loaded = MMGPT.from_pretrained(tmp_path / "adapters")
    assert lora.has_adapters(loaded)
    theirs = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    inputs = batch(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


def test_adapter_only_save_needs_a_named_base_model(hub: dict, tmp_path: Path) -> None:
    cfg = config(hub)
    cfg.generator = GeneratorConfig(kwargs={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                            "num_hidden_layers": 1, "num_attention_heads": 2,
                                            "num_key_value_heads": 1, "max_position_embeddings": 64},
                                    lora=LoraConfig(r=2))
    model = MMGPT.from_config(cfg, train_texts=TEXTS)
    with pytest.raises(ValueError, match="built from kwargs, so there is no base model"):
        model.save_pretrained(tmp_path / "m", merge_lora=False)
    assert not (tmp_path / "m").exists()


def test_lora_on_a_timm_encoder_is_refused() -> None:
    cfg = ModelConfig(image_encoder=ImageEncoderConfig(lora=LoraConfig(r=2)))
    with pytest.raises(ValueError, match=r"model.image_encoder.lora: LoRA needs a Hugging Face model"):
        MMGPT.from_config(cfg, train_texts=TEXTS)


def test_gradient_checkpointing_keeps_the_lora_gradients(hub: dict) -> None:
    cfg = config(hub, vision_lora=2)
    cfg.image_encoder.freeze = False
    model = randomized(MMGPT.from_config(cfg))
    apply_freezing(model)
    model.train()
    inputs = batch(model)
    model(**inputs).loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    assert set(enable_gradient_checkpointing(model)) == {"generator", "image_encoder"}
    model(**inputs).loss.backward()
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-5, atol=1e-6, msg=name)
