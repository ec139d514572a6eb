"""The unit every dataset reader produces and every collator consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

ImageSource = Union[str, Path, bytes, Image.Image, Any]

TASKS = ("vqa", "caption", "chat")


@dataclass
class Example:
    """One (image, prompt) -> answer pair; the prompt already has its task template applied."""

    image: ImageSource
    prompt: str
    answer: str
    task: str = "vqa"
    id: Any = None
    source: str = ""
    # extra fields a reader wants to keep for evaluation (question_type, all human answers, ...)
    meta: dict = field(default_factory=dict)
