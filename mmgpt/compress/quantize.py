"""int8 quantisation of a saved model: int8 weights, dynamic int8 activations, for the linear layers.

    mmgpt quantize MODEL OUT [--method int8]

The linear layers of the generator, fusion and projector (and the image encoder's, where it has any:
the tiny CNN has none) are quantised with torchao's `quantize_` and its int8 dynamic-activation int8-weight
config. The tied output embedding stays fp32, because quantising it would untie it from the input embedding.
OUT is a model folder like any other: its weights are torchao's tensor subclasses flattened into safetensors
(qdata + scale per matrix, no pickle), and config.json records the method, the source model and the date
under "compression", so MMGPT.from_pretrained re-applies the same quantisation to the built model before it
loads the weights.

Why torchao rather than torch.ao.quantization.quantize_dynamic: the latter measured faster on this CPU
(one thread, 4 x (512->2048->512) linears, 640 rows: fp32 215 ms, torch.ao dynamic 196 ms, torchao 239 ms;
20 rows: fp32 16.3, torch.ao 17.8, torchao 21.6 ms), but its packed parameters are opaque objects that
safetensors cannot hold (torch.save/pickle only) and it is deprecated in torch 2.x; torchao's int8 tensors
flatten to plain tensors and load back exactly. The catch, measured in bench/compress.py (wide 33M model,
one thread): its int8 matmul is 3.7x faster than fp32's, but quantising every call's activations costs about
as much again, so int8 answered 1.7x slower than fp32 in the timed run; its sure gain is 0.26x the bytes of the
quantised layers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import shutil
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from mmgpt.compress import COMPRESSION_KEY
from mmgpt.compress.int8 import METHODS, quantize_model, tied_keys
from mmgpt.outputs import add_overwrite_arg

logger = logging.getLogger(__name__)


def save_quantized(model: nn.Module, source: Path, out: Path, record: dict, overwrite: bool = False) -> None:
    """Write OUT: the source folder's processor and part configs, flattened int8 weights and the record.

    An earlier model folder at OUT is replaced only with `overwrite` (mmgpt.outputs).
    """
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    from mmgpt.model import CONFIG_NAME, WEIGHTS_NAME
    from mmgpt.model_card import CARD_NAME, card_datasets, write_model_card
    from mmgpt.outputs import writing_output_folder
    from mmgpt.saving import TEMP_MARKER

    # tied tensors appear once in the file, as save_model writes them
    tied = tied_keys(model)
    state = {key: value.detach() for key, value in model.state_dict().items() if key not in tied}
    tensors, metadata = flatten_tensor_state_dict(state)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    config = json.loads((source / CONFIG_NAME).read_text())
    config[COMPRESSION_KEY] = record
    with writing_output_folder(out, "model", overwrite=overwrite) as tmp:
        for path in source.iterdir():
            # a marker a killed save left in the source names that save's temp folder, not this one
            if path.name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, TEMP_MARKER):
                continue
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, tmp / path.name)
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        # the source's card describes the fp32 model and its metrics: this one says what int8 changed
        write_model_card(tmp, model.config, model, datasets=card_datasets(source), compression=record)


def quantize(source: str | Path, out: str | Path, method: str = "int8", overwrite: bool = False) -> Path:
    """Quantise the model in `source` and save it to `out` (an earlier model there: `overwrite`) -> `out`."""
    from mmgpt.model import MMGPT, resolve_model_path
    from mmgpt.outputs import check_output_folder

    check_output_folder(out, "model", overwrite=overwrite)  # before the slow part
    source_path = resolve_model_path(source)
    model = MMGPT.from_pretrained(source_path)
    if COMPRESSION_KEY in json.loads((source_path / "config.json").read_text()):
        raise ValueError(f"{source_path} is already quantised; quantise the fp32 model it came from")
    layers = quantize_model(model, method)
    record = {"method": method, "library": "torchao", "source": str(Path(source_path).resolve()),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "layers": layers}
    save_quantized(model, source_path, Path(out), record, overwrite=overwrite)
    logger.info("quantised %d linear layers to %s", len(layers), out)
    return Path(out)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`mmgpt quantize MODEL OUT [--method int8]`."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (or hf://org/name)")
    parser.add_argument("out", help="folder to write the quantised model to (new or empty, unless --overwrite)")
    parser.add_argument("--method", default="int8", choices=METHODS, help="quantisation method (default: int8)")
    add_overwrite_arg(parser, "model")
    args = parser.parse_args(argv)
    print(quantize(args.model, args.out, args.method, args.overwrite))
    return 0

