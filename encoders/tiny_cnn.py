"""A small batch-normed CNN registered with timm, for training from scratch on small images.

Registering it with timm means it is built, configured and preprocessed exactly like any
other timm model: `timm.create_model("mmgpt_tiny_cnn")` and timm's data config.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["TinyCNN"]


def _conv_bn(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    """A stem and stride-2 stages: a 64 px image through a stride-2 stem and three stages gives a 4x4 grid.

    ``stem_stride=1`` keeps the stem at full resolution (shapes a few pixels wide keep their edges);
    add a stage to keep the same grid. ``stem="space_to_depth"`` folds each stem_stride x stem_stride block of
    pixels into channels before a stride-1 stem: every pixel still reaches the stem unblurred, at a quarter of a
    full-resolution stem's activations (whose batch norm and ReLU cost most of the CNN's time on CPU).
    ``stem_tokens=True`` joins the stem's output, average-pooled to the token grid, to every token
    (``stem_width`` more channels): trained on one attribute first (shape), the stages drop the others
    (colour) stage by stage and questions about them can no longer bring them back.
    ``global_tokens=True`` joins the feature map's mean over the image to every token (``widths[-1]`` more
    channels): what the whole image shows, wherever its shape lies, in every token, so attention over several
    images can match a question ("which image shows a circle?") to an image by any of its tokens.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 96),
        stem_width: int = 24,
        stem_stride: int = 2,
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        stem_tokens: bool = False,
        stem: str = "conv",
        global_tokens: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.stem_tokens = stem_tokens
        self.global_tokens = global_tokens
        self.num_features = self.head_hidden_size = (widths[-1] * (2 if global_tokens else 1)
                                                     + (stem_width if stem_tokens else 0))
        if stem_stride not in (1, 2):
            raise ValueError(f"TinyCNN: stem_stride must be 1 or 2, got {stem_stride!r}")
        if stem == "conv":
            self.stem = _conv_bn(in_chans, stem_width, stride=stem_stride)
        elif stem == "space_to_depth":
            self.stem = nn.Sequential(nn.PixelUnshuffle(stem_stride),
                                      *_conv_bn(in_chans * stem_stride**2, stem_width, stride=1))
        else:
            raise ValueError(f"TinyCNN: stem must be 'conv' or 'space_to_depth', got {stem!r}")
        stages, prev = [], stem_width
        for width in widths:
            stages.append(nn.Sequential(_conv_bn(prev, width, stride=2), _conv_bn(width, width, stride=1)))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        """The classification head (timm interface)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """Replace the head (timm interface)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> feature map (B, C, H / (stem_stride * 2**len(widths)), W / ...)."""
        # oneDNN's (and cuDNN's) convolutions are faster on channels-last input: a default-model training
        # step's CNN forward and backward take 0.65x the time on CPU
        stem = self.stem(x.contiguous(memory_format=torch.channels_last))
        features = self.stages(stem)
        parts = [features]
        if self.global_tokens:
            parts.append(features.mean(dim=(2, 3), keepdim=True).expand_as(features))
        if self.stem_tokens:
            parts.append(nn.functional.adaptive_avg_pool2d(stem, features.shape[-2:]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the feature map and classify (timm interface)."""
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes), or pooled features when num_classes == 0."""
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 64, 64),
        "pool_size": (4, 4),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "stem.0",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "mmgpt_tiny_cnn.untrained": _cfg(),
    "mmgpt_tiny_cnn_fullres.untrained": _cfg(),
    "mmgpt_tiny_cnn_s2d.untrained": _cfg(),
    "mmgpt_small_cnn.untrained": _cfg(),
})


@register_model
def mmgpt_tiny_cnn(pretrained: bool = False, **kwargs: Any) -> TinyCNN:
    """About 0.2M parameters; a 64 px image gives a 4x4 grid of 96-d tokens."""
    kwargs.setdefault("widths", (32, 64, 96))
    kwargs.setdefault("stem_width", 24)
    return build_model_with_cfg(TinyCNN, "mmgpt_tiny_cnn", pretrained, **kwargs)


@register_model
def mmgpt_tiny_cnn_fullres(pretrained: bool = False, **kwargs: Any) -> TinyCNN:
    """mmgpt_tiny_cnn with a full-resolution 16-wide stem and a 16-wide first stage: a 4x4 grid of 96-d tokens.

    Shapes a few pixels wide keep their edges through the stem. Its forward and backward take 2.3x
    mmgpt_tiny_cnn's time on CPU; a training step of the default model about 1.4x.
    """
    kwargs.setdefault("widths", (16, 32, 64, 96))
    kwargs.setdefault("stem_width", 16)
    kwargs.setdefault("stem_stride", 1)
    return build_model_with_cfg(TinyCNN, "mmgpt_tiny_cnn_fullres", pretrained, **kwargs)


@register_model
def mmgpt_tiny_cnn_s2d(pretrained: bool = False, **kwargs: Any) -> TinyCNN:
    """mmgpt_tiny_cnn with a space-to-depth stem: each 2x2 block of pixels becomes 12 channels of a 32-wide stem.

    A 4x4 grid of 96-d tokens. Every pixel reaches the stem unblurred, as in mmgpt_tiny_cnn_fullres, while the
    stem works at 32x32: its forward and backward take 0.4x mmgpt_tiny_cnn_fullres's time on CPU under bf16
    autocast and 0.55x in fp32, for the same accuracy on the main job (bench/RESULTS.md).
    """
    kwargs.setdefault("widths", (32, 64, 96))
    kwargs.setdefault("stem_width", 32)
    kwargs.setdefault("stem_stride", 2)
    kwargs.setdefault("stem", "space_to_depth")
    return build_model_with_cfg(TinyCNN, "mmgpt_tiny_cnn_s2d", pretrained, **kwargs)


@register_model
def mmgpt_small_cnn(pretrained: bool = False, **kwargs: Any) -> TinyCNN:
    """About 1M parameters; a 64 px image gives a 4x4 grid of 192-d tokens."""
    kwargs.setdefault("widths", (64, 128, 192))
    kwargs.setdefault("stem_width", 32)
    return build_model_with_cfg(TinyCNN, "mmgpt_small_cnn", pretrained, **kwargs)
