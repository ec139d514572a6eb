"""Text and image encoders, each registered under a config name."""
from __future__ import annotations

# importing the modules fills the registries (and registers mmgpt's CNNs with timm)
from mmgpt.encoders import hf_text, hf_vision, lm_embeddings, timm_image, tiny_cnn  # noqa: E402,F401
from mmgpt.encoders.base import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    ImageEncoder,
    ImageTransform,
    TextEncoder,
    build_image_encoder,
    build_text_encoder,
    load_transform,
)

__all__ = [
    "IMAGE_ENCODERS",
    "TEXT_ENCODERS",
    "ImageEncoder",
    "ImageTransform",
    "TextEncoder",
    "build_image_encoder",
    "build_text_encoder",
    "load_transform",
]
