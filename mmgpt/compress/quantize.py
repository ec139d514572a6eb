"""Quantisation of a saved model for CPU deployment: int8 (the default), bf16, or torchao's int8.

    mmgpt quantize MODEL OUT [--method int8|bf16|int8-torchao]

int8 (mmgpt.compress.int8): every linear layer of the generator, fusion, projector and encoders gets int8
weights, one fp32 scale per output row, and runs PyTorch's dynamic int8 kernels (`quantized::linear_dynamic`,
x86/fbgemm: activations quantised per call); the generator's token embedding becomes an int8 table with one
scale per row, shared with the tied output layer, so the largest matrix of a small model is read as int8
too. It is the default because it is the fastest way found to run a model on a CPU: on a 2-core AMD EPYC,
the ~230M configs/gpu200m.yaml model decoded 2.8x the tokens/s of fp32 (Hugging Face generate) at batch 1 and
reached its first token in 0.34x the time, where bf16 gained 1.1x and torchao's int8 ran at 0.46x
(bench/cpu_inference.py, docs/deployment.md "Quantisation"). It runs on the CPU only.

bf16 stores and runs every weight in bfloat16. int8-torchao is torchao's `quantize_` with
`Int8DynamicActivationInt8WeightConfig` (the tied output embedding stays fp32): its tensor subclasses are
flattened into safetensors (qdata + scale per matrix); its per-call activation quantisation runs as separate
ops, which made it slower than fp32 on the CPU.

OUT is a model folder like any other: plain safetensors (no pickle), and config.json records the method, the
quantised layers, the source model and the date under "compression", so MMGPT.from_pretrained rebuilds the
same layers before it loads the weights.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
from pathlib import Path

from mmgpt.compress import COMPRESSION_KEY, DEFAULT_QUANTIZATION, QUANTIZATION_METHODS
from mmgpt.compress.int8 import LIBRARIES, METHODS, quantize_model
from mmgpt.model_folder import CONFIG_NAME, resolve_model_path
from mmgpt.outputs import add_overwrite_arg

logger = logging.getLogger(__name__)


def quantize(source: str | Path, out: str | Path, method: str = DEFAULT_QUANTIZATION,
             overwrite: bool = False) -> Path:
    """Quantise the model in `source` and save it to `out` (an earlier model there: `overwrite`) -> `out`."""
    from mmgpt.model import MMGPT
    from mmgpt.model_card import card_datasets
    from mmgpt.outputs import check_not_source, check_output_folder

    check_output_folder(out, "model", overwrite=overwrite)  # before the slow part
    source_path = resolve_model_path(source)
    check_not_source(out, source_path)
    if method not in METHODS:
        raise ValueError(f"unknown quantisation method {method!r}; available: {', '.join(METHODS)}")
    model = MMGPT.from_pretrained(source_path)
    if COMPRESSION_KEY in json.loads((source_path / CONFIG_NAME).read_text()):
        raise ValueError(f"{source_path} is already quantised; quantise the fp32 model it came from")
    layers = quantize_model(model, method)
    record = {"method": method, "library": LIBRARIES[method], "source": str(Path(source_path).resolve()),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "layers": layers}
    # the source's card describes the fp32 model and its metrics: this one says what quantising changed
    model.save_pretrained(out, overwrite=overwrite, compression=record, datasets=card_datasets(source_path))
    logger.info("quantised %s to %s (%s)", f"{len(layers)} layers" if layers else "every weight", out, method)
    return Path(out)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`mmgpt quantize MODEL OUT [--method int8|bf16|int8-torchao]`."""
    methods = "; ".join(f"{name}: {text}" for name, text in QUANTIZATION_METHODS.items())
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        epilog="int8 is the default because it ran fastest on a CPU: on a 2-core AMD EPYC the ~230M "
               "configs/gpu200m.yaml model decoded 2.8x the tokens/s of fp32 at batch 1 and reached its first token "
               "in 0.34x the time; bf16 1.1x; int8-torchao 0.46x, slower than fp32 (docs/deployment.md, Quantisation).")
    parser.add_argument("model", help="model folder (or hf://org/name)")
    parser.add_argument("out", help="folder to write the quantised model to (new or empty, unless --overwrite)")
    parser.add_argument("--method", default=DEFAULT_QUANTIZATION, choices=METHODS,
                        help=f"default: {DEFAULT_QUANTIZATION}. {methods}")
    add_overwrite_arg(parser, "model")
    args = parser.parse_args(argv)
    print(quantize(args.model, args.out, args.method, args.overwrite))
    return 0
