"""FiLM: the question modulates the image features feature-wise, then each text token pools them by attention
(Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018)."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import FusionConfig
from mmgpt.fusion.base import Fusion, register_fusion
from mmgpt.fusion.layers import AttentionPooling, check_heads, masked_mean


@register_fusion("film")
class FiLM(Fusion):
    """I' = I + ReLU(gamma(q) * LN(W I) + beta(q)); F_t = LayerNorm(T_t + AttnPool(T_t, I')).

    q is the mean of the valid text tokens (the paper's question embedding); gamma and beta are one linear
    map of q, as in the paper's FiLM generator, and the modulated block is its residual block with a
    parameter-free LayerNorm for batch norm. Alignment: each text token then pools the modulated image
    tokens by attention, so F has the text length and the text mask; padding enters neither q nor F.
    """

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        check_heads(cfg)
        super().__init__(cfg, text_dim, image_dim)
        self.film = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.image_block = nn.Linear(cfg.dim, cfg.dim)
        self.image_norm = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.pooling = AttentionPooling(cfg.dim, cfg.num_heads, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.dim)

    def combine(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt), (B, Li, dim) -> (B, Lt, dim)."""
        # gamma starts near 1 so the modulation begins close to the plain residual block
        gamma, beta = self.film(masked_mean(text, text_mask)).unsqueeze(1).chunk(2, dim=-1)
        image = image + torch.relu((1.0 + gamma) * self.image_norm(self.image_block(image)) + beta)
        return self.norm(text + self.pooling(text, image))
