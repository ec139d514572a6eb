"""Hugging Face vision towers (CLIP, SigLIP, ...) as the image encoder."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from PIL import Image
from transformers import AutoModel, BaseImageProcessor, CLIPImageProcessor

from mmgpt.config import ConfigError, ImageEncoderConfig
from mmgpt.encoders.base import ImageEncoder, ImageTransform, register_image_encoder, register_transform
from mmgpt.hf_models import build_hf_model, load_hf_image_processor
from mmgpt.saving import write_json

# towers with a class token in front of the patch tokens
_CLASS_TOKEN_TYPES = ("clip_vision_model", "vit", "dinov2")


def _drop_pooling_head(model: torch.nn.Module) -> None:
    """Remove the parts that only make the pooled output: they would get no gradient, which DDP rejects."""
    tower = getattr(model, "vision_model", model)
    if getattr(tower, "use_head", False):
        # SigLIP's attention-pooling head reads last_hidden_state but feeds only pooler_output
        tower.use_head = False
        del tower.head
    if model.config.model_type == "clip_vision_model" and hasattr(tower, "post_layernorm"):
        # CLIP applies post_layernorm to the pooled class token only, not to last_hidden_state
        tower.post_layernorm = torch.nn.Identity()


@register_image_encoder("hf")
class HFVisionEncoder(ImageEncoder):
    """last_hidden_state of the vision tower; a leading class token is dropped unless kept."""

    def __init__(self, cfg: ImageEncoderConfig, load_weights: bool = True) -> None:
        super().__init__()
        if cfg.name and timm.is_model(cfg.name) and not Path(cfg.name).expanduser().exists():
            # name defaults to a timm model: switching only the type would send that name to the hub
            raise ConfigError(
                f"model.image_encoder.name '{cfg.name}' is a timm model, not a Hugging Face vision tower: for type "
                "'hf' set it to a hub name or local folder, or to '' to build from kwargs (with kwargs.model_type)"
            )
        self.model = build_hf_model(
            AutoModel,
            cfg.name,
            cfg.kwargs,
            key="model.image_encoder.kwargs",
            missing_model_type="model.image_encoder.kwargs needs 'model_type' (e.g. clip_vision_model, "
            "siglip_vision_model) to build a Hugging Face vision tower from scratch",
            load_weights=load_weights,
            # a full CLIP/SigLIP checkpoint: take only its vision tower
            sub_config="vision_config",
        )
        _drop_pooling_head(self.model)
        self.name = cfg.name
        model_type = self.model.config.model_type
        self.drop_tokens = 0 if cfg.keep_prefix_tokens or model_type not in _CLASS_TOKEN_TYPES else 1

    @property
    def output_dim(self) -> int:
        """d_image: the tower's hidden size."""
        return int(self.model.config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> I (B, image_len, d_image)."""
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        return hidden[:, self.drop_tokens :]

    def image_transform(self) -> HFImageTransform:
        """The checkpoint's own image processor, or a plain resize-normalise one for a scratch tower."""
        if self.name:
            try:
                return HFImageTransform(load_hf_image_processor(self.name))
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

    def __init__(self, processor: BaseImageProcessor) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> (3, H, W) float tensor."""
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def save(self, folder: Path) -> None:
        """Write the processor's own files into `folder`."""
        self.processor.save_pretrained(folder)
        write_json(folder / "transform.json", {"type": "hf"})

    @classmethod
    def load(cls, folder: Path) -> HFImageTransform:
        """Read what `save` wrote, from `folder` alone."""
        return cls(load_hf_image_processor(folder))
