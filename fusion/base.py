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

Several images per prompt (`ImageLayout`): I holds K images' tokens one image after another, (B, K * Li, dim),
and each token gets a learned embedding of its image's index (`enable_images`). A fusion that reads every
image's tokens at once sets `reads_all_images` and takes the layout as a fourth argument of `combine` and
`fused_mask` (attention fusions mask the padded images' tokens; concat places each image at its slot);
any other fusion is run once per image and the K results follow each other in F (a pooled fusion pools
each image on its own), each masked out where its image is padding.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
from torch import nn

from mmgpt.config import ConfigError, FusionConfig
from mmgpt.registry import lookup, registrar

FUSIONS: dict[str, type[Fusion]] = {}

register_fusion = registrar(FUSIONS, "fusion", name_attribute="registry_name")


def build_fusion(cfg: FusionConfig, text_dim: int, image_dim: int, max_images: int = 1, views: int = 1) -> Fusion:
    """Look up `cfg.type` in the registry and build it for the given input widths, images per prompt and views
    per image (tiling)."""
    cls = lookup(FUSIONS, cfg.type, "model.fusion.type")
    if cfg.dim <= 0:
        raise ConfigError(f"model.fusion.dim must be positive, got {cfg.dim}")
    fusion = cls(cfg, text_dim, image_dim)
    fusion.enable_images(max_images, views)
    return fusion


@dataclass
class ImageLayout:
    """Where K images' tokens sit in I (B, K * Li, dim): image k's are I[:, k * Li : (k + 1) * Li]."""

    mask: torch.Tensor  # (B, K): 1 for an image, 0 for padding (a prompt with fewer than K images)
    slots: torch.Tensor  # (B, K): the text position each image's tokens go before (0: before all the text)
    tokens_per_image: int  # Li
    # with tiling, each image is V views (the whole, then its tiles): the K entries are K / V images' views
    views: int = 1

    @property
    def count(self) -> int:
        """K, the most images (with tiling: views) of any prompt in the batch."""
        return self.mask.shape[1]

    def token_mask(self) -> torch.Tensor:
        """(B, K * Li): 1 for the tokens of real images."""
        return self.mask.repeat_interleave(self.tokens_per_image, dim=1)

    def token_image(self) -> torch.Tensor:
        """(K * Li,): which image each token of I belongs to."""
        entry = torch.arange(self.count, device=self.mask.device)
        return (entry // self.views).repeat_interleave(self.tokens_per_image)

    def token_view(self) -> torch.Tensor:
        """(K * Li,): which view of its image each token comes from (0: the whole image, 1 + r * cols + c: a tile)."""
        entry = torch.arange(self.count, device=self.mask.device)
        return (entry % self.views).repeat_interleave(self.tokens_per_image)


class Fusion(nn.Module, abc.ABC):
    """Base class: projects T and I to a common width `dim`; subclasses combine them (see the module docstring)."""

    registry_name = ""
    reads_all_images = False  # combine/fused_mask take an ImageLayout and read all images' tokens at once

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = cfg.dim
        self.text_proj = nn.Linear(text_dim, cfg.dim)
        self.image_proj = nn.Linear(image_dim, cfg.dim)
        self.image_index: nn.Embedding | None = None
        self.view_position: nn.Embedding | None = None
        self.max_images = 1

    def enable_images(self, max_images: int, views: int = 1) -> None:
        """Accept up to `max_images` images per prompt of `views` views each (tiling): more than one image adds
        the learned image-index embedding, more than one view the learned view (tile position) embedding.

        One image of one view adds nothing, so a one-image model keeps its parameters and its outputs.
        """
        if max_images < 1:
            raise ConfigError(f"model.max_images must be >= 1, got {max_images}")
        self.max_images = max_images
        if max_images > 1:
            self.image_index = nn.Embedding(max_images, self.dim)
        if views > 1:
            self.view_position = nn.Embedding(views, self.dim)

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
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, images: ImageLayout | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """T (B, Lt, d_text), T_mask (B, Lt), I (B, Li, d_image) -> F (B, Lf, dim), F_mask (B, Lf).

        With `images`, I is (B, K * Li, d_image): K images' tokens (see the module docstring).
        """
        text, image = self.project(text, image)
        if images is None:
            fused, mask = self.combine(text, text_mask, image), self.images_mask(text_mask, image, None)
        else:
            fused, mask = self._combine_images(text, text_mask, image, images)
        # padded positions are zeroed so they can never leak into anything downstream
        return fused * mask.unsqueeze(-1).to(fused.dtype), mask

    def _combine_images(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                        images: ImageLayout) -> tuple[torch.Tensor, torch.Tensor]:
        if images.count > self.max_images * images.views:
            raise ValueError(f"a prompt has {-(-images.count // images.views)} images, more than this model's "
                             f"model.max_images={self.max_images}")
        if self.image_index is not None:
            image = image + self.image_index(images.token_image()).to(image.dtype)
        if self.view_position is not None:
            image = image + self.view_position(images.token_view()).to(image.dtype)
        if self.reads_all_images:
            return self.combine(text, text_mask, image, images), self.images_mask(text_mask, image, images)
        fused = [self.combine(text, text_mask, one) for one in image.split(images.tokens_per_image, dim=1)]
        return torch.cat(fused, dim=1), self.images_mask(text_mask, image, images)

    def images_mask(self, text_mask: torch.Tensor, image: torch.Tensor, images: ImageLayout | None
                    ) -> torch.Tensor:
        """F_mask (B, Lf) for T_mask (B, Lt) and projected I, of one image (`images` None) or of several."""
        if images is None:
            return self.fused_mask(text_mask, image)
        if self.reads_all_images:
            return self.fused_mask(text_mask, image, images)
        return torch.cat([self.fused_mask(text_mask, one) * images.mask[:, k : k + 1].to(text_mask.dtype)
                          for k, one in enumerate(image.split(images.tokens_per_image, dim=1))], dim=1)


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
