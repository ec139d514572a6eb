"""BLOCK: a block-superdiagonal tensor decomposition of the bilinear interaction (Ben-younes et al., "BLOCK:
Bilinear Superdiagonal Fusion for Visual Question Answering and Visual Relationship Detection", AAAI 2019)."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import FusionConfig
from mmgpt.fusion.base import register_fusion
from mmgpt.fusion.layers import LowRankBilinear, PooledBilinear, check_heads, power_l2_normalise

# rank of each block's core (block.bootstrap.pytorch's default is 15 for 20 blocks of 80)
BLOCK_RANK = 4


@register_fusion("block")
class Block(PooledBilinear):
    """z = W_o [D_1(t_1, v_1); ...; D_n(t_n, v_n)]: t and v split into n blocks, each a rank-constrained core.

    t is a text token and v the mean-pooled image (see PooledBilinear); model.fusion.num_heads sets the number
    of blocks n; each block's output is power- and L2-normalised, as in the reference implementation.
    Alignment: per text token, as PooledBilinear.
    """

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        check_heads(cfg, "number of blocks")
        super().__init__(cfg, text_dim, image_dim)
        size = cfg.dim // cfg.num_heads
        self.blocks = nn.ModuleList(LowRankBilinear(size, size, rank=BLOCK_RANK) for _ in range(cfg.num_heads))
        self.output = nn.Linear(cfg.dim, cfg.dim)

    def interact(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt, dim) -> (B, Lt, dim)."""
        pairs = zip(text.chunk(len(self.blocks), dim=-1), image.chunk(len(self.blocks), dim=-1))
        chunks = [power_l2_normalise(core(t, v)) for core, (t, v) in zip(self.blocks, pairs)]
        return self.output(torch.cat(chunks, dim=-1))
