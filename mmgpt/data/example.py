"""The unit every dataset reader produces and every collator consumes."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Union

from mmgpt.images import ImageInput

if TYPE_CHECKING:  # readers and metrics use Examples without torch
    import torch

# what a reader gives (a path, bytes, an image), or the (3, H, W) pixels once a dataset has loaded it
ImageSource = Union[ImageInput, "torch.Tensor"]

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


def blinded(examples: list[Example]) -> list[Example]:
    """The examples with every image replaced by one constant grey image (one object, so it is decoded once)."""
    import numpy as np

    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    return [replace(example, image=grey) for example in examples]
