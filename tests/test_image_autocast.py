"""TrainConfig.image_encoder_autocast: bf16 for the image encoder's training steps only, never at evaluation."""
from __future__ import annotations

import pytest
import torch
from tiny import (
    build,
    make_batch,
    one_thread,  # noqa: F401
    tiny_config,
)

from mmgpt.config import ConfigError
from mmgpt.training.config import TrainConfig
from mmgpt.training.loop import image_autocast


def image_dtypes(model, batch) -> list[torch.dtype]:
    """The dtype of the image encoder's output in one forward pass of `batch`."""
    seen = []
    handle = model.image_encoder.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    try:
        model(**batch)
    finally:
        handle.remove()
    return seen


@pytest.mark.usefixtures("one_thread")
def test_image_encoder_trains_in_bf16_and_evaluates_in_float32() -> None:
    model = build(tiny_config())
    batch = make_batch(model, ["what color is the shape?", "is there a circle?"], ["red", "yes"])
    model.train()
    assert image_dtypes(model, batch) == [torch.float32]
    model.train_image_autocast = torch.bfloat16
    assert image_dtypes(model, batch) == [torch.bfloat16]
    out = model(**batch)
    # the rest of the model stays float32, and gradients reach the image encoder through the cast
    assert out.logits.dtype == torch.float32
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.image_encoder.parameters())
    model.eval()
    assert image_dtypes(model, batch) == [torch.float32]


def test_auto_follows_the_device() -> None:
    cpu = torch.device("cpu")
    assert image_autocast("bf16", cpu) and not image_autocast("no", cpu)
    assert image_autocast("auto", cpu) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert not image_autocast("auto", torch.device("meta"))


def test_unknown_setting_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"image_encoder_autocast must be one of \('no', 'bf16', 'auto'\)"):
        TrainConfig(image_encoder_autocast="fp16")
