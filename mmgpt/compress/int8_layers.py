"""int8 layers for CPU inference: int8 weights with one fp32 scale per output row, stored as plain tensors.

`Int8Linear` runs PyTorch's dynamic quantised matmul (`quantized::linear_dynamic`, the fbgemm/x86 kernels
behind `torch.ao.quantization.quantize_dynamic`): each call quantises its input to 8 bits and multiplies
in int8. Its state dict is the int8 `weight`, its fp32 `weight_scale` and the fp32 `bias`, so a model
folder stays plain safetensors; the kernel's packed copy of the weight is rebuilt from them (`pack`) and
is never saved. `Int8Embedding` looks rows up in the same kind of table, so a tied output layer and its
input embedding share one int8 matrix.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as functional
from torch import nn

# quantized::linear_dynamic's activations use 7 bits: without VNNI, fbgemm's u8 x s8 pair sums would
# saturate int16 at 8 bits (torch.ao's dynamic Linear calls it the same way)
REDUCE_RANGE = True


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> int8 (N, K) and fp32 scales (N,), symmetric per row: weight ~= int8 * scale[:, None]."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and dynamically quantised int8 activations; input and output any float."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight: torch.Tensor | None = None, weight_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        shape = (out_features, in_features)
        self.register_buffer("weight", weight if weight is not None else torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("weight_scale", weight_scale if weight_scale is not None
                             else torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed: object | None = None

    def pack(self) -> Int8Linear:
        """Rebuild the kernel's packed weight from `weight`, `weight_scale` and `bias` (after they change)."""
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # the quantized-tensor constructor is deprecated, but it is still what the x86 kernel's prepack takes
            warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
            qweight = torch._make_per_channel_quantized_tensor(
                self.weight.cpu(), self.weight_scale.double().cpu(), zero_points, 0)
        self._packed = torch.ops.quantized.linear_prepack(qweight, None if self.bias is None else self.bias.cpu())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features), in x's dtype."""
        if self._packed is None:
            raise RuntimeError("Int8Linear has no packed weight: call pack() after loading its state")
        return linear_dynamic(x, self._packed)

    def extra_repr(self) -> str:
        """in/out features and bias, as nn.Linear prints them."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def linear_dynamic(x: torch.Tensor, packed: object) -> torch.Tensor:
    """(..., in_features) -> (..., out_features) through a packed int8 weight, in x's dtype."""
    out = torch.ops.quantized.linear_dynamic(x.float().contiguous(), packed, REDUCE_RANGE)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def pack_side_by_side(layers: Sequence[Int8Linear]) -> object:
    """One packed weight whose output is the `layers`' outputs concatenated (layers that read the same input).

    One call quantises the input once and runs one kernel: the same numbers as calling each layer (the input's
    scale depends on the input alone, and each output column on its own weight row and scale).
    """
    fused = Int8Linear(layers[0].in_features, sum(layer.out_features for layer in layers),
                       any(layer.bias is not None for layer in layers), torch.cat([layer.weight for layer in layers]),
                       torch.cat([layer.weight_scale for layer in layers]))
    if fused.bias is not None:
        fused.bias = torch.cat([layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
                                for layer in layers])
    return fused.pack()._packed


class Int8Embedding(nn.Module):
    """An embedding table of int8 rows with one fp32 scale each; looks up fp32 vectors."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 weight: torch.Tensor | None = None, weight_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        shape = (num_embeddings, embedding_dim)
        self.register_buffer("weight", weight if weight is not None else torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("weight_scale", weight_scale if weight_scale is not None
                             else torch.ones(num_embeddings, dtype=torch.float32))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(...) token ids -> (..., embedding_dim) fp32."""
        rows = functional.embedding(input_ids, self.weight).float()
        return rows * self.weight_scale[input_ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        """Table size, as nn.Embedding prints it."""
        return f"{self.num_embeddings}, {self.embedding_dim}"
