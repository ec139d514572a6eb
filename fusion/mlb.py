"""MLB: low-rank bilinear pooling by a Hadamard product (Kim et al., "Hadamard Product for Low-rank Bilinear
Pooling", ICLR 2017)."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import FusionConfig
from mmgpt.fusion.base import register_fusion
from mmgpt.fusion.layers import LowRankBilinear, PooledBilinear


@register_fusion("mlb")
class MLB(PooledBilinear):
    """z = P (tanh(U t) * tanh(V v)), with t a text token and v the mean-pooled image (see PooledBilinear).

    U and V map to a joint space of width dim; P maps back. Alignment: per text token, as PooledBilinear.
    """

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__(cfg, text_dim, image_dim)
        self.bilinear = LowRankBilinear(cfg.dim, cfg.dim, rank=1, activation=True)
        self.output = nn.Linear(cfg.dim, cfg.dim)

    def interact(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt, dim) -> (B, Lt, dim)."""
        return self.output(self.bilinear(text, image))
