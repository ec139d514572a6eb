"""Lower bounds on a part's memory from its config, checked before anything is built.

A config value such as hidden_size: 1000000000, num_hidden_layers: 10000000 or a LoRA r of 1e9 would
otherwise fail deep inside torch with a bare allocation RuntimeError, or build Python objects for days. The
bounds count only what every such part certainly has, so a part they refuse could never be built here. On the
meta device (`mmgpt train --dry-run`, which plans for other machines) only the layers' Python objects count.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from mmgpt.config import ConfigError

GIB = 2**30
# the smallest dtype a part is built or loaded in (bf16 or fp16)
BYTES_PER_PARAMETER = 2
# Python objects of one transformer layer (modules, parameters and their dicts): ~36 KB measured on a llama layer
LAYER_BYTES = 32 * 2**10
# the config values the bound reads, as transformers names them (attribute_map maps e.g. gpt2's n_embd)
TRANSFORMER_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")


def machine_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _count(value: Any) -> float | None:
    """A config value as a count, or None if it is not a finite number (transformers reports those itself)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _on_meta() -> bool:
    """Whether parts are being built on the meta device (a dry run), where their tensors take no memory."""
    return torch.get_default_device().type == "meta"


def transformer_bytes(values: Mapping[str, float]) -> float:
    """At least what a transformer of these sizes takes: per layer two width x width attention projections
    (query, output) and two width x intermediate MLP matrices, the token embeddings, and each layer's objects
    (only those on the meta device)."""
    width = values.get("hidden_size", 0)
    layers = values.get("num_hidden_layers", 0)
    # gpt2 leaves its intermediate size unset, meaning 4 x width
    intermediate = values.get("intermediate_size", 4 * width)
    parameters = layers * (2 * width * width + 2 * width * intermediate) + values.get("vocab_size", 0) * width
    return (0 if _on_meta() else parameters * BYTES_PER_PARAMETER) + layers * LAYER_BYTES


def refuse_oversized(needed: float, key: str, value: Any, what: str) -> None:
    """Raise ConfigError naming `key`=`value` when `needed` bytes exceed this machine's memory."""
    memory = machine_memory()
    if memory is None or needed <= memory:
        return
    raise ConfigError(
        f"{key}={value}: the {what} would need at least {needed / GIB:,.1f} GiB, more than this machine's "
        f"{memory / GIB:,.1f} GiB of memory; use a smaller value"
    )


def check_transformer_config(config: Any, where: str, what: str) -> None:
    """Refuse a transformers config whose part cannot fit in memory, naming the key (as `where` + its spelling)
    that makes it so: the one whose reduction to 1 shrinks the bound most."""
    values = {key: count for key in TRANSFORMER_KEYS if (count := _count(getattr(config, key, None))) is not None}
    needed = transformer_bytes(values)
    memory = machine_memory()
    if not values or memory is None or needed <= memory:
        return
    culprit = min(values, key=lambda key: transformer_bytes({**values, key: 1}))
    spelled = getattr(config, "attribute_map", {}).get(culprit, culprit)
    refuse_oversized(needed, f"{where}{spelled}", getattr(config, culprit), what)


def check_lora_rank(config: Any, r: int, key: str, what: str) -> None:
    """Refuse a LoRA rank whose adapters cannot fit in memory: at least one adapted width x width projection per
    layer, each adding r x (2 x width) parameters."""
    if _on_meta():
        return
    width = _count(getattr(config, "hidden_size", None)) or 1
    layers = _count(getattr(config, "num_hidden_layers", None)) or 1
    refuse_oversized(r * 2 * width * layers * BYTES_PER_PARAMETER, key, r, what)
