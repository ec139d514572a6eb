"""How the server admits and serves requests: `ServerSettings`, whose defaults are the command line's and the docs'."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerSettings:
    """How the server admits and serves requests; `mmgpt serve --max-batch-size` etc. set the field of that name."""

    model_name: str
    max_batch_size: int = 32  # rows decoded together at most
    max_wait_ms: float = 5.0  # how long the first waiting request waits for others to batch with
    max_queue: int = 256  # waiting requests beyond which 429 is answered
    max_body_mb: float = 20.0  # request bodies over this get 413
    timeout_s: float = 60.0  # requests not answered by then get 504
    api_key: str | None = None
    allow_image_urls: bool = False
    max_tokens: int = 1024  # new tokens a request may ask for, below the model's own position limit
    body_timeout_s: float = 10.0  # a request body not received by then gets 408
    keep_alive_s: float = 5.0  # a connection without a request (idle, or its headers unfinished) is closed
    max_connections: int = 512  # connections beyond this get 503
    image_cache_mb: float = 256.0  # image-encoder outputs kept for images sent again (0: none)
    max_images_per_prompt: int = 0  # image_url parts one request may carry; 0: the model's model.max_images


def images_per_prompt(settings: ServerSettings, model_max_images: int) -> int:
    """The image_url parts one request may carry: the setting, or the model's max_images; ValueError above it."""
    allowed = settings.max_images_per_prompt or model_max_images
    if not 1 <= allowed <= model_max_images:
        raise ValueError(f"--max-images-per-prompt {allowed}: this model reads 1 to {model_max_images} images per "
                         f"prompt (model.max_images)")
    return allowed


def default(name: str) -> object:
    """The default of ServerSettings field `name` (the one place a serving default is written)."""
    field = next(f for f in dataclasses.fields(ServerSettings) if f.name == name)
    return field.default


def served_name(model_path: str | Path) -> str:
    """The model id clients send: the folder's name, or NAME for a training run's runs/NAME/model."""
    text = str(model_path).rstrip("/")
    if text.startswith("hf://"):
        return text[len("hf://"):]
    path = Path(text).expanduser().resolve()
    return path.parent.name if path.name == "model" and path.parent.name else path.name
