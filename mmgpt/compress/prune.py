"""Structured pruning of a saved model: whole MLP channels of the generator are removed, so matrices shrink.

    mmgpt prune MODEL OUT --amount 0.5 [--parts generator]

Importance score: weight magnitude. Channel j of a layer's MLP scores the product of the L2 norms of the
weights that write it (the up and gate rows, gpt2's c_fc column) and of the weights that read it (the down
column, gpt2's c_proj row): a channel with a small input or output weight contributes little either way.
Every layer keeps the same number of channels (its own top ones), so the generator config stays a plain
config with one intermediate_size (n_inner for gpt2). OUT records the method, amount, source and date
under "compression" in config.json; recover the accuracy with `train.py init_from=OUT`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
from pathlib import Path

import torch
from torch import nn

from mmgpt.compress import is_quantized
from mmgpt.outputs import add_overwrite_arg

logger = logging.getLogger(__name__)

PARTS = ("generator",)


def check_amount(amount: float) -> float:
    """`amount` if it is a share strictly between 0 and 1, else a ValueError naming the allowed range."""
    if not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise ValueError(f"--amount must be a share of channels to remove in (0, 1), got {amount!r}")
    return float(amount)


def _mlp_layers(generator: nn.Module) -> list[tuple[list[nn.Module], list[nn.Module], str]]:
    """Per layer: (modules writing the hidden channels, modules reading them, layout) for gpt2/llama/qwen2."""
    model_type = generator.config.model_type
    if model_type == "gpt2":
        return [([block.mlp.c_fc], [block.mlp.c_proj], "conv1d") for block in generator.transformer.h]
    if hasattr(generator, "model") and hasattr(generator.model, "layers"):
        layers = generator.model.layers
        if all(hasattr(layer.mlp, "gate_proj") for layer in layers):
            return [([layer.mlp.gate_proj, layer.mlp.up_proj], [layer.mlp.down_proj], "linear") for layer in layers]
    raise ValueError(f"pruning supports gpt2, llama and qwen2 generators (gated MLPs with gate/up/down_proj); "
                     f"this generator is {model_type!r}")


def _shrink(module: nn.Module, keep: torch.Tensor, dim: int) -> None:
    """Keep only the entries `keep` of `module`'s weight along `dim` (and of its bias where that dim is out)."""
    weight = module.weight.data.index_select(dim, keep).clone()
    module.weight = nn.Parameter(weight)
    bias = getattr(module, "bias", None)
    # a bias follows the output dimension: dim 0 of nn.Linear weights, dim 1 of Conv1D ones
    out_dim = 1 if type(module).__name__ == "Conv1D" else 0
    if bias is not None and dim == out_dim:
        module.bias = nn.Parameter(bias.data.index_select(0, keep).clone())
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif hasattr(module, "nf"):
        module.nf = module.weight.shape[1]


def prune_generator_mlp(generator: nn.Module, amount: float) -> int:
    """Remove the `amount` share of least important MLP channels in every layer -> the new channel count."""
    check_amount(amount)
    layers = _mlp_layers(generator)
    for writers, readers, layout in layers:
        # channels: dim 0 of Linear outputs / dim 1 of Linear inputs; Conv1D stores weights transposed
        out_dim, in_dim = (1, 0) if layout == "conv1d" else (0, 1)
        width = writers[0].weight.shape[out_dim]
        keep_count = max(1, round(width * (1 - amount)))
        write_norm = torch.stack([w.weight.norm(dim=in_dim) for w in writers]).prod(dim=0)
        read_norm = torch.stack([r.weight.norm(dim=out_dim) for r in readers]).prod(dim=0)
        keep = torch.topk(write_norm * read_norm, keep_count).indices.sort().values
        for module in writers:
            _shrink(module, keep, out_dim)
        for module in readers:
            _shrink(module, keep, in_dim)
    key = "n_inner" if generator.config.model_type == "gpt2" else "intermediate_size"
    setattr(generator.config, key, keep_count)
    return keep_count


def prune_model(model: nn.Module, amount: float, parts: tuple[str, ...] = PARTS) -> dict:
    """Prune `model` (mmgpt.model.MMGPT) in place and update its config -> what was removed, for the record."""
    check_amount(amount)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"--parts: cannot prune {', '.join(unknown)}; prunable parts: {', '.join(PARTS)} "
                         "(MLP channels of the generator)")
    before = model.num_parameters()
    key = "n_inner" if model.generator.config.model_type == "gpt2" else "intermediate_size"
    old = model.generator.config.to_dict().get(key) or 4 * model.generator.config.hidden_size
    new = prune_generator_mlp(model.generator, amount)
    model.config.generator.kwargs[key] = new
    return {"generator": {key: [old, new]}, "parameters": [before, model.num_parameters()]}


def prune(source: str | Path, out: str | Path, amount: float = 0.5, parts: tuple[str, ...] = PARTS,
          overwrite: bool = False) -> Path:
    """Prune the model in `source` and save the smaller model to `out` (replacing a model there: `overwrite`)."""
    from mmgpt.model import MMGPT
    from mmgpt.model_folder import CONFIG_NAME, resolve_model_path
    from mmgpt.outputs import check_not_source, check_output_folder

    check_amount(amount)
    check_output_folder(out, "model", overwrite=overwrite)  # before the slow part
    source_path = resolve_model_path(source)
    check_not_source(out, source_path)
    data = json.loads((source_path / CONFIG_NAME).read_text())
    if is_quantized(data):
        raise ValueError(f"{source_path} is quantised; prune the fp32 model it came from, then quantise")
    model = MMGPT.from_pretrained(source_path)
    changes = prune_model(model, amount, tuple(parts))
    record = {"method": "prune", "score": "weight magnitude (L2 norm product)", "amount": amount,
              "parts": list(parts), "source": str(source_path.resolve()), "changes": changes,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    model.save_pretrained(out, overwrite=overwrite, compression=record)
    logger.info("pruned %s: %d -> %d parameters", source_path, *changes["parameters"])
    return Path(out)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`mmgpt prune MODEL OUT --amount A [--parts generator]`."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (or hf://org/name)")
    parser.add_argument("out", help="folder to write the pruned model to (new or empty, unless --overwrite)")
    parser.add_argument("--amount", type=float, default=0.5, help="share of MLP channels to remove, in (0, 1)")
    parser.add_argument("--parts", default="generator", help=f"comma-separated parts to prune ({', '.join(PARTS)})")
    add_overwrite_arg(parser, "model")
    args = parser.parse_args(argv)
    print(prune(args.model, args.out, args.amount, tuple(p for p in args.parts.split(",") if p), args.overwrite))
    return 0
