"""Encoder interfaces and registries: what a new encoder implements.

TextEncoder (register with `@register_text_encoder("name")`, built as `cls(cfg, generator=, tokenizer=,
load_weights=)`):
    forward(input_ids (B, Lt), attention_mask (B, Lt)) -> T (B, Lt, d_text), T_mask (B, Lt)
    output_dim -> d_text
    tokenizer: its own tokenizer, or None when it reads the generator's tokens

ImageEncoder (register with `@register_image_encoder("name")`, built as `cls(cfg, load_weights=)`):
    forward(pixel_values (B, 3, H, W)) -> I (B, Li, d_image)
    output_dim -> d_image
    image_transform() -> the ImageTransform that training, evaluation and answer() share

ImageTransform (register with `@register_transform("name")`): PIL RGB image -> (3, H, W) tensor, with
`save(folder)` / `load(folder)` so the preprocessing travels with a saved model.

A subclass that misses one of these cannot be instantiated (TypeError naming the member).
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mmgpt.config import ConfigError, ImageEncoderConfig, TextEncoderConfig, load_json
from mmgpt.registry import lookup, registrar

TEXT_ENCODERS: dict[str, type[TextEncoder]] = {}
IMAGE_ENCODERS: dict[str, type[ImageEncoder]] = {}
TRANSFORMS: dict[str, type[ImageTransform]] = {}


register_text_encoder = registrar(TEXT_ENCODERS, "text encoder")
register_image_encoder = registrar(IMAGE_ENCODERS, "image encoder")
register_transform = registrar(TRANSFORMS, "image transform")


class TextEncoder(nn.Module, abc.ABC):
    """(input_ids, attention_mask) (B, Lt) -> T (B, Lt, d_text), T_mask (B, Lt)."""

    # a tokenizer of the encoder's own, or None when it reads the generator's tokens
    tokenizer: Any = None

    @property
    @abc.abstractmethod
    def output_dim(self) -> int:
        """d_text, the width of T."""

    @abc.abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lt), (B, Lt) -> T (B, Lt, d_text), T_mask (B, Lt)."""


class ImageEncoder(nn.Module, abc.ABC):
    """pixel_values (B, 3, H, W) -> I (B, Li, d_image)."""

    @property
    @abc.abstractmethod
    def output_dim(self) -> int:
        """d_image, the width of I."""

    @abc.abstractmethod
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> I (B, Li, d_image)."""

    @abc.abstractmethod
    def image_transform(self) -> ImageTransform:
        """The eval-time preprocessing this encoder expects."""


class ImageTransform(abc.ABC):
    """PIL RGB image -> (3, H, W) tensor; saved next to the model so preprocessing travels with it."""

    @abc.abstractmethod
    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> (3, H, W) float tensor."""

    @abc.abstractmethod
    def save(self, folder: Path) -> None:
        """Write this transform into `folder` (which must contain transform.json afterwards)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, folder: Path) -> ImageTransform:
        """Read a transform written by `save`."""


def load_transform(folder: str | Path) -> ImageTransform:
    """Restore whichever transform was saved in `folder`."""
    folder = Path(folder)
    meta = folder / "transform.json"
    if not meta.is_file():
        raise FileNotFoundError(f"no image transform in {folder} (missing transform.json)")
    kind = load_json(meta).get("type")
    if not isinstance(kind, str):
        raise ConfigError(
            f"{meta} must name the transform's 'type' ({', '.join(sorted(TRANSFORMS))}), got {type(kind).__name__}"
        )
    return lookup(TRANSFORMS, kind, f"image transform type in {meta}").load(folder)


def build_image_encoder(cfg: ImageEncoderConfig, load_weights: bool = True) -> ImageEncoder:
    """Build the image encoder named by `cfg.type`."""
    return lookup(IMAGE_ENCODERS, cfg.type, "model.image_encoder.type")(cfg, load_weights=load_weights)


def build_text_encoder(
    cfg: TextEncoderConfig, generator: nn.Module, tokenizer: Any, load_weights: bool = True
) -> TextEncoder:
    """Build the text encoder named by `cfg.type`; it may share the generator or its tokenizer."""
    cls = lookup(TEXT_ENCODERS, cfg.type, "model.text_encoder.type")
    return cls(cfg, generator=generator, tokenizer=tokenizer, load_weights=load_weights)
