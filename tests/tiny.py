"""Tiny config factories and batch helpers shared by the core-model tests.

Every factory returns a fresh object, so a test that edits its config cannot leak into another.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch

from mmgpt.config import FusionConfig, GeneratorConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from mmgpt.fusion import FUSIONS
from mmgpt.model import MMGPT

# the from-scratch tokenizer is trained on these
TEXTS = [
    "what color is the shape?",
    "is there a circle?",
    "is there a small green triangle on the left?",
    "how many shapes are there?",
    "Describe the image.",
    "red",
    "blue",
    "yes",
    "no",
    "a small green triangle",
    "a big red circle next to a blue square",
] * 3

IMAGE_SIZE = 32
# 32 px with 8 px patches (ViT, CLIP, SigLIP) or three stride-2 steps (CNN): a 4x4 grid
NUM_PATCHES = 16

GENERATOR_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64},
    # tied like the default config, so saving shared tensors is exercised
    "llama": {
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
        "tie_word_embeddings": True,
    },
    "qwen2": {
        "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
    },
}
GENERATORS = tuple(GENERATOR_CONFIGS)

BERT_CONFIG: dict[str, Any] = {
    "model_type": "bert", "hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 48, "max_position_embeddings": 64,
}
TEXT_ENCODERS = ("lm_embeddings", "bert")

VIT_KWARGS: dict[str, Any] = {"img_size": IMAGE_SIZE, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
CNN_KWARGS: dict[str, Any] = {"img_size": IMAGE_SIZE, "widths": [8, 16], "stem_width": 8}
IMAGE_ENCODERS = ("cnn", "vit", "clip", "siglip")

FUSION_NAMES = tuple(sorted(FUSIONS))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Autouse where imported: tiny tensors gain nothing from threads, and on a busy 2-core box they spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hf_vision_kwargs(model_type: str, image_size: int = IMAGE_SIZE, patch_size: int = 8) -> dict[str, Any]:
    """A from-scratch transformers vision tower config of one small layer."""
    return {
        "model_type": model_type, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "image_size": image_size, "patch_size": patch_size,
    }


def text_encoder_config(name: str) -> TextEncoderConfig:
    """'lm_embeddings' or 'bert' (a from-scratch hf encoder)."""
    if name == "lm_embeddings":
        return TextEncoderConfig(type="lm_embeddings", max_length=24)
    if name == "bert":
        return TextEncoderConfig(type="hf", kwargs=dict(BERT_CONFIG), max_length=24)
    raise KeyError(name)


def image_encoder_config(name: str, **changes: Any) -> ImageEncoderConfig:
    """'cnn', 'vit' (timm) or 'clip', 'siglip' (hf towers), all for 32 px images."""
    if name == "cnn":
        cfg = ImageEncoderConfig(type="timm", name="mmgpt_tiny_cnn", kwargs=dict(CNN_KWARGS))
    elif name == "vit":
        cfg = ImageEncoderConfig(type="timm", name="vit_tiny_patch16_224", kwargs=dict(VIT_KWARGS))
    elif name == "clip":
        cfg = ImageEncoderConfig(type="hf", name="", kwargs=hf_vision_kwargs("clip_vision_model"))
    elif name == "siglip":
        cfg = ImageEncoderConfig(type="hf", name="", kwargs=hf_vision_kwargs("siglip_vision_model"))
    else:
        raise KeyError(name)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def generator_config(name: str, **hf_changes: Any) -> GeneratorConfig:
    """A one-layer, 32-wide gpt2, llama or qwen2."""
    return GeneratorConfig(kwargs={**GENERATOR_CONFIGS[name], **hf_changes})


def tiny_config(
    text: str = "lm_embeddings",
    image: str = "cnn",
    fusion: str = "cross_attention",
    generator: str = "llama",
    max_answer_length: int = 12,
) -> ModelConfig:
    """A whole model of a few ten thousand parameters; `fusion` may name options to turn on after a + each
    ("cross_attention+image_prefix")."""
    fusion, *options = fusion.split("+")
    return ModelConfig(
        text_encoder=text_encoder_config(text),
        image_encoder=image_encoder_config(image),
        fusion=FusionConfig(type=fusion, dim=16, num_layers=1, num_heads=2, **dict.fromkeys(options, True)),
        generator=generator_config(generator),
        max_answer_length=max_answer_length,
    )


def eval_config(max_answer_length: int) -> ModelConfig:
    """The eval scripts' model: the default tiny CNN, product fusion and a 16-wide one-layer gpt2."""
    return ModelConfig(
        text_encoder=TextEncoderConfig(max_length=16),
        image_encoder=ImageEncoderConfig(kwargs={"widths": [8, 16], "stem_width": 8}),
        fusion=FusionConfig(type="product", dim=16),
        generator=GeneratorConfig(kwargs={"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2,
                                             "n_positions": 64}),
        max_answer_length=max_answer_length,
    )


def build(config: ModelConfig, seed: int = 0) -> MMGPT:
    """The model for `config`, initialised from a fixed seed, its tokenizer trained on TEXTS."""
    torch.manual_seed(seed)
    return MMGPT.from_config(config, train_texts=TEXTS)


def image_size(model: MMGPT) -> tuple[int, int]:
    """The (H, W) the model's own image transform produces."""
    from PIL import Image

    return tuple(model.processor.image_transform(Image.new("RGB", (7, 5))).shape[-2:])


def random_images(model: MMGPT, n: int, seed: int = 0) -> list[torch.Tensor]:
    """n already-processed (3, H, W) images of the model's input size."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size(model)
    return [torch.randn(3, h, w, generator=g) for _ in range(n)]


def make_batch(
    model: MMGPT, prompts: Sequence[str], answers: Sequence[str] | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A processor batch with seeded random pixels."""
    return model.processor(list(prompts), random_images(model, len(prompts), seed), answers)


def select(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Row i of a batch, as a batch of one, with its padding columns removed."""
    row = {k: v[i : i + 1] for k, v in batch.items()}
    for ids, mask in (("input_ids", "attention_mask"), ("answer_ids", "answer_mask")):
        if ids in row:
            length = int(row[mask].sum())
            row[ids], row[mask] = row[ids][:, :length], row[mask][:, :length]
    return row

