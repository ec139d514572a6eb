"""`mmgpt export MODEL OUT --format onnx`: a saved model as ONNX graphs that `mmgpt.runtime` runs without torch.

OUT holds three graphs (mmgpt.export.graphs): prefix.onnx (text encoder + image encoder + fusion + projector),
embed_tokens.onnx (the generator's token embeddings) and decoder.onnx (the generator, with the KV cache as
explicit past/present tensors, so one graph runs the first step with an empty past and every later step),
plus the tokenizer(s), image transform, processor limits, generation config and manifest.json
(mmgpt.runtime.manifest; with several images per prompt or tiling, format version 2 and a prefix graph that
takes (B, K, 3, H, W) pixels, an image mask and slots, K = max_images x views), written crash-safely as one
folder (mmgpt.outputs.writing_output_folder: an earlier export at OUT is replaced only with --overwrite,
anything else there is refused).

Exporter: torch.onnx.export with dynamo=True (torch.export + onnxscript), the path torch maintains and
the default since torch 2.9; it exports the llama, qwen2 and gpt2 generators, the timm encoders and the
fusions with outputs within 1e-6 of eager on valid positions. It is about 5x slower to export than the
TorchScript exporter (dynamo=False, deprecated in torch 2.9) and its attention differs from eager only on
fully padded rows, whose outputs are masked everywhere. dynamo=False is the fallback when torch.export
fails on a model (`--exporter auto`, the default), or when asked for (`--exporter torchscript`); the
manifest records which one wrote the graphs. Graphs are fp32, opset 18 (`--opset`), except a Llama-family
decoder (llama, qwen2), which is written at opset 23 with ONNX's RMSNormalization, RotaryEmbedding and Attention
ops (mmgpt.export.graphs.FusedDecoderGraph; `--no-fused-decoder` writes the plain graph), checked against the
plain graph's eager outputs like any other; an onnxruntime that cannot run it gets the plain graph, with a warning.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmgpt.decoding import position_ids
from mmgpt.export.graphs import (
    FUSED_DECODER_OPSET,
    DecoderGraph,
    EmbedGraph,
    FusedDecoderGraph,
    PrefixGraph,
    fuses,
)
from mmgpt.model import MMGPT
from mmgpt.outputs import add_overwrite_arg, check_output_folder, writing_output_folder
from mmgpt.ranges import check_range
from mmgpt.runtime import FUSED_DECODER_RUNTIME
from mmgpt.runtime.image import check_transform_config
from mmgpt.runtime.manifest import (
    DECODER_GRAPH,
    EMBED_GRAPH,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_SETS_VERSION,
    MANIFEST_NAME,
    PREFIX_GRAPH,
    external_data_locations,
    read_manifest,
)
from mmgpt.saving import write_json

logger = logging.getLogger(__name__)

OPSET = 18
# the newest opset torch's TorchScript exporter writes (torch.onnx._constants): it writes that where asked for more
TORCHSCRIPT_MAX_OPSET = 20
EXPORTERS = ("auto", "dynamo", "torchscript")
FORMATS = ("onnx",)
# what the runtime decodes: greedy with max_new_tokens and eos; anything else would answer differently
GREEDY_DEFAULTS = {"num_beams": 1, "do_sample": False, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
# fp32 graphs must match eager this closely on the example inputs
TOLERANCE = 1e-4
# a graph above protobuf's 2 GB limit keeps its weights in a side file
EXTERNAL_DATA_BYTES = 1_500_000_000
# --int8: the graphs whose matmuls get int8 weights (embed_tokens is a row lookup: its bytes are not read per token)
INT8_GRAPHS = ("prefix", "decoder")
DYNAMIC_INT8 = "onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8)"
BLOCK_INT8 = ("onnxruntime.quantization.MatMulNBitsQuantizer(bits=8, block_size=128 or the narrowest matmul's "
              "inputs, symmetric, accuracy_level=4)")
# The decoder multiplies one row per token: MatMulNBits' int8 kernel streams its weights faster there (a 230M
# model's 64-token batch-1 answer in 0.79-0.82x DynamicQuantizeMatMul's time; even at batch 4, 1.13x at 8).
# The prefix multiplies hundreds of rows at once, where DynamicQuantizeMatMul is faster (0.59x MatMulNBits'
# time). bench/RESULTS.md has the runs.
INT8_METHODS = {"prefix": DYNAMIC_INT8, "decoder": BLOCK_INT8}


class ExportError(ValueError):
    """A model (or a part of it) that cannot be exported; the message names the part and why."""


def export_onnx(model: str | Path | MMGPT, out: str | Path, exporter: str = "auto", opset: int = OPSET,
                overwrite: bool = False, int8: bool = False, fused_decoder: bool = True) -> Path:
    """Export `model` (a folder or an MMGPT, which is cast to float32 in place) to the folder `out` -> `out`.

    An earlier export at `out` is replaced only with `overwrite`; a file or another folder never (mmgpt.outputs).

    Each graph is checked against the eager model on example inputs (max abs difference <= TOLERANCE, recorded
    in the manifest); see the module docstring for the folder's contents. `int8`: the checked fp32 prefix and
    decoder graphs are then quantised (INT8_GRAPHS), their difference from eager recorded but not bounded.
    `fused_decoder`: a Llama-family decoder is written with ONNX's fused ops at opset max(opset, 23)
    (mmgpt.export.graphs.FusedDecoderGraph), or as the plain graph where it cannot be.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    check_range("opset", opset, f"[{OPSET}, {_newest_opset()}]", integer=True, error=ExportError)
    out = Path(out).expanduser()
    check_output_folder(out, "onnx", overwrite=overwrite)  # before the slow part
    source = str(model) if not isinstance(model, MMGPT) else "<in-memory MMGPT>"
    if not isinstance(model, MMGPT):
        _check_not_quantized(model)
    mm = model if isinstance(model, MMGPT) else MMGPT.from_pretrained(model, device="cpu")
    mm = mm.float().eval()
    generation = _check_exportable(mm)
    with writing_output_folder(out, "onnx", overwrite=overwrite) as tmp, torch.no_grad():
        mm.processor.save_pretrained(tmp)
        mm.generation_config.save_pretrained(tmp)
        inputs = _example_inputs(mm)
        graphs, methods = {}, {}
        for name, file, module, args, spec in _graph_specs(mm, inputs):
            difference = None
            if name == "decoder" and fused_decoder and exporter != "torchscript" and fuses(mm.generator):
                difference = _fused_decoder(mm, module, args, tmp / file, spec, max(opset, FUSED_DECODER_OPSET))
            fused = difference is not None
            used = "dynamo" if fused else _export_graph(module, args, tmp / file, spec, exporter, opset)
            if not fused:
                difference = _check_graph(module, args, tmp / file, spec)
            graphs[name] = {"file": file, "exporter": used, "max_abs_diff": difference,
                            "opset": _graph_opset(tmp / file), **{k: spec[k] for k in ("inputs", "outputs")},
                            **({"fused": fused} if name == "decoder" else {})}
            if int8 and name in INT8_GRAPHS:
                methods[name] = quantize_graph(tmp / file, INT8_METHODS[name])
                graphs[name]["max_abs_diff_fp32"] = difference
                graphs[name]["max_abs_diff"] = _check_graph(module, args, tmp / file, spec, tolerance=None)
        # what the graphs declare (an exporter may write another opset than the one asked for): the newest
        manifest = _manifest(mm, source, graphs, generation, max(g["opset"] for g in graphs.values()), inputs,
                             methods)
        write_json(tmp / MANIFEST_NAME, manifest, indent=2)
    logger.info("exported %s to %s (%s)", source, out, ", ".join(f"{k}: {g['exporter']}" for k, g in graphs.items()))
    return out


