"""MFB: multi-modal factorised bilinear pooling with sum pooling over k factors (Yu et al., "Multi-modal
Factorized Bilinear Pooling with Co-Attention Learning for Visual Question Answering", ICCV 2017)."""
from __future__ import annotations

import torch

from mmgpt.config import FusionConfig
from mmgpt.fusion.base import register_fusion
from mmgpt.fusion.layers import LowRankBilinear, PooledBilinear, power_l2_normalise

# the paper's k (factors summed per output channel); its ablation found 5 best
FACTORS = 5


@register_fusion("mfb")
class MFB(PooledBilinear):
    """z = L2(sign-sqrt(SumPool_k(U t * V v))), t a text token, v the mean-pooled image (see PooledBilinear).

    U and V map to dim * k channels; sum pooling over non-overlapping windows of k gives dim outputs, then the
    paper's power and L2 normalisation. Alignment: per text token, as PooledBilinear.
    """

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__(cfg, text_dim, image_dim)
        self.bilinear = LowRankBilinear(cfg.dim, cfg.dim, rank=FACTORS)

    def interact(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt, dim) -> (B, Lt, dim)."""
        return power_l2_normalise(self.bilinear(text, image))
