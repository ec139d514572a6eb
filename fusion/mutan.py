"""MUTAN: a Tucker decomposition of the bilinear interaction with a rank-constrained core (Ben-younes et al.,
"MUTAN: Multimodal Tucker Fusion for Visual Question Answering", ICCV 2017)."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import FusionConfig
from mmgpt.fusion.base import register_fusion
from mmgpt.fusion.layers import LowRankBilinear, PooledBilinear

# R of the paper's rank constraint on the core tensor (its VQA models use 5 to 20)
RANK = 5


@register_fusion("mutan")
class Mutan(PooledBilinear):
    """z = W_o sum_r (W_t^r tanh(t)) * (W_v^r tanh(v)), t a text token, v the mean-pooled image.

    The base projections with tanh are the paper's factor matrices W_q, W_v; the rank-R core is R
    Hadamard products summed; W_o is the output factor. Alignment: per text token, as PooledBilinear.
    """

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__(cfg, text_dim, image_dim)
        self.core = LowRankBilinear(cfg.dim, cfg.dim, rank=RANK)
        self.output = nn.Linear(cfg.dim, cfg.dim)

    def interact(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt, dim) -> (B, Lt, dim)."""
        return self.output(self.core(torch.tanh(text), torch.tanh(image)))