def _fused_decoder(mm: MMGPT, reference: torch.nn.Module, args: tuple, path: Path, spec: dict,
                   opset: int) -> float | None:
    """FusedDecoderGraph written to `path` (dynamo exporter) -> its max abs difference from `reference`, the plain
    DecoderGraph in eager; None, with a warning and nothing left at `path`, where it cannot be exported, run in
    this onnxruntime (older than its ops) or does not match: the plain graph is exported instead."""
    try:
        _export_dynamo(FusedDecoderGraph(mm).eval(), args, path, spec, opset)
        return _check_graph(reference, args, path, spec)
    except Exception as e:  # torch.export and onnxruntime raise many kinds; the plain graph may still export
        logger.warning("the fused decoder graph (opset %d) cannot be used here (%s); exporting the plain one",
                       opset, " ".join(str(e).split())[:300])
        for written in path.parent.glob(path.name + "*"):  # the graph and its external data
            written.unlink()
        return None


def _newest_opset() -> int:
    """The newest ONNX opset the installed onnx package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def _graph_opset(path: Path) -> int:
    """The default-domain opset a written graph imports."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next(int(entry.version) for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))


def _check_not_quantized(model: str | Path) -> None:
    """ExportError for a folder `mmgpt quantize` wrote: its int8 kernels do not trace into ONNX."""
    from mmgpt.compress import is_quantized
    from mmgpt.model_folder import resolve_model_path

    config = resolve_model_path(model) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # loading the folder reports what is wrong with it
    if isinstance(data, dict) and is_quantized(data):
        method = data["compression"]["method"]
        raise ExportError(f"{model} is quantised ({method}, mmgpt quantize) and cannot be exported; export the fp32 "
                          f"model it came from ({data['compression'].get('source', 'its source')}), with --int8 for "
                          "int8 graphs")


