"""Elementwise product of each projected text token with the pooled image."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import FusionConfig
from mmgpt.fusion.base import Fusion, register_fusion


@register_fusion("product")
class Product(Fusion):
    """F_t = LayerNorm(T_t * pool(I)) + T_t, the multiplicative interaction of MCB/MLB-style VQA.

    Alignment: the image tokens are mean-pooled to one vector that is broadcast over the
    text tokens, so F has the text length and the text mask. The residual keeps the
    token identity when the product is small.
    """

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__(cfg, text_dim, image_dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def combine(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt), (B, Li, dim) -> (B, Lt, dim)."""
        pooled = image.mean(dim=1, keepdim=True)
        return self.norm(text * pooled) + text
