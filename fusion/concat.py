"""Concatenation: the projected image tokens, then the projected text tokens (LLaVA-style prefix)."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import FusionConfig
from mmgpt.fusion.base import Fusion, register_fusion


@register_fusion("concat")
class Concat(Fusion):
    """F = [I_1 .. I_Li, T_1 .. T_Lt]: the generator itself relates text and image by attention.

    Alignment: no alignment is forced; F is Li + Lt long and its mask is all ones over the image
    tokens followed by the text mask. The image tokens keep their spatial order, so the
    generator sees where things are, not only what they are.
    """

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__(cfg, text_dim, image_dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def combine(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt), (B, Li, dim) -> (B, Li + Lt, dim)."""
        return self.norm(torch.cat([image, text * text_mask.unsqueeze(-1).to(text.dtype)], dim=1))

    def fused_mask(self, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, Lt), (B, Li, dim) -> (B, Li + Lt): every image token is valid."""
        image_mask = torch.ones(image.shape[:2], dtype=text_mask.dtype, device=text_mask.device)
        return torch.cat([image_mask, text_mask], dim=1)