def _check_exportable(mm: MMGPT) -> dict[str, Any]:
    """The generation config the runtime follows; ExportError for what the runtime cannot reproduce."""
    with tempfile.TemporaryDirectory() as folder:
        mm.processor.image_transform.save(Path(folder))
        try:
            check_transform_config(json.loads((Path(folder) / "transform.json").read_text()), "the image transform")
        except ValueError as e:
            raise ExportError(f"model.image_encoder cannot be exported: {e}") from e
    if getattr(mm.processor, "uses_chat_template", False):
        raise ExportError("the model's prompts go through its tokenizer's chat template, which the ONNX runtime does "
                          "not render (it needs transformers); export a model trained without chat_template")
    config = mm.generation_config
    for name, greedy in GREEDY_DEFAULTS.items():
        value = getattr(config, name, None)
        if value is not None and value != greedy:
            raise ExportError(f"the model's generation_config.json sets {name}={value!r}, but the ONNX runtime decodes "
                              f"greedily ({name}={greedy!r}); set it back before exporting")
    eos = config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [mm.processor.tokenizer.eos_token_id])
    return {"max_new_tokens": int(config.max_new_tokens or mm.config.max_answer_length), "eos_token_id": eos,
            "pad_token_id": int(config.pad_token_id if config.pad_token_id is not None
                                else mm.processor.tokenizer.pad_token_id)}


