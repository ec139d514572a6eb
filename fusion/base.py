"""The fusion interface, its registry and the projections every fusion shares.

A fusion g maps T (B, Lt, d_text), T_mask (B, Lt) and I (B, Li, d_image) to F (B, Lf, dim) and
F_mask (B, Lf): `forward(T, T_mask, I) -> (F, F_mask)`. `Fusion.forward` projects T and I to `dim`,
calls the hooks below, and zeroes F at the padded positions of F_mask.

A new fusion is one file with a `@register_fusion("name")` subclass of Fusion, built as
`cls(cfg, text_dim, image_dim)`, that implements
    combine(T (B, Lt, dim), T_mask (B, Lt), I (B, Li, dim)) -> F (B, Lf, dim)
and, only when F is not aligned with the text (Lf != Lt), overrides the hook
    fused_mask(T_mask (B, Lt), I (B, Li, dim)) -> F_mask (B, Lf)    (default: T_mask).
A subclass without `combine` cannot be instantiated (TypeError naming it).
"""
from __future__ import annotations

import abc
import math

import torch
from torch import nn

from mmgpt.config import ConfigError, FusionConfig
from mmgpt.registry import lookup, registrar

FUSIONS: dict[str, type[Fusion]] = {}

register_fusion = registrar(FUSIONS, "fusion", name_attribute="registry_name")


def build_fusion(cfg: FusionConfig, text_dim: int, image_dim: int) -> Fusion:
    """Look up `cfg.type` in the registry and build it for the given input widths."""
    cls = lookup(FUSIONS, cfg.type, "model.fusion.type")
    if cfg.dim <= 0:
        raise ConfigError(f"model.fusion.dim must be positive, got {cfg.dim}")
    return cls(cfg, text_dim, image_dim)


class Fusion(nn.Module, abc.ABC):
    """Base class: projects T and I to a common width `dim`; subclasses combine them (see the module docstring)."""

    registry_name = ""

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = cfg.dim
        self.text_proj = nn.Linear(text_dim, cfg.dim)
        self.image_proj = nn.Linear(image_dim, cfg.dim)

    def project(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lt, d_text), (B, Li, d_image) -> (B, Lt, dim), (B, Li, dim)."""
        if text.shape[-1] != self.text_proj.in_features:
            raise ValueError(
                f"fusion '{self.registry_name}' expects text width {self.text_proj.in_features}, got {text.shape[-1]}"
            )
        if image.shape[-1] != self.image_proj.in_features:
            raise ValueError(
                f"fusion '{self.registry_name}' expects image width {self.image_proj.in_features}, "
                f"got {image.shape[-1]}"
            )
        image = self.image_proj(image)
        if self.cfg.image_positions:
            image = image + sincos_positions(image.shape[1], image.shape[2], image.device, image.dtype)
        return self.text_proj(text), image

    @abc.abstractmethod
    def combine(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Combine projected T (B, Lt, dim) and I (B, Li, dim) into F (B, Lf, dim)."""

    def fused_mask(self, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """F_mask (B, Lf) for T_mask (B, Lt) and projected I (B, Li, dim): the text mask, as F follows the text."""
        return text_mask

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """T (B, Lt, d_text), T_mask (B, Lt), I (B, Li, d_image) -> F (B, Lf, dim), F_mask (B, Lf)."""
        text, image = self.project(text, image)
        fused = self.combine(text, text_mask, image)
        mask = self.fused_mask(text_mask, image)
        # padded positions are zeroed so they can never leak into anything downstream
        return fused * mask.unsqueeze(-1).to(fused.dtype), mask


def sincos_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sin-cos position codes (length, dim): 2-D (row, column) for a square grid of tokens, else 1-D."""
    side = math.isqrt(length)
    if side * side == length and dim % 4 == 0:
        rows, cols = torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device), indexing="ij")
        coordinates = [cols.flatten(), rows.flatten()]
    elif dim % 2 == 0:
        coordinates = [torch.arange(length, device=device)]
    else:
        raise ConfigError(f"model.fusion.image_positions needs an even model.fusion.dim, got {dim}")
    half = dim // (2 * len(coordinates))
    frequencies = 1.0 / 10000 ** (torch.arange(half, device=device, dtype=torch.float32) / half)
    angles = [c.to(torch.float32)[:, None] * frequencies[None] for c in coordinates]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1).to(dtype)
