"""torchao int8 linear layers in a model: which layers, quantising them, and loading their flattened weights back.

What MMGPT.from_pretrained needs to load a folder written by `mmgpt quantize` (mmgpt/compress/quantize.py),
kept apart from that command so the model imports no command code and nothing here imports the model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

METHODS = ("int8",)
# the parts whose linear layers are quantised
PARTS = ("generator", "fusion", "projector", "image_encoder", "text_encoder")


def _int8_config() -> object:
    """torchao's int8 dynamic-activation int8-weight config, under its current or its older name."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    except ImportError as e:  # pragma: no cover - torchao missing or too old
        raise ImportError("int8 quantisation needs torchao >= 0.9: pip install 'mmgpt[deploy]'") from e
    return Int8DynamicActivationInt8WeightConfig()


def _quantisable(model: nn.Module) -> set[str]:
    """Names of the linear layers to quantise: every nn.Linear of PARTS except ones sharing the input embedding."""
    embedding = model.generator.get_input_embeddings().weight
    names = set()
    for name, module in model.named_modules():
        # exactly nn.Linear: nn.MultiheadAttention's out_proj subclass is read as a plain weight, not called
        if (type(module) is nn.Linear and name.split(".", 1)[0] in PARTS
                and module.weight is not embedding and module.weight.shape[0] >= 16 and module.weight.shape[1] >= 16):
            names.add(name)
    return names


def quantize_model(model: nn.Module, method: str = "int8", layers: list[str] | None = None) -> list[str]:
    """Quantise `model` in place (mmgpt.model.MMGPT; `layers`: these, else every eligible) -> the layers' names."""
    if method not in METHODS:
        raise ValueError(f"unknown quantisation method {method!r}; available: {', '.join(METHODS)}")
    from torchao.quantization import quantize_

    names = _quantisable(model) if layers is None else set(layers)
    modules = dict(model.named_modules())
    wrong = sorted(n for n in names if type(modules.get(n)) is not nn.Linear)
    if wrong:
        raise ValueError(f"cannot quantise {wrong[:3]}: not linear layers of this model")
    quantize_(model, _int8_config(), filter_fn=lambda module, fqn: fqn in names)
    return sorted(names)


def load_quantized_weights(model: nn.Module, weights: Path, record: dict) -> None:
    """Re-apply the recorded quantisation to a freshly built `model`, then fill it from the flattened file."""
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    method = record.get("method")
    if method not in METHODS:
        raise ValueError(f"{weights.parent}: config.json compression.method {method!r} is unknown; "
                         f"available: {', '.join(METHODS)}")
    layers = record.get("layers")
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"{weights.parent}: config.json compression.layers must list the quantised layers' names")
    quantize_model(model, method, layers)
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    tied = tied_keys(model)
    state, leftover = unflatten_tensor_state_dict(tensors, metadata)
    if leftover:
        raise ValueError(f"{weights} holds tensors the model does not have: {sorted(leftover)[:5]}")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    # a tied output embedding is not in the file: it shares the input embedding's tensor
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{weights} does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    model.generator.tie_weights()


def tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys of plain tensors that share an earlier key's memory (tied weights)."""
    seen, tied = set(), set()
    for key, value in model.state_dict().items():
        if type(value) is not torch.Tensor:
            continue
        where = (value.data_ptr(), tuple(value.shape))
        if where in seen:
            tied.add(key)
        seen.add(where)
    return tied