def _example_inputs(mm: MMGPT) -> dict[str, Any]:
    """Inputs to trace with: two rows (one padded), a past of 3 positions, and the cache's per-layer shape."""
    generator = mm.generator
    width = generator.get_input_embeddings().embedding_dim
    height, image_width = mm.processor.image_transform.data_config["input_size"][1:]
    pad = (mm.processor.text_tokenizer or mm.processor.tokenizer).pad_token_id
    vocab = len(mm.processor.text_tokenizer or mm.processor.tokenizer)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (2, 5), generator=g)
    attention_mask = torch.ones(2, 5, dtype=torch.long)
    attention_mask[1, 3:] = 0
    input_ids[1, 3:] = pad
    # the cache of one step tells the per-layer key/value shape, whatever the architecture names it
    output = generator(inputs_embeds=torch.zeros(1, 1, width), use_cache=True)
    cache = output.cache if "cache" in output else output.past_key_values
    keys = cache.layers[0].keys
    kv_heads, head_dim, layers = int(keys.shape[1]), int(keys.shape[3]), len(cache.layers)
    past_length, length = 3, 2
    decoder_mask = torch.ones(2, past_length + length, dtype=torch.long)
    decoder_mask[1, :2] = 0
    if image_entries(mm) == 1:
        prefix = (input_ids, attention_mask, torch.randn(2, 3, height, image_width, generator=g))
    else:
        # every prompt is padded to the most entries (max_images x views), so the graph has one fixed K: a
        # fusion that loops over the images is traced for the only K the runtime gives it
        views, count = mm.config.image_encoder.tiling.views, image_entries(mm)
        image_mask = torch.ones(2, count, dtype=torch.long)
        image_mask[1, views:] = 0  # the second prompt has one image
        image_slots = torch.zeros(2, count, dtype=torch.long)
        image_slots[0, count - views:] = 2  # the first prompt's last image before its third token
        prefix = (input_ids, attention_mask, torch.randn(2, count, 3, height, image_width, generator=g), image_mask,
                  image_slots)
    return {
        "prefix": prefix,
        "embed_tokens": (input_ids,),
        "decoder": (torch.randn(2, length, width, generator=g), decoder_mask,
                    position_ids(decoder_mask)[:, past_length:],
                    tuple(torch.randn(2, kv_heads, past_length, head_dim, generator=g) for _ in range(2 * layers))),
        "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "width": width,
        "image_size": (height, image_width),
    }


def image_entries(mm: MMGPT) -> int:
    """K of the prefix graph: 1 for a one-image model (pixels (B, 3, H, W)), else max_images x views per image."""
    views = mm.config.image_encoder.tiling.views
    return 1 if mm.config.max_images == 1 and views == 1 else mm.config.max_images * views


def _graph_specs(mm: MMGPT, inputs: dict[str, Any]) -> list[tuple[str, str, torch.nn.Module, tuple, dict]]:
    """(name, file, module, example args, {inputs, outputs, dynamic}) for each graph."""
    layers, kv, hd, width = inputs["layers"], inputs["kv_heads"], inputs["head_dim"], inputs["width"]
    height, image_width = inputs["image_size"]
    past = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    count = image_entries(mm)
    pixels = {"pixel_values": (["batch", 3, height, image_width], "float32")} if count == 1 else {
        "pixel_values": (["batch", count, 3, height, image_width], "float32"),
        "image_mask": (["batch", count], "int64"), "image_slots": (["batch", count], "int64")}
    prefix = {
        "inputs": {"input_ids": (["batch", "text_length"], "int64"),
                   "attention_mask": (["batch", "text_length"], "int64"), **pixels},
        "outputs": {"prefix_embeds": (["batch", "prefix_length", width], "float32"),
                    "prefix_mask": (["batch", "prefix_length"], "int64")},
    }
    embed = {"inputs": {"input_ids": (["batch", "length"], "int64")},
             "outputs": {"inputs_embeds": (["batch", "length", width], "float32")}}
    decoder = {
        "inputs": {"inputs_embeds": (["batch", "length", width], "float32"),
                   "attention_mask": (["batch", "past_length + length"], "int64"),
                   "position_ids": (["batch", "length"], "int64"),
                   **{name: (["batch", kv, "past_length", hd], "float32") for name in past}},
        "outputs": {"logits": (["batch", 1, "vocab"], "float32"),
                    **{name: (["batch", kv, "past_length + length", hd], "float32") for name in present}},
    }
    # eval(): a wrapper starts in training mode, and the TorchScript exporter restores that mode on the model after
    return [("prefix", PREFIX_GRAPH, PrefixGraph(mm).eval(), inputs["prefix"], prefix),
            ("embed_tokens", EMBED_GRAPH, EmbedGraph(mm).eval(), inputs["embed_tokens"], embed),
            ("decoder", DECODER_GRAPH, DecoderGraph(mm).eval(), inputs["decoder"], decoder)]


