"""The projector: F (B, Lf, fusion.dim) -> the generator's prefix (B, Lf, width)."""
from __future__ import annotations

from torch import nn

from mmgpt.config import ProjectorConfig


def build_projector(cfg: ProjectorConfig, in_dim: int, width: int) -> nn.Module:
    """The projector `cfg.type` names, from the fusion's width `in_dim` to the generator's `width`."""
    if cfg.type == "linear":
        return nn.Linear(in_dim, width)
    hidden = cfg.hidden_size or width
    # LLaVA-1.5's two-layer MLP
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, width))
