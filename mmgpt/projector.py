"""The projector: F (B, Lf, fusion.dim) -> the generator's prefix (B, Lf, width); and the pixel shuffle that
shortens image tokens before the fusion (I (N, Li, d) -> (N, Li / f^2, d * f^2))."""
from __future__ import annotations

import math

import torch
from torch import nn

from mmgpt.config import ConfigError, ProjectorConfig


def pixel_shuffle(image: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, s * s, d) tokens of a square grid -> (N, (s / f)^2, d * f^2): each f x f block becomes one token.

    nanoVLM's space-to-depth: the block's tokens are concatenated channel-wise, so no detail is averaged away.
    """
    count, length, dim = image.shape
    side = math.isqrt(length)
    if side * side != length or side % factor:
        raise ConfigError(f"model.image_encoder.pixel_shuffle={factor} needs a square grid of image tokens whose "
                          f"side is a multiple of {factor}, got {length} tokens")
    grid = image.reshape(count, side // factor, factor, side // factor, factor, dim)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(count, (side // factor) ** 2, factor * factor * dim)


def build_projector(cfg: ProjectorConfig, in_dim: int, width: int) -> nn.Module:
    """The projector `cfg.type` names, from the fusion's width `in_dim` to the generator's `width`."""
    if cfg.type == "linear":
        return nn.Linear(in_dim, width)
    hidden = cfg.hidden_size or width
    # LLaVA-1.5's two-layer MLP
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, width))