def _export_graph(module: torch.nn.Module, args: tuple, path: Path, spec: dict, exporter: str, opset: int) -> str:
    """Write one graph with the dynamo exporter (or TorchScript, asked for or as the fallback) -> the one used."""
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(module, args, path, spec, opset)
            return "dynamo"
        except Exception as e:  # torch.export raises many kinds; the TorchScript exporter may still succeed
            if exporter == "dynamo":
                raise ExportError(f"torch.onnx.export(dynamo=True) cannot export {path.stem}: "
                                  f"{' '.join(str(e).split())[:500]}") from e
            logger.warning("dynamo export of %s failed (%s); using the TorchScript exporter",
                           path.stem, str(e).splitlines()[0][:200])
    _export_torchscript(module, args, path, spec, opset)
    return "torchscript"


def _flat(args: tuple) -> list[torch.Tensor]:
    return [t for a in args for t in (a if isinstance(a, tuple) else (a,))]


def _check_graph(module: torch.nn.Module, args: tuple, path: Path, spec: dict,
                 tolerance: float | None = TOLERANCE) -> float:
    """Max abs difference of the graph in onnxruntime from eager on the example inputs; ExportError above
    `tolerance` (None: no bound, for quantised graphs).

    Rows of the KV cache at padded positions are left out: every later step masks them, and the exporters'
    attention may fill them differently where a query sees only padding.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(spec["inputs"], _flat(args))}
    got = session.run(None, feeds)
    expected = module(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    valid = feeds["attention_mask"].astype(bool) if "past_key_0" in feeds else None
    difference = 0.0
    for name, value, reference in zip(spec["outputs"], got, expected):
        reference = reference.numpy()
        if value.shape != reference.shape:
            raise ExportError(f"{path.name}: output {name} has shape {list(value.shape)} in onnxruntime but "
                              f"{list(reference.shape)} in eager")
        error = np.abs(value.astype(np.float64) - reference)
        if valid is not None and name.startswith("present_"):
            error = error * valid[:, None, :, None]
        difference = max(difference, float(error.max()) if error.size else 0.0)
    if tolerance is not None and not difference <= tolerance:
        raise ExportError(f"{path.name} differs from the eager model by {difference:.3g} (more than {tolerance}) "
                          "on the example inputs; try the other --exporter")
    return difference


class _DropMessage(logging.Filter):
    """Drops log records whose message contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the records to drop."""
        return self.text not in record.getMessage()


def quantize_graph(path: Path, method: str = DYNAMIC_INT8) -> str:
    """Replace the fp32 graph at `path` by one with int8 MatMul weights -> the method used.

    DYNAMIC_INT8: one scale per output column, activations quantised at run time (DynamicQuantizeMatMul on x86).
    BLOCK_INT8: one scale per 128 weights of a column (fewer in a narrow model; MatMulNBits), activations int8; an
    onnxruntime without 8-bit MatMulNBits gets DYNAMIC_INT8 instead.
    """
    quantized = path.with_suffix(".int8.onnx")
    fp32_data = external_data_locations(path)
    root = logging.getLogger()
    # its advice to pre-process for static calibration does not apply to dynamic quantisation; the block
    # quantiser logs a line per matmul
    advice = _DropMessage("consider to run pre-processing")
    root.addFilter(advice)
    nbits_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = nbits_logger.level
    nbits_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method == BLOCK_INT8 and not _quantize_blocks(path, quantized):
                method = DYNAMIC_INT8
            if method == DYNAMIC_INT8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                # int8 weights are a quarter of the fp32 bytes: below protobuf's limit for any graph exported here
                quantize_dynamic(path, quantized, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                                 weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(advice)
        nbits_logger.setLevel(level)
    quantized.replace(path)
    for location in fp32_data:
        (path.parent / location).unlink(missing_ok=True)
    return method


def _quantize_blocks(path: Path, out: Path) -> bool:
    """BLOCK_INT8 of the graph at `path` written to `out`; False where this onnxruntime has no 8-bit MatMulNBits."""
    import inspect

    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except ImportError:
        return False
    if "bits" not in inspect.signature(DefaultWeightOnlyQuantConfig).parameters:  # arrived with 8-bit support
        return False  # before the graph is read: the fallback reads it again
    model = onnx.load(str(path))
    config = DefaultWeightOnlyQuantConfig(block_size=_block_size(model), is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return True


def _block_size(model: Any) -> int:
    """128, or for a model with a matmul of fewer inputs the largest power of two (>= 16) within them: a block
    is padded to its full size, so 32 inputs in a block of 128 would read as many bytes as fp32 weights."""
    weights = {init.name: init for init in model.graph.initializer}
    inputs = [weights[node.input[1]].dims[0] for node in model.graph.node
              if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2]
    smallest = max(1, min(inputs, default=128))
    return max(16, min(128, 1 << (smallest.bit_length() - 1)))


def quantize_export(folder: str | Path) -> Path:
    """An fp32 export's INT8_GRAPHS quantised in place (the graphs `--int8` writes, without their check against
    the eager model, which this folder no longer has) -> folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("dtype", "float32") != "float32":
        raise ExportError(f"{folder} is already quantised (dtype {manifest['dtype']!r})")
    methods = {name: quantize_graph(folder / manifest["graphs"][name]["file"], INT8_METHODS[name])
               for name in INT8_GRAPHS}
    write_json(folder / MANIFEST_NAME, {**manifest, **_int8_record(methods)}, indent=2)
    return folder


