"""timm's eval transform (resize shortest edge, center crop, normalise) in numpy and PIL, from transform.json.

It reproduces torchvision's PIL path step by step (Resize -> CenterCrop -> ToTensor -> Normalize), so the
pixels equal the eager processor's to float32 rounding.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS,
}
CROP_MODES = ("center", "squash")
DEFAULT_CROP_PCT = 0.875  # timm's, for a data config without crop_pct


def check_transform_config(data: Any, source: str) -> dict[str, Any]:
    """A transform.json the runtime can reproduce (type 'timm', a known crop mode and interpolation), checked."""
    if not isinstance(data, dict) or data.get("type") != "timm" or not isinstance(data.get("data_config"), dict):
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{source}: the runtime reproduces timm image transforms only (type 'timm' with a "
                         f"data_config), got type {kind!r}")
    config = data["data_config"]
    mode = config.get("crop_mode") or "center"
    if mode not in CROP_MODES:
        raise ValueError(f"{source}: crop_mode must be one of {', '.join(CROP_MODES)}, got {mode!r}")
    if config.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise ValueError(f"{source}: interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                         f"got {config.get('interpolation')!r}")
    size = config.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and size[0] == 3 and all(isinstance(v, int) for v in size)):
        raise ValueError(f"{source}: input_size must be [3, height, width], got {size!r}")
    return config


class ImageTransform:
    """PIL RGB image -> (3, H, W) float32 array, as timm's eval transform of the same data config."""

    def __init__(self, data_config: dict[str, Any]) -> None:
        self.height, self.width = data_config["input_size"][1:]
        crop_pct = data_config.get("crop_pct") or DEFAULT_CROP_PCT
        self.scale = (math.floor(self.height / crop_pct), math.floor(self.width / crop_pct))
        self.crop_mode = data_config.get("crop_mode") or "center"
        self.resample = INTERPOLATIONS[data_config.get("interpolation", "bilinear")]
        self.mean = np.asarray(data_config["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(data_config["std"], dtype=np.float32).reshape(3, 1, 1)
        if self.crop_mode == "center" and self.scale[0] != self.scale[1]:
            raise ValueError("the runtime reproduces center crops of square images only (timm's ResizeKeepRatio "
                             f"path for {self.height}x{self.width} is not implemented)")

    @classmethod
    def load(cls, folder: str | Path) -> ImageTransform:
        """Read transform.json written by the model's own transform."""
        path = Path(folder) / "transform.json"
        return cls(check_transform_config(json.loads(path.read_text(encoding="utf-8")), str(path)))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL RGB image -> (3, H, W) float32."""
        if self.crop_mode == "squash":
            image = _resize(image, self.scale, self.resample)
        else:
            image = _resize(image, _shortest_edge_size(image.size, self.scale[0]), self.resample)
        image = _center_crop(image, (self.height, self.width))
        pixels = np.asarray(image, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        return (pixels - self.mean) / self.std


def _shortest_edge_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(H, W) with the shorter side `short_side`: torchvision's Resize(int) rounding."""
    width, height = size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_side, int(short_side * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_height, new_width


def _resize(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """Resize to (H, W); torchvision returns the image untouched when it already has that size."""
    if (image.height, image.width) == tuple(size):
        return image
    return image.resize((size[1], size[0]), resample)


def _center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """torchvision's center_crop: zero padding when the image is smaller, then a rounded central window."""
    crop_height, crop_width = size
    if crop_width > image.width or crop_height > image.height:
        left = (crop_width - image.width) // 2 if crop_width > image.width else 0
        top = (crop_height - image.height) // 2 if crop_height > image.height else 0
        padded = Image.new(image.mode, (max(crop_width, image.width), max(crop_height, image.height)), 0)
        padded.paste(image, (left, top))
        image = padded
        if (image.height, image.width) == (crop_height, crop_width):
            return image
    top = int(round((image.height - crop_height) / 2.0))
    left = int(round((image.width - crop_width) / 2.0))
    return image.crop((left, top, left + crop_width, top + crop_height))
