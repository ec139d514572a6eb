"""Memory on real sizes: frozen parts in bf16, gradient checkpointing in every part that supports it."""
from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def cast_frozen(model: nn.Module, frozen: dict[str, bool], dtype: str) -> list[str]:
    """Cast the weights of fully frozen parts to `dtype` ("bf16"; "no" leaves them) -> the parts cast."""
    if dtype == "no":
        return []
    cast = [part for part, is_frozen in frozen.items() if is_frozen]
    for part in cast:
        getattr(model, part).to(torch.bfloat16)
    return cast


def enable_gradient_checkpointing(model: nn.Module) -> list[str]:
    """Recompute activations in the backward pass of the generator, HF encoders and timm encoders -> parts."""
    enabled = []
    # the reentrant variant needs inputs that require grad, which a frozen embedding's output does not
    options = {"use_reentrant": False}
    for part in ("generator", "text_encoder", "image_encoder"):
        module = getattr(model, part)
        inner = module if part == "generator" else getattr(module, "model", None)
        if inner is None:
            continue
        if getattr(inner, "supports_gradient_checkpointing", False):
            # transformers 5 renamed gradient_checkpointing_enable
            if hasattr(inner, "activation_checkpointing_enable"):
                inner.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
            enabled.append(part)
        elif hasattr(inner, "set_grad_checkpointing"):
            try:
                inner.set_grad_checkpointing(True)
                enabled.append(part)
            except (AssertionError, NotImplementedError):
                logger.info("%s (%s) has no gradient checkpointing", part, type(inner).__name__)
    return enabled