def _int8_record(methods: dict[str, str]) -> dict[str, Any]:
    """The manifest entries of an int8 export whose graphs were quantised by `methods` ({graph: method})."""
    return {"dtype": "int8", "quantization": {"graphs": list(methods), "methods": methods}}


def _dynamic_axes(spec: dict) -> dict[str, dict[int, str]]:
    """{tensor name: {axis: symbolic name}} from the spec's shapes."""
    shapes = {**spec["inputs"], **spec["outputs"]}
    return {name: {i: str(d) for i, d in enumerate(shape) if isinstance(d, str)} for name, (shape, _) in shapes.items()}


def _export_dynamo(module: torch.nn.Module, args: tuple, path: Path, spec: dict, opset: int) -> None:
    dynamic = torch.export.Dim.DYNAMIC
    axes = _dynamic_axes(spec)
    names = list(spec["inputs"])
    shapes, index = [], 0
    for arg in args:
        if isinstance(arg, tuple):
            shapes.append(tuple({a: dynamic for a in axes[names[index + j]]} for j in range(len(arg))))
            index += len(arg)
        else:
            shapes.append({a: dynamic for a in axes[names[index]]})
            index += 1
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=names, output_names=list(spec["outputs"]),
                          dynamic_shapes=tuple(shapes), dynamo=True, opset_version=opset, external_data=large,
                          verbose=False, report=False)


def _export_torchscript(module: torch.nn.Module, args: tuple, path: Path, spec: dict, opset: int) -> None:
    opset = min(opset, TORCHSCRIPT_MAX_OPSET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(spec["inputs"]),
                          output_names=list(spec["outputs"]), dynamic_axes=_dynamic_axes(spec), dynamo=False,
                          opset_version=opset)


