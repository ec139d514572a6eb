"""Model compression for deployment: quantisation (quantize.py, int8.py) and structured pruning (prune.py).

A compressed model is a normal model folder; its config.json records how it was made under "compression".
"""
from __future__ import annotations

from typing import Any

COMPRESSION_KEY = "compression"

# `mmgpt quantize --method`: name -> what it does (the first is the default; timings: docs/deployment.md)
QUANTIZATION_METHODS: dict[str, str] = {
    "int8": "int8 weights (one scale per output row) and int8 dynamic activations, PyTorch's x86 (fbgemm) kernels, "
            "for every linear layer and the token embedding with its tied output layer; CPU only",
    "bf16": "every weight in bfloat16: half the bytes; faster than fp32 where the CPU has native bf16 matmuls",
    "int8-torchao": "torchao's int8 weight and dynamic-activation tensors for the linear layers (the tied output "
                    "layer stays fp32); slower than fp32 on a CPU",
}
DEFAULT_QUANTIZATION = next(iter(QUANTIZATION_METHODS))


def is_quantized(config: dict[str, Any]) -> bool:
    """Whether a saved model's config.json data records a quantisation (such a model cannot be trained or pruned)."""
    return (config.get(COMPRESSION_KEY) or {}).get("method") in QUANTIZATION_METHODS


def runs_on_cpu_only(config: dict[str, Any]) -> bool:
    """Whether a saved model's config.json data records a quantisation whose kernels run on the CPU only (int8)."""
    record = config.get(COMPRESSION_KEY) or {}
    return record.get("method") == "int8" and record.get("library") != "torchao"
