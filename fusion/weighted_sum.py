"""Weighted sum: a learned gate mixes each projected text token with the pooled image."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import FusionConfig
from mmgpt.fusion.base import Fusion, register_fusion


@register_fusion("weighted_sum")
class WeightedSum(Fusion):
    """F_t = g_t * T_t + (1 - g_t) * pool(I), g_t = sigmoid(W [T_t; pool(I)]) per channel.

    Alignment: the image tokens are mean-pooled to one vector that is broadcast over the
    text tokens, so F has the text length and the text mask.
    """

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__(cfg, text_dim, image_dim)
        self.gate = nn.Linear(2 * cfg.dim, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def combine(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt), (B, Li, dim) -> (B, Lt, dim)."""
        pooled = image.mean(dim=1, keepdim=True).expand_as(text)
        gate = torch.sigmoid(self.gate(torch.cat([text, pooled], dim=-1)))
        return self.norm(gate * text + (1.0 - gate) * pooled)
