"""The models and synthetic data the benchmarks run: the presets configs/default.yaml and configs/gpu200m.yaml.

* ``default``: configs/default.yaml's model and optimizer (a 0.2M-parameter CNN at 64 px,
  cross-attention fusion, a 2-layer 128-wide Llama), batch 128, full precision.
* ``gpu200m``: configs/gpu200m.yaml, a ViT-B/16-sized timm encoder and a SmolLM2-135M-shaped Llama
  generator, about 230M parameters with cross-attention fusion; bf16, batch 64. ``tiny=True`` shrinks
  every part (TINY_GPU200M) so the code path runs on a CPU in seconds.

Prompts and answers imitate easy-VQA (short questions about one coloured shape, one-word answers);
images are random tensors of the encoder's input size, so no data loading is timed.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

import torch

from mmgpt.config import ModelConfig, from_dict, load_yaml
from mmgpt.data.example import Example
from mmgpt.model import MMGPT
from mmgpt.training.config import (
    OptimConfig,
    TrainConfig,
    config_path,
    load_train_config,
)

CONFIGS = ("default", "gpu200m")
FUSIONS = ("weighted_sum", "product", "cross_attention")

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "yellow", "black", "gray", "teal", "brown")

TINY_GENERATOR = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
# a 2-block 64-wide ViT at 32 px instead of ViT-B/16 at 224 px, for --tiny
VIT_TINY_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2,
                   "pretrained_cfg_overlay": {"input_size": [3, 32, 32], "crop_pct": 1.0}}
# what --tiny changes in configs/gpu200m.yaml
TINY_GPU200M = {"image_encoder": {"kwargs": VIT_TINY_KWARGS}, "fusion": {"dim": 64, "num_heads": 4},
                "generator": {"kwargs": TINY_GENERATOR}}


@dataclass
class Workload:
    """A model config, its optimizer config, batch size and precision."""

    name: str
    model: ModelConfig
    optim: OptimConfig
    batch_size: int
    mixed_precision: str  # accelerate's "no" | "bf16" | "fp16"
    image_encoder_autocast: str = "no"  # TrainConfig.image_encoder_autocast


def default_train_config() -> TrainConfig:
    """configs/default.yaml as a TrainConfig."""
    return load_train_config("default")


def workload(name: str, fusion: str | None = None, tiny: bool = False) -> Workload:
    """The named preset (configs/NAME.yaml), optionally with another fusion and (gpu200m) shrunk for CPU."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; available: {', '.join(CONFIGS)}")
    data = load_yaml(config_path(name))
    if tiny:
        for section, values in TINY_GPU200M.items():
            data["model"][section].update(copy.deepcopy(values))
    base = from_dict(TrainConfig, data)
    result = Workload(f"{name}-tiny" if tiny else name, base.model, base.optim, 8 if tiny else base.batch_size,
                      base.mixed_precision, base.image_encoder_autocast)
    if fusion:
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; available: {', '.join(FUSIONS)}")
        result.model.fusion.type = fusion
    return result


def easy_vqa_like(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (question, answer) pairs in the style of easy-VQA: one shape, one colour, one-word answers."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        shape, color = rng.choice(SHAPES), rng.choice(COLORS)
        other_shape, other_color = rng.choice(SHAPES), rng.choice(COLORS)
        kind = rng.randrange(6)
        if kind == 0:
            pairs.append(("what shape is in the image?", shape))
        elif kind == 1:
            pairs.append((f"what is the {color} shape?", shape))
        elif kind == 2:
            pairs.append(("what color is the shape?", color))
        elif kind == 3:
            pairs.append((f"what color is the {shape}?", color))
        elif kind == 4:
            pairs.append((f"does the image contain a {other_shape}?", "yes" if other_shape == shape else "no"))
        else:
            pairs.append((f"is there a {other_color} shape in the image?", "yes" if other_color == color else "no"))
    return pairs


def tokenizer_texts() -> list[str]:
    """Texts the from-scratch tokenizer is trained on: every question and answer form, plus a caption prompt."""
    texts = [t for pair in easy_vqa_like(2000, seed=1) for t in pair]
    return texts + ["Describe the image."] + [f"a {c} {s}" for c in COLORS for s in SHAPES]


def build_model(cfg: ModelConfig, seed: int = 0) -> MMGPT:
    """MMGPT.from_config with a tokenizer trained on the easy-VQA-like texts; random weights."""
    torch.manual_seed(seed)
    return MMGPT.from_config(cfg, train_texts=tokenizer_texts())


def image_size(model: MMGPT) -> tuple[int, int]:
    """(H, W) the image encoder expects, from its data config."""
    size = model.image_encoder.data_config["input_size"]
    return int(size[-2]), int(size[-1])


def synthetic_examples(model: MMGPT, n: int, seed: int = 0) -> list[Example]:
    """n Examples with random pixel tensors of the encoder's input size and easy-VQA-like text."""
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size(model)
    return [Example(image=torch.randn(3, height, width, generator=generator), prompt=q, answer=a)
            for q, a in easy_vqa_like(n, seed=seed)]


def synthetic_batches(model: MMGPT, batch_size: int, num_batches: int, device: torch.device,
                      seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """`num_batches` training batches made by the model's own processor.collate, already on `device`."""
    examples = synthetic_examples(model, batch_size * num_batches, seed=seed)
    batches = []
    for i in range(num_batches):
        batch = model.processor.collate(examples[i * batch_size : (i + 1) * batch_size])
        batches.append({k: v.to(device, non_blocking=True) for k, v in batch.items()})
    return batches


def describe(model: MMGPT) -> dict[str, Any]:
    """Parameter counts per part (each shared tensor once)."""
    parts = {}
    for name in ("text_encoder", "image_encoder", "fusion", "projector", "generator"):
        parts[name] = sum(p.numel() for p in getattr(model, name).parameters())
    return {"params_total": model.num_parameters(), "params_trainable": model.num_parameters(trainable_only=True),
            "params_by_part": parts}
