"""Encoder interfaces and registries.

A text encoder maps (input_ids, attention_mask) of shape (B, Lt) to T (B, Lt, d_text) and
its mask; an image encoder maps pixel_values (B, 3, H, W) to I (B, Li, d_image). Each image
encoder also supplies the image transform that training, evaluation and answer() share.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mmgpt.config import ConfigError, ImageEncoderConfig, TextEncoderConfig, load_json
from mmgpt.registry import registrar

TEXT_ENCODERS: dict[str, type["TextEncoder"]] = {}
IMAGE_ENCODERS: dict[str, type["ImageEncoder"]] = {}
TRANSFORMS: dict[str, type["ImageTransform"]] = {}


register_text_encoder = registrar(TEXT_ENCODERS, "text encoder")
register_image_encoder = registrar(IMAGE_ENCODERS, "image encoder")
register_transform = registrar(TRANSFORMS, "image transform")


def lookup(registry: dict, name: str, key: str) -> type:
    """registry[name], or an error naming the config key and the available names."""
    if name not in registry:
        raise ConfigError(f"unknown {key} '{name}'; available: {', '.join(sorted(registry))}")
    return registry[name]


class TextEncoder(nn.Module):
    """(input_ids, attention_mask) (B, Lt) -> T (B, Lt, d_text), T_mask (B, Lt)."""

    output_dim: int
    # a tokenizer of the encoder's own, or None when it reads the generator's tokens
    tokenizer: Any = None

    def rebuild_kwargs(self) -> dict:
        """Transformers config needed to rebuild this encoder offline (empty if none)."""
        return {}


class ImageEncoder(nn.Module):
    """pixel_values (B, 3, H, W) -> I (B, Li, d_image)."""

    output_dim: int

    def image_transform(self) -> "ImageTransform":
        """The eval-time preprocessing this encoder expects."""
        raise NotImplementedError

    def rebuild_kwargs(self) -> dict:
        """Transformers config needed to rebuild this encoder offline (empty if none)."""
        return {}


class ImageTransform:
    """PIL RGB image -> (3, H, W) tensor; saved next to the model so preprocessing travels with it."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        """Write this transform into `folder` (which must contain transform.json afterwards)."""
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path) -> "ImageTransform":
        """Read a transform written by `save`."""
        raise NotImplementedError


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
