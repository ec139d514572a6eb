"""Any timm model as the image encoder; preprocessing comes from timm's own data config."""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from mmgpt.config import ConfigError, ImageEncoderConfig, load_json
from mmgpt.encoders.base import ImageEncoder, ImageTransform, register_image_encoder, register_transform
from mmgpt.saving import write_json

logger = logging.getLogger(__name__)


@register_image_encoder("timm")
class TimmImageEncoder(ImageEncoder):
    """Grid or patch tokens from `forward_features`: CNN maps are flattened, ViT prefix tokens dropped."""

    def __init__(self, cfg: ImageEncoderConfig, load_weights: bool = True) -> None:
        super().__init__()
        if not timm.is_model(cfg.name):
            # timm has over a thousand models: list the nearest names rather than all of them
            close = difflib.get_close_matches(cfg.name, timm.list_models(), n=5)
            raise ConfigError(
                f"model.image_encoder.name: '{cfg.name}' is not a timm model"
                + (f"; closest: {', '.join(close)}" if close else "")
                + " (see timm.list_models(); e.g. resnet18, vit_base_patch16_224, mmgpt_tiny_cnn)"
            )
        kwargs: dict[str, Any] = dict(cfg.kwargs)
        if "checkpoint_path" in kwargs:
            # timm reads a checkpoint_path that is not .safetensors with torch.load, i.e. unpickles it
            raise ConfigError(
                "model.image_encoder.kwargs.checkpoint_path is not supported: put a .safetensors file in "
                "model.image_encoder.weights instead"
            )
        weights = Path(cfg.weights).expanduser() if load_weights and cfg.weights else None
        from_model = weights is not None and weights.is_dir()
        pretrained = load_weights and (cfg.pretrained or weights is not None) and not from_model
        if weights is not None and not from_model:
            if not weights.is_file():
                where = "" if weights.is_absolute() else f" (relative to the working folder {Path.cwd()})"
                raise ConfigError(f"model.image_encoder.weights: no .safetensors file or saved model folder at "
                                  f"{weights}{where}")
            # timm loads a local file through the same path as hub weights, without pickle for .safetensors
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        self.model = timm.create_model(cfg.name, pretrained=pretrained, num_classes=0, **kwargs)
        if from_model:
            try:
                self.model.load_state_dict(saved_image_encoder(weights, cfg.name))
            except RuntimeError as e:
                raise ConfigError(f"model.image_encoder.weights: the image encoder in {weights} does not fit the one "
                                  f"configured here (do model.image_encoder.kwargs differ?): {e}") from None
        self.num_prefix_tokens = 0 if cfg.keep_prefix_tokens else int(getattr(self.model, "num_prefix_tokens", 0))
        self.data_config = resolve_data_config({}, model=self.model)
        if "img_size" in kwargs:
            # the pretrained config still names the checkpoint's size; the model was built for another
            size = kwargs["img_size"]
            size = (size, size) if isinstance(size, int) else tuple(size)
            self.data_config["input_size"] = (3, *size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> I (B, image_len, d_image)."""
        features = self.model.forward_features(pixel_values)
        if features.ndim == 4:
            # NCHW feature map of a CNN: each spatial cell is a token
            return features.flatten(2).transpose(1, 2)
        return features[:, self.num_prefix_tokens :]

    @property
    def output_dim(self) -> int:
        """d_image: the model's feature width."""
        return int(self.model.num_features)

    def image_transform(self) -> TimmTransform:
        """timm's deterministic eval transform for this model's data config."""
        return TimmTransform(self.data_config)


def saved_image_encoder(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """The timm image encoder's weights in a saved mmgpt model folder, checked to be a `name` model."""
    from safetensors import SafetensorError, safe_open

    # mmgpt.model_folder's file names; that module builds encoders, so this one cannot import it
    config_name, weights_name = "config.json", "model.safetensors"
    what = f"model.image_encoder.weights: {folder}"
    if not (folder / config_name).is_file() or not (folder / weights_name).is_file():
        raise ConfigError(f"{what} is a folder but not a saved mmgpt model (needs {config_name} and {weights_name})")
    saved = load_json(folder / config_name).get("model", {}).get("image_encoder", {})
    kind = saved.get("type", "timm")
    if kind != "timm" or saved.get("name") != name:
        raise ConfigError(f"{what} holds a {kind} image encoder '{saved.get('name')}', not the timm model '{name}' "
                          "that model.image_encoder.name asks for")
    prefix = "image_encoder.model."
    try:
        # only the image encoder's tensors are read, not the generator's
        with safe_open(str(folder / weights_name), framework="pt") as f:
            state = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{what}: {weights_name} is not a complete safetensors file ({e})") from e
    if not state:
        raise ConfigError(f"{what}: its {weights_name} has no image encoder weights (a quantised or LoRA model?)")
    return state


@register_transform("timm")
class TimmTransform(ImageTransform):
    """timm's eval transform (resize, center crop, normalise) from a data config."""

    def __init__(self, data_config: dict) -> None:
        self.data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
        self.transform = create_transform(**self.data_config, is_training=False)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> (3, H, W) float tensor."""
        return self.transform(image)

    def save(self, folder: Path) -> None:
        """Write the data config as JSON."""
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()}
        write_json(folder / "transform.json", {"type": "timm", "data_config": config}, indent=2)

    @classmethod
    def load(cls, folder: Path) -> TimmTransform:
        """Read what `save` wrote."""
        meta = folder / "transform.json"
        data_config = load_json(meta).get("data_config")
        if not isinstance(data_config, dict):
            raise ConfigError(
                f"{meta} must hold a 'data_config' mapping (timm's data config), got {type(data_config).__name__}"
            )
        return cls(data_config)
