"""Hugging Face vision towers (CLIP, SigLIP, ...) as the image encoder."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPImageProcessor

from mmgpt.config import ConfigError, ImageEncoderConfig
from mmgpt.encoders.base import ImageEncoder, ImageTransform, register_image_encoder, register_transform

# towers with a class token in front of the patch tokens
_CLASS_TOKEN_TYPES = ("clip_vision_model", "vit", "dinov2")


@register_image_encoder("hf")
class HFVisionEncoder(ImageEncoder):
    """last_hidden_state of the vision tower; a leading class token is dropped unless kept."""

    def __init__(self, cfg: ImageEncoderConfig, load_weights: bool = True) -> None:
        super().__init__()
        if cfg.name:
            config = AutoConfig.from_pretrained(cfg.name)
            # a full CLIP/SigLIP checkpoint: take only its vision tower
            config = getattr(config, "vision_config", config)
            self.model = AutoModel.from_pretrained(cfg.name, config=config) if load_weights else AutoModel.from_config(config)
        else:
            kwargs = dict(cfg.kwargs)
            if "model_type" not in kwargs:
                raise ConfigError(
                    "model.image_encoder.kwargs needs 'model_type' (e.g. clip_vision_model, siglip_vision_model) "
                    "to build a Hugging Face vision tower from scratch"
                )
            self.model = AutoModel.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs))
        self.name = cfg.name
        model_type = self.model.config.model_type
        self.drop_tokens = 0 if cfg.keep_prefix_tokens or model_type not in _CLASS_TOKEN_TYPES else 1
        self.output_dim = int(self.model.config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> I (B, image_len, d_image)."""
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        return hidden[:, self.drop_tokens :]

    def rebuild_kwargs(self) -> dict:
        """The tower's transformers config, so a saved model rebuilds without the hub."""
        return self.model.config.to_dict()

    def image_transform(self) -> "HFImageTransform":
        """The checkpoint's own image processor, or a plain resize-normalise one for a scratch tower."""
        if self.name:
            try:
                return HFImageTransform(AutoImageProcessor.from_pretrained(self.name))
            except (OSError, ValueError):
                pass
        size = int(self.model.config.image_size)
        return HFImageTransform(
            CLIPImageProcessor(
                size={"height": size, "width": size},
                crop_size={"height": size, "width": size},
                do_center_crop=False,
                image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5],
            )
        )


@register_transform("hf")
class HFImageTransform(ImageTransform):
    """A transformers image processor applied to one PIL image."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> (3, H, W) float tensor."""
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def save(self, folder: Path) -> None:
        """Write the processor's own files into `folder`."""
        self.processor.save_pretrained(folder)
        (folder / "transform.json").write_text(json.dumps({"type": "hf"}))

    @classmethod
    def load(cls, folder: Path) -> "HFImageTransform":
        """Read what `save` wrote."""
        return cls(AutoImageProcessor.from_pretrained(folder))