def _manifest(mm: MMGPT, source: str, graphs: dict, generation: dict, opset: int,
              inputs: dict[str, Any], int8: dict[str, str] | None = None) -> dict[str, Any]:
    """What the runtime needs besides the graphs, and how the folder was made (int8: {graph: its method})."""
    tokenizer, text_tokenizer = mm.processor.tokenizer, mm.processor.text_tokenizer
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION if image_entries(mm) == 1 else IMAGE_SETS_VERSION,
        "opset": opset, "dtype": "float32",
        **(_int8_record(int8) if int8 else {}),
        "torch_version": torch.__version__,
        "source_model": source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "graphs": {name: {"file": g["file"], "exporter": f"torch.onnx.export(dynamo={g['exporter'] == 'dynamo'})",
                          "opset": g["opset"], **({"fused": g["fused"]} if "fused" in g else {}),
                          "max_abs_diff_vs_eager": g["max_abs_diff"],
                          **({"fp32_max_abs_diff_vs_eager": g["max_abs_diff_fp32"]} if "max_abs_diff_fp32" in g
                             else {}),
                          "inputs": [{"name": n, "shape": s, "dtype": t} for n, (s, t) in g["inputs"].items()],
                          "outputs": [{"name": n, "shape": s, "dtype": t} for n, (s, t) in g["outputs"].items()]}
                   for name, g in graphs.items()},
        "decoder": {"num_layers": inputs["layers"], "num_key_value_heads": inputs["kv_heads"],
                    "head_dim": inputs["head_dim"], "hidden_size": inputs["width"],
                    "max_positions": mm.max_positions},
        "tokens": {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id,
                   "text_pad_token_id": (text_tokenizer or tokenizer).pad_token_id,
                   "text_tokenizer": text_tokenizer is not None,
                   "clean_up_tokenization_spaces": bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))},
        "prompts": {"vqa_template": mm.config.vqa_template, "caption_prompt": mm.config.caption_prompt},
        "limits": {"max_prompt_length": mm.processor.max_prompt_length,
                   "max_answer_length": mm.processor.max_answer_length,
                   "max_image_pixels": mm.processor.max_image_pixels},
        "generation": generation,
        **({} if image_entries(mm) == 1 else {"images": {
            "max_images": mm.config.max_images,
            "tiling": [mm.config.image_encoder.tiling.rows, mm.config.image_encoder.tiling.cols],
            "entries": image_entries(mm)}}),
        "files": {"tokenizer": "tokenizer/tokenizer.json",
                  "text_tokenizer": "text_tokenizer/tokenizer.json" if text_tokenizer is not None else None,
                  "image_transform": "image_transform/transform.json", "generation_config": "generation_config.json",
                  "processor": "processor.json"},
    }


def main(argv: list[str] | None = None, prog: str = "mmgpt export") -> int:
    """`mmgpt export MODEL OUT --format onnx`: print the exported folder."""
    parser = argparse.ArgumentParser(prog=prog, description="Export a saved model for torch-free runtimes.")
    parser.add_argument("model", help="saved model folder, or hf://org/name")
    parser.add_argument("out", help="folder to write (new or empty, unless --overwrite)")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="export format (default: onnx)")
    parser.add_argument("--exporter", default="auto", choices=EXPORTERS,
                        help="torch.onnx exporter: dynamo, torchscript, or auto (dynamo, falling back to torchscript)")
    parser.add_argument("--opset", type=int, default=OPSET,
                        help=f"ONNX opset, {OPSET} or newer (default: {OPSET}; the fused decoder needs "
                             f"{FUSED_DECODER_OPSET}; the TorchScript exporter writes at most {TORCHSCRIPT_MAX_OPSET}; "
                             "the manifest records each graph's own)")
    parser.add_argument("--fused-decoder", action=argparse.BooleanOptionalAction, default=True,
                        help=f"write a Llama-family decoder with ONNX's fused attention, rotary and RMSNorm ops "
                             f"(opset {FUSED_DECODER_OPSET}, onnxruntime {FUSED_DECODER_RUNTIME} or newer; default): "
                             "~0.85x the plain graph's decoding time, ~0.8x with --int8")
    parser.add_argument("--int8", action="store_true",
                        help="quantise the prefix and decoder graphs to int8 weights (the prefix with "
                             "onnxruntime's dynamic int8, the decoder in 8-bit MatMulNBits blocks: the fastest "
                             "on a CPU at batch 1; the runtime needs no flag to run them)")
    add_overwrite_arg(parser, "onnx")
    args = parser.parse_args(argv)
    print(export_onnx(args.model, args.out, exporter=args.exporter, opset=args.opset, overwrite=args.overwrite,
                      int8=args.int8, fused_decoder=args.fused_decoder))
    return 0


__all__ = ["ExportError", "export_onnx", "main", "quantize_export"]
