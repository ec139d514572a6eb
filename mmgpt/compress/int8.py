"""Quantised layers in a model: which layers, quantising them, and loading a quantised folder's weights back.

What the model folder's writer and loader (mmgpt.model_folder) need for a folder of `mmgpt quantize`
(mmgpt/compress/quantize.py, which says what each method does), kept apart from that command so the folder code
imports no command code and nothing here imports the model. The int8 layers are mmgpt/compress/int8_layers.py.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from mmgpt.compress import DEFAULT_QUANTIZATION, QUANTIZATION_METHODS
from mmgpt.compress.int8_layers import Int8Embedding, Int8Linear, quantize_rows

METHODS = tuple(QUANTIZATION_METHODS)
LIBRARIES = {"int8": "torch", "bf16": "torch", "int8-torchao": "torchao"}
# the parts whose linear layers are quantised
PARTS = ("generator", "fusion", "projector", "image_encoder", "text_encoder")


def _int8_config() -> object:
    """torchao's int8 dynamic-activation int8-weight config, under its current or its older name."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    except ImportError as e:  # pragma: no cover - torchao missing or too old
        raise ImportError("int8-torchao quantisation needs torchao >= 0.9: pip install 'mmgpt[deploy]'") from e
    return Int8DynamicActivationInt8WeightConfig()


def _quantisable(model: nn.Module, method: str) -> set[str]:
    """Names of the layers `method` quantises: the nn.Linear layers of PARTS (and, for int8, the token embedding)."""
    embedding = model.generator.get_input_embeddings()
    names = set()
    for name, module in model.named_modules():
        # exactly nn.Linear: nn.MultiheadAttention's out_proj subclass is read as a plain weight, not called
        if (type(module) is nn.Linear and name.split(".", 1)[0] in PARTS
                and module.weight.shape[0] >= 16 and module.weight.shape[1] >= 16):
            # torchao would untie a tied output layer from the input embedding; int8 quantises both as one
            if method == "int8" or module.weight is not embedding.weight:
                names.add(name)
        if method == "int8" and module is embedding and type(module) is nn.Embedding:
            names.add(name)
    return names


def _to_int8(model: nn.Module, names: set[str], quantize: bool) -> None:
    """Replace the named nn.Linear / nn.Embedding layers by int8 ones, tied layers sharing one int8 matrix.

    `quantize`: from the layers' float weights; else empty, to be filled by load_state_dict and then packed.
    """
    modules = dict(model.named_modules())
    shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id of a float weight -> its int8 weight and scales

    def int8_of(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if id(weight) not in shared:
            shared[id(weight)] = quantize_rows(weight) if quantize else (
                torch.zeros(weight.shape, dtype=torch.int8), torch.ones(weight.shape[0]))
        return shared[id(weight)]

    # embeddings first, so an output layer tied to one finds its int8 matrix
    for name in sorted(names, key=lambda n: (type(modules.get(n)) is not nn.Embedding, n)):
        module = modules[name]
        weight, scale = int8_of(module.weight)
        if type(module) is nn.Embedding:
            new = Int8Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx, weight, scale)
        else:
            new = Int8Linear(module.in_features, module.out_features, module.bias is not None, weight, scale)
            if module.bias is not None:
                new.bias.copy_(module.bias.detach().float())
            if quantize:
                new.pack()
        model.set_submodule(name, new)


def quantize_model(model: nn.Module, method: str = DEFAULT_QUANTIZATION, layers: list[str] | None = None,
                   quantize: bool = True) -> list[str]:
    """Quantise `model` in place (mmgpt.model.MMGPT; `layers`: these, else every eligible) -> the layers' names.

    `quantize=False` builds the layers empty, for load_quantized_weights to fill.
    """
    if method not in METHODS:
        raise ValueError(f"unknown quantisation method {method!r}; available: {', '.join(METHODS)}")
    if method == "bf16":
        model.to(torch.bfloat16)
        return []
    names = _quantisable(model, method) if layers is None else set(layers)
    modules = dict(model.named_modules())
    kinds = (nn.Linear, nn.Embedding) if method == "int8" else (nn.Linear,)
    wrong = sorted(n for n in names if type(modules.get(n)) not in kinds)
    if wrong:
        raise ValueError(f"cannot quantise {wrong[:3]}: not {' or '.join(k.__name__ for k in kinds)} layers of "
                         "this model")
    if method == "int8":
        _to_int8(model, names, quantize)
    else:
        from torchao.quantization import quantize_

        quantize_(model, _int8_config(), filter_fn=lambda module, fqn: fqn in names)
    return sorted(names)


def recorded_method(record: dict) -> str:
    """The method a folder's compression record names ('int8' from torchao: folders written before int8 had its
    own kernels), checked."""
    method = record.get("method")
    if method == "int8" and record.get("library") == "torchao":
        return "int8-torchao"
    if method not in METHODS:
        raise ValueError(f"config.json compression.method {method!r} is unknown; available: {', '.join(METHODS)}")
    return method


def load_quantized_weights(model: nn.Module, weights: Path, record: dict) -> None:
    """Rebuild the recorded quantised layers in a freshly built `model`, then fill them from the file."""
    method = recorded_method(record)
    layers = record.get("layers")
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"{weights.parent}: config.json compression.layers must list the quantised layers' names")
    quantize_model(model, method, layers, quantize=False)
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    tied = tied_keys(model)
    if method == "int8-torchao":
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

        state, leftover = unflatten_tensor_state_dict(tensors, metadata)
        if leftover:
            raise ValueError(f"{weights} holds tensors the model does not have: {sorted(leftover)[:5]}")
    else:
        state = tensors
    # int8 and bf16 copy into the built tensors, so a tied layer keeps sharing its embedding's
    missing, unexpected = model.load_state_dict(state, strict=False, assign=method == "int8-torchao")
    # a tied output embedding is not in the file: it shares the input embedding's tensor
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{weights} does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if method == "int8":
        for module in model.modules():
            if isinstance(module, Int8Linear):
                module.pack()
    else:
        model.generator.tie_weights()


def quantized_state(model: nn.Module, record: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A quantised model's state dict as plain tensors for safetensors, each tied tensor once (as save_model writes
    them), and the file's metadata; `record` is the folder's compression record."""
    tied = tied_keys(model)
    state = {key: value.detach() for key, value in model.state_dict().items() if key not in tied}
    if recorded_method(record) != "int8-torchao":
        return {k: v.contiguous() for k, v in state.items()}, {"format": "pt"}
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    tensors, metadata = flatten_tensor_state_dict(state)
    return {k: v.contiguous() for k, v in tensors.items()}, metadata


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
