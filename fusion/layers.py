"""Pieces several fusions share: masked text pooling, attention pooling of image tokens, low-rank bilinear
products with their normalisation, and the pooled-bilinear fusion skeleton the MLB/MFB/MUTAN/BLOCK family uses."""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as functional
from torch import nn

from mmgpt.config import ConfigError, FusionConfig
from mmgpt.fusion.base import Fusion


def masked_mean(text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """(B, Lt, dim), (B, Lt) -> (B, dim): the mean over valid text tokens only, so padding never counts."""
    weights = text_mask.unsqueeze(-1).to(text.dtype)
    return (text * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def check_heads(cfg: FusionConfig, what: str = "num_heads") -> None:
    """Refuse a model.fusion.dim that model.fusion.num_heads does not divide (heads or blocks split the width)."""
    if cfg.num_heads < 1 or cfg.dim % cfg.num_heads:
        raise ConfigError(
            f"model.fusion.dim ({cfg.dim}) must be divisible by model.fusion.num_heads ({cfg.num_heads}), "
            f"which sets the {what}"
        )


class AttentionPooling(nn.Module):
    """Each text token pools the image tokens by multi-head attention: (B, Lt, dim), (B, Li, dim) -> (B, Lt, dim).

    The weights (B, Lt, Li) come from an ordinary nn.MultiheadAttention, so mmgpt.explain can read them.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_image = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Li, dim) -> (B, Lt, dim)."""
        image = self.norm_image(image)
        pooled, _ = self.attention(self.norm_query(text), image, image, need_weights=False)
        return pooled


class LowRankBilinear(nn.Module):
    """z = sum_r act(U_r x) * act(V_r y): a bilinear map whose weight tensor is factorised to `rank` rank-1 terms.

    rank 1 with tanh is MLB's Hadamard product; rank k is MFB's sum pooling over k factors and MUTAN's
    rank-R constraint on its Tucker core; BLOCK applies one per block.
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int, activation: bool = False) -> None:
        super().__init__()
        self.rank, self.out_dim, self.activation = rank, out_dim, activation
        self.left = nn.Linear(in_dim, rank * out_dim)
        self.right = nn.Linear(in_dim, rank * out_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(..., in_dim), (..., in_dim) -> (..., out_dim)."""
        left, right = self.left(x), self.right(y)
        if self.activation:
            left, right = torch.tanh(left), torch.tanh(right)
        product = left * right
        return product.view(*product.shape[:-1], self.rank, self.out_dim).sum(dim=-2)


def power_l2_normalise(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """MFB/BLOCK's signed square root then L2 normalisation over the last axis (eps keeps the root's slope finite)."""
    z = z.sign() * (z.abs() + eps).sqrt()
    return functional.normalize(z, dim=-1)


class PooledBilinear(Fusion):
    """F_t = T_t + LayerNorm(bilinear(T_t, mean(I))): the classification-VQA bilinear fusions, per text token.

    Alignment: the image tokens are mean-pooled to one vector (the papers' global image feature) that meets
    every text token in the subclass's `interact`, so F has the text length and the text mask. The residual
    keeps each token's identity, which a generator needs and a VQA classifier did not.
    """

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__(cfg, text_dim, image_dim)
        self.norm = nn.LayerNorm(cfg.dim)

    @abc.abstractmethod
    def interact(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The fusion's bilinear map: (B, Lt, dim), (B, Lt, dim) -> (B, Lt, dim)."""

    def combine(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt), (B, Li, dim) -> (B, Lt, dim)."""
        pooled = image.mean(dim=1, keepdim=True).expand_as(text)
        return text + self.norm(self.interact(text, pooled))
