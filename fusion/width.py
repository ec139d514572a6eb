"""The fusion width (model.fusion.dim) that gives a fusion a wanted number of trainable parameters.

Used to compare fusions at matched capacity: each fusion gets the width whose parameter count is nearest the
target, among the widths its config accepts (multiples of num_heads, of 4 with image_positions). Fusions are
built on the meta device, so a count costs no memory and no weights are initialised.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from mmgpt.config import ConfigError, FusionConfig
from mmgpt.fusion.base import build_fusion

# the widest a search goes: 2**20 channels is far past any fusion that fits in memory
MAX_WIDTH = 2**20


def fusion_parameters(cfg: FusionConfig, text_dim: int, image_dim: int) -> int:
    """The trainable parameters of the fusion `cfg` for these input widths (0 when model.fusion.freeze)."""
    if cfg.freeze:
        return 0
    with torch.device("meta"):
        fusion = build_fusion(cfg, text_dim, image_dim)
    return sum(p.numel() for p in fusion.parameters())


def matched_width(cfg: FusionConfig, text_dim: int, image_dim: int, target: int,
                  tolerance: float = 0.05) -> tuple[int, int]:
    """(width, its parameter count) of the fusion `cfg` nearest `target` parameters; ConfigError when no
    accepted width is within `tolerance` (a fraction of target) of it."""
    if cfg.freeze:
        raise ConfigError(f"fusion '{cfg.type}' is frozen (model.fusion.freeze=true): it has no trainable "
                          "parameters to match")
    step = math.lcm(cfg.num_heads, 4 if cfg.image_positions else 1)

    @functools.cache  # the search and the messages ask for the same widths again
    def count(multiple: int) -> int:
        return fusion_parameters(dataclasses.replace(cfg, dim=multiple * step), text_dim, image_dim)

    # the count grows with the width: double to bracket the target, then bisect
    low, high = 1, 1
    while count(high) < target:
        low, high = high, 2 * high
        if high * step > MAX_WIDTH:
            raise ConfigError(f"fusion '{cfg.type}' cannot reach {target:,} trainable parameters: width "
                              f"{MAX_WIDTH:,} gives {count(MAX_WIDTH // step):,}")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < target else (low, middle)
    best = min({low, high}, key=lambda m: abs(count(m) - target))
    parameters = count(best)
    if abs(parameters - target) > tolerance * target:
        options = ", ".join(f"width {m * step} gives {count(m):,}" for m in sorted({low, high}))
        raise ConfigError(f"fusion '{cfg.type}' cannot have {target:,} trainable parameters within "
                          f"{tolerance:.0%}: {options}")
    return best * step, parameters
