"""`mmgpt train --dry-run`: the model of a config built on the meta device, its sizes and a memory estimate.

No weights are read or downloaded. A part named by a hub name still needs its config.json (AutoConfig
fetches it, a few KB); a local folder is read from disk, and a later stage (init_from) reads its parts'
configs from that folder. A generator trained with a from-scratch tokenizer
is counted with model.tokenizer.vocab_size tokens, the most that tokenizer can have.
"""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from mmgpt.training.config import TrainConfig
from mmgpt.training.optim import COMPONENTS, apply_freezing

GIB = 2**30


class _VocabOnly:
    """What building a model asks of a tokenizer (its size and special ids), without any tokenizer files."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def build_meta_model(cfg: TrainConfig) -> Any:
    """The MMGPT of `cfg` with LoRA adapters and freezing applied, every tensor on the meta device."""
    from mmgpt.model import MMGPT

    # a named generator takes its vocabulary from its own config; the check against the tokenizer is skipped
    config = cfg.model
    if cfg.init_from:
        from mmgpt.model_folder import _use_saved_parts

        # a later stage: its parts' configs are in the init_from folder, so nothing comes from the hub
        config = copy.deepcopy(cfg.model)
        _use_saved_parts(config, Path(cfg.init_from).expanduser())
    vocab = 0 if config.generator.name else config.tokenizer.vocab_size
    processor = SimpleNamespace(tokenizer=_VocabOnly(vocab))
    with torch.device("meta"):
        model = MMGPT(config, processor, load_weights=False)
    apply_freezing(model)
    return model


def _image_tokens(model: Any) -> int:
    """Image tokens per image (patches of the encoder's input size)."""
    inner = getattr(model.image_encoder, "model", None)
    config = getattr(inner, "config", None)
    if config is not None and hasattr(config, "image_size"):
        return (int(config.image_size) // int(config.patch_size)) ** 2
    patches = getattr(getattr(inner, "patch_embed", None), "num_patches", None)
    return int(patches) if patches else 64


def _activation_bytes(tokens: int, hidden: int, layers: int, heads: int, checkpointing: bool) -> float:
    """Stored activations of a transformer's backward pass in 16-bit (Korthikanti et al. 2022: sbh(34 + 5as/h)
    per layer; with checkpointing only each layer's input, 2sbh)."""
    per_layer = 2 * tokens * hidden if checkpointing else tokens * hidden * 34 + 5 * heads * tokens * tokens
    return per_layer * layers


def estimate_memory(cfg: TrainConfig, model: Any) -> dict[str, float]:
    """GiB per process for weights, gradients, AdamW states and activations of one micro-batch (an estimate)."""
    weights = grads = 0.0
    for name, param in model.named_parameters():
        # what cast_frozen casts: the parts frozen whole
        frozen_16 = cfg.frozen_dtype == "bf16" and getattr(cfg.model, name.split(".")[0]).freeze
        weights += param.numel() * (2 if frozen_16 else 4)
        grads += param.numel() * 4 if param.requires_grad else 0
    optimizer = 2 * grads
    text_len, answer_len = cfg.model.text_encoder.max_length, cfg.model.max_answer_length
    image_len = _image_tokens(model)
    prefix = text_len + image_len if cfg.model.fusion.type == "concat" else text_len
    gen = model.generator.config
    heads = getattr(gen, "num_attention_heads", getattr(gen, "n_head", 1))
    layers = getattr(gen, "num_hidden_layers", getattr(gen, "n_layer", 1))
    hidden = model.generator.get_input_embeddings().embedding_dim
    batch = cfg.batch_size
    activations = batch * _activation_bytes(prefix + answer_len, hidden, layers, heads, cfg.gradient_checkpointing)
    # float32 logits and their gradient over the answer positions
    activations += batch * answer_len * model.generator.get_input_embeddings().num_embeddings * 4 * 2
    inner = getattr(model.image_encoder, "model", None)
    vision = getattr(inner, "config", None)
    if vision is not None and any(p.requires_grad for p in model.image_encoder.parameters()):
        activations += batch * _activation_bytes(image_len, int(vision.hidden_size), int(vision.num_hidden_layers),
                                                 int(vision.num_attention_heads), cfg.gradient_checkpointing)
    parts = {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": activations}
    parts["total"] = sum(parts.values())
    return {k: v / GIB for k, v in parts.items()}


def dry_run(cfg: TrainConfig) -> dict[str, Any]:
    """Parameters per part (all and trainable), the trainable share and the memory estimate of `cfg`."""
    model = build_meta_model(cfg)
    parts = {}
    for part in COMPONENTS:
        params = list(getattr(model, part).parameters())
        parts[part] = {"parameters": sum(p.numel() for p in params),
                       "trainable": sum(p.numel() for p in params if p.requires_grad)}
    total = model.num_parameters()
    trainable = model.num_parameters(trainable_only=True)
    return {"parts": parts, "parameters": total, "trainable": trainable, "trainable_share": trainable / total,
            "batch_size": cfg.batch_size, "memory_gib": estimate_memory(cfg, model)}


def format_report(report: dict[str, Any]) -> str:
    """The dry run as a small text table."""
    lines = [f"{'part':<14} {'parameters':>14} {'trainable':>14}"]
    for part, counts in report["parts"].items():
        lines.append(f"{part:<14} {counts['parameters']:>14,} {counts['trainable']:>14,}")
    lines.append(f"{'total':<14} {report['parameters']:>14,} {report['trainable']:>14,}")
    lines.append(f"trainable share: {100 * report['trainable_share']:.2f}%")
    memory = report["memory_gib"]
    lines.append(f"estimated memory per process at batch {report['batch_size']}: {memory['total']:.2f} GiB ("
                 + ", ".join(f"{k} {v:.2f}" for k, v in memory.items() if k != "total") + ")")
    return "\n".join(lines) + "\n"
