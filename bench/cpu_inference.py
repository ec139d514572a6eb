"""CPU inference of the ~230M presets through every path, side by side in one process, from an image file.

Models: configs/gpu200m.yaml (ViT-B/16 timm encoder, SmolLM2-135M-shaped Llama, cross-attention fusion) and
the nanoVLM-222M shape of configs/nanovlm222m.yaml (concat fusion: 196 image tokens before the prompt) with its
hub parts swapped for the same architectures built from scratch (timm vit_base_patch16_siglip_224, the
SmolLM2-135M config of gpu200m.yaml), so nothing is downloaded. Random weights: speed only.

Paths (one model each, converted from the same fp32 weights):

* ``fp32-hf``: fp32 through Hugging Face ``generate`` (what ``MMGPT.generate`` ran before mmgpt.static_decoding);
* ``fp32``, ``bf16``, ``int8``, ``int8-torchao``: the model as ``mmgpt quantize --method`` leaves it (fp32: as
  saved), decoded by ``MMGPT.generate`` (mmgpt.static_decoding for these Llama generators);
* ``onnx``, ``onnx-int8``: the model as ``mmgpt export`` (``--int8``) writes it, answered by mmgpt.runtime;
* ``smolvlm``: transformers' SmolVLM-256M architecture with random weights (bench/cpu_paths.py), with the
  gpu200m rows.

Each batch size runs ``answer()`` from the same PNG and question for the longest N (``min_new_tokens = N``,
so eos cannot end it early), round-robin over the paths so load from other processes hits each alike; a
logits processor reads the clock at every step, so one call gives the time to first token (image read and
transform, encoders, fusion, prefill, first logits) and decode tokens/s up to each N:
batch * (N - 1) / (time at step N - time at step 1). The clock is this process's CPU time by default
(``--clock``): with one torch thread it counts the work done, while wall time on a shared machine also
counts the turns other processes take. The memory-bandwidth bound of each path is the
read bandwidth measured in this run (a large tensor summed) over the weight bytes one decode step reads
(every generator weight except the input-embedding lookup; the tied output layer once). At batch 1 and the
longest N it also times, for fp32 and int8, ``MMGPT.generate`` on the preprocessed batch and the decoding
alone on precomputed prompt embeddings (answer() overhead), and ``use_cache=False`` (KV-cache speedup).
``--memory`` saves every torch path as a model folder and answers once from it in a fresh process:
peak RSS (loading included) and RSS after answering.

On a shared machine only the ratios between paths of one run mean anything.

    python -m bench.cpu_inference --threads 1                        # both configs, every path
    python -m bench.cpu_inference --configs gpu200m --batch-sizes 1 --new-tokens 64
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from bench import cli, common, workloads

logger = logging.getLogger("bench.cpu_inference")

NAME = "cpu_inference"
PATHS = ("fp32-hf", "fp32", "bf16", "int8", "int8-torchao", "onnx", "onnx-int8", "smolvlm")
# paths that are not an MMGPT in torch (bench/cpu_paths.py); smolvlm is one model, timed with the gpu200m rows
EXTERNAL_PATHS = ("onnx", "onnx-int8", "smolvlm")
CONFIGS = ("gpu200m", "nanovlm222m")
QUESTION = "what shape is in the image?"
# configs/nanovlm222m.yaml's hub parts as the same architectures built from scratch
NANOVLM_LOCAL = {"image_encoder": {"type": "timm", "name": "vit_base_patch16_siglip_224", "freeze": False},
                 "generator_from": "gpu200m"}


def config_paths(config: str, paths: Sequence[str]) -> list[str]:
    """The paths `config` runs: the SmolVLM peer only with the gpu200m rows."""
    return [p for p in paths if p != "smolvlm" or config == "gpu200m"]


def build(config: str, seed: int = 0, tiny: bool = False) -> Any:
    """The named preset with random weights, built offline (`tiny`: every part shrunk, as bench --tiny does)."""
    from mmgpt.config import from_dict, load_yaml
    from mmgpt.training.config import TrainConfig, config_path

    data = load_yaml(config_path(config))
    if config == "nanovlm222m":
        data["model"]["image_encoder"] = dict(NANOVLM_LOCAL["image_encoder"])
        generator = load_yaml(config_path(NANOVLM_LOCAL["generator_from"]))["model"]["generator"]
        data["model"]["generator"] = {**generator, "freeze": False}
    if tiny:
        for section, values in workloads.TINY_GPU200M.items():
            data["model"][section].update(copy.deepcopy(values))
    return workloads.build_model(from_dict(TrainConfig, data).model, seed=seed).eval()


def convert(model: Any, path: str, workdir: Path, seed: int = 0) -> Any:
    """The model as `path` runs it (a copy; fp32 and fp32-hf share the original; ONNX paths: exported to workdir)."""
    from bench.cpu_paths import OnnxPath, SmolVLMPath
    from mmgpt.compress.int8 import quantize_model
    from mmgpt.export import export_onnx, quantize_export

    if path in ("fp32", "fp32-hf"):
        return model
    if path == "smolvlm":
        return SmolVLMPath(seed)
    if path in ("onnx", "onnx-int8"):
        fp32 = workdir / "onnx"
        if not fp32.exists():
            export_onnx(model, fp32)
        folder = fp32
        if path == "onnx-int8":
            # what `mmgpt export --int8` writes, without exporting a second time
            folder = workdir / "onnx-int8"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(fp32, folder)
            quantize_export(folder)
        return OnnxPath(folder, torch.get_num_threads())
    converted = copy.deepcopy(model)
    quantize_model(converted, path)
    return converted.eval()


@contextlib.contextmanager
def hugging_face_generate(active: bool) -> Iterator[None]:
    """While active, MMGPT.generate hands every call to Hugging Face generate (the path before static decoding)."""
    from mmgpt import static_decoding

    original = static_decoding.supports
    if active:
        static_decoding.supports = lambda *args: False
    try:
        yield
    finally:
        static_decoding.supports = original


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of summing a tensor far larger than the caches: what a decode step's weight reads can reach."""
    data = torch.ones(megabytes * 2**20 // 4)
    data.sum()
    best = min(_seconds(data.sum) for _ in range(repeats))
    return data.numel() * 4 / best


# --clock: process CPU time (default) or wall time. With one torch thread the process's CPU time is the work
# done, barely touched by other processes taking turns on the cores; wall time is what a user waits
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def _seconds(fn: Callable[[], Any]) -> float:
    start = clock()
    fn()
    return clock() - start


class StepClock(LogitsProcessor):
    """Records the clock at every decoding step (called once the step's logits exist)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.times.append(clock())
        return scores


def decode_bytes(model: Any) -> int:
    """Weight bytes one decode step reads: the generator's tensors but the input-embedding table (a few rows)."""
    generator = model.generator
    embedding = generator.get_input_embeddings()
    head = generator.get_output_embeddings()
    skip = {t.data_ptr() for t in embedding.state_dict().values()} - {t.data_ptr() for t in head.state_dict().values()}
    seen, total = set(), 0
    for tensor in generator.state_dict().values():
        tensor = getattr(tensor, "qdata", tensor)  # torchao's int8 tensors: their int8 data
        if tensor.data_ptr() in seen or tensor.data_ptr() in skip:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def _answer(model: Any, batch_size: int, image: str, new_tokens: int) -> Callable[[], Any]:
    from mmgpt.inference import answer

    if hasattr(model, "record"):  # bench.cpu_paths: answers from the image file too
        return lambda: model.answer([QUESTION] * batch_size, [image] * batch_size, batch_size=batch_size,
                                    max_new_tokens=new_tokens)
    return lambda: answer([QUESTION] * batch_size, [image] * batch_size, model=model, batch_size=batch_size,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def _timed(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, round-robin; calls named 'fp32-hf...' run through Hugging Face generate."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            with hugging_face_generate(name.startswith("fp32-hf")):
                times[name].append(_seconds(fn))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _stepped(models: dict[str, Any], batch_size: int, image: str, n: int, repeats: int) -> dict[str, list[float]]:
    """Per path, seconds from the call to each step's logits (median over repeats), one answer() of n tokens."""
    steps: dict[str, list[list[float]]] = {path: [] for path in models}
    for _ in range(repeats):
        for path, model in models.items():
            recorder = StepClock()
            if hasattr(model, "record"):
                model.record(lambda r=recorder: r.times.append(clock()))
            else:
                # answer() takes decoding options only: the recorder reaches generate through the instance
                model.generate = functools.partial(type(model).generate, model,
                                                   logits_processor=LogitsProcessorList([recorder]))
            try:
                with hugging_face_generate(path == "fp32-hf"):
                    start = clock()
                    _answer(model, batch_size, image, n)()
            finally:
                if hasattr(model, "record"):
                    model.record(None)
                else:
                    del model.generate
            steps[path].append([t - start for t in recorder.times])
    return {path: [sorted(r[i] for r in runs)[len(runs) // 2] for i in range(n)] for path, runs in steps.items()}


def measure_config(config: str, paths: Sequence[str], batch_sizes: Sequence[int], new_tokens: Sequence[int],
                   repeats: int, overheads: bool, workdir: Path, seed: int = 0, tiny: bool = False) -> dict[str, Any]:
    """Every path of one preset: per (batch, N) time to first token and decode tokens/s; the bound; overheads."""
    from PIL import Image

    from bench.generation import prefix_inputs

    base = build(config, seed, tiny)
    info = workloads.describe(base)
    height, width = workloads.image_size(base)
    image = str(workdir / f"{config}.png")
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(image)
    paths = config_paths(config, paths)
    models = {path: convert(base, path, workdir / config, seed) for path in paths}
    bandwidth = read_bandwidth()
    logger.info("%s: %.1fM parameters, read bandwidth %.1f GB/s", config, info["params_total"] / 1e6, bandwidth / 1e9)
    _timed({p: _answer(m, 1, image, 2) for p, m in models.items()}, 1)  # warm-up: first calls allocate
    points = []
    for batch_size in batch_sizes:
        # one answer() per path gives every length: the clock at each step's logits
        steps = _stepped(models, batch_size, image, max(new_tokens), repeats)
        for n in new_tokens:
            for path, model in models.items():
                first, whole = steps[path][0], steps[path][n - 1]
                decode = batch_size * (n - 1) / max(whole - first, 1e-9)
                step_bytes = model.decode_bytes() if hasattr(model, "decode_bytes") else decode_bytes(model)
                bound = bandwidth / step_bytes * batch_size
                points.append({"path": path, "batch_size": batch_size, "new_tokens": n, "ttft_s": first,
                               "total_s": whole, "decode_tokens_per_s": decode,
                               "decode_bytes_per_step": step_bytes, "bound_tokens_per_s": bound,
                               "share_of_bound": decode / bound})
            logger.info("%s batch %d, %d tokens: %s", config, batch_size, n, ", ".join(
                f"{p['path']} {p['decode_tokens_per_s']:.1f} tok/s" for p in points[-len(models):]))
    for point in points:
        for name in ("fp32-hf", "fp32"):
            if name not in models:
                continue
            reference = next(q for q in points if q["path"] == name and q["batch_size"] == point["batch_size"]
                             and q["new_tokens"] == point["new_tokens"])
            key = name.replace("-", "_")
            point[f"decode_x_{key}"] = point["decode_tokens_per_s"] / reference["decode_tokens_per_s"]
            point[f"ttft_x_{key}"] = point["ttft_s"] / reference["ttft_s"]
            # the whole answer's latency against eager fp32's
            point[f"total_x_{key}"] = point["total_s"] / reference["total_s"]
    result: dict[str, Any] = {"config": config, **info, "image_size": [height, width], "read_bandwidth_bytes_per_s":
                              bandwidth, "points": points}
    if overheads:
        result["overheads"] = measure_overheads(models, image, max(new_tokens), repeats, prefix_inputs)
    return result


def measure_overheads(models: dict[str, Any], image: str, n: int, repeats: int,
                      prefix_inputs: Callable[..., Any]) -> dict[str, Any]:
    """Batch 1, N tokens: answer() vs MMGPT.generate vs decoding alone (fp32, int8); fp32 without the KV cache."""
    from mmgpt import static_decoding
    from mmgpt.inference import question_batch

    calls: dict[str, Callable[[], Any]] = {}
    for path in ("fp32", "int8"):
        if path not in models:
            continue
        model = models[path]
        batch = question_batch(model, [QUESTION], [image])
        embeds, mask = prefix_inputs(model, batch)
        config = copy.deepcopy(model.generation_config)
        config.max_new_tokens = config.min_new_tokens = n
        calls[f"{path}/answer"] = _answer(model, 1, image, n)
        calls[f"{path}/generate"] = (lambda m=model, b=batch: m.generate(
            b["input_ids"], b["attention_mask"], b["pixel_values"], max_new_tokens=n, min_new_tokens=n))
        calls[f"{path}/decode_only"] = (lambda m=model, e=embeds, k=mask, c=config: static_decoding.generate(
            m.generator, e, k, c))
    for path in ("fp32", "int8"):
        if path in models:
            model = models[path]
            batch = question_batch(model, [QUESTION], [image])
            calls[f"{path}/generate_no_cache"] = (lambda m=model, b=batch: m.generate(
                b["input_ids"], b["attention_mask"], b["pixel_values"], max_new_tokens=n, min_new_tokens=n,
                use_cache=False))
    seconds = _timed(calls, repeats)
    ratios = {}
    for path in ("fp32", "int8"):
        if f"{path}/answer" in seconds:
            ratios[f"{path}_answer_over_generate"] = seconds[f"{path}/answer"] / seconds[f"{path}/generate"]
            ratios[f"{path}_answer_over_decode_only"] = seconds[f"{path}/answer"] / seconds[f"{path}/decode_only"]
        if f"{path}/generate_no_cache" in seconds:
            ratios[f"{path}_kv_cache_speedup"] = seconds[f"{path}/generate_no_cache"] / seconds[f"{path}/generate"]
    return {"batch_size": 1, "new_tokens": n, "seconds": seconds, "ratios": ratios}


MEMORY_SCRIPT = """
import json, torch, psutil
torch.set_num_threads(1)
{load}
# VmHWM: this process's peak RSS (getrusage's ru_maxrss keeps the forking parent's peak across exec)
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"peak_rss_bytes": peak, "rss_after_answer_bytes": psutil.Process().memory_info().rss}}))
"""


TORCH_LOAD = """from mmgpt.inference import answer
answer({question!r}, {image!r}, model={folder!r}, device="cpu", max_new_tokens=8)"""
# the export as measure_config wrote it, or the peer built from its config (random weights: nothing to load)
EXTERNAL_LOAD = """from pathlib import Path
from bench.cpu_paths import OnnxPath, SmolVLMPath
model = OnnxPath(Path({folder!r}), 1) if {folder!r} else SmolVLMPath({seed})
model.answer([{question!r}], [{image!r}], batch_size=1, max_new_tokens=8)"""


def measure_memory(config: str, paths: Sequence[str], workdir: Path, seed: int = 0,
                   tiny: bool = False) -> dict[str, Any]:
    """Each path answering once in a fresh process, from a saved folder (the ONNX paths: the export
    measure_config wrote; smolvlm: built from its config): its peak and steady RSS."""
    from mmgpt.compress.quantize import quantize

    base = build(config, seed, tiny)
    fp32 = workdir / f"{config}-fp32"
    base.save_pretrained(fp32)
    del base
    height, width = (224, 224)
    image = workdir / f"{config}-memory.png"
    from PIL import Image

    Image.new("RGB", (width, height), (200, 40, 40)).save(image)
    memory = {}
    for path in dict.fromkeys(p.replace("fp32-hf", "fp32") for p in config_paths(config, paths)):
        if path in EXTERNAL_PATHS:
            folder = str(workdir / config / path) if path != "smolvlm" else ""
            load = EXTERNAL_LOAD.format(question=QUESTION, image=str(image), folder=folder, seed=seed)
        else:
            folder = fp32 if path == "fp32" else quantize(fp32, workdir / f"{config}-{path}", path)
            load = TORCH_LOAD.format(question=QUESTION, image=str(image), folder=str(folder))
        script = MEMORY_SCRIPT.format(load=load)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             cwd=common.REPO)
        memory[path] = {**json.loads(out.stdout.strip().splitlines()[-1]), "folder_bytes": sum(
            f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) if folder else None}
        logger.info("%s %s: %s", config, path, memory[path])
    return memory


TABLE = [("config", "config", ""), ("path", "path", ""), ("batch_size", "batch", "d"), ("new_tokens", "new tok", "d"),
         ("ttft_s", "TTFT s", ".2f"), ("decode_tokens_per_s", "decode tok/s", ".1f"),
         ("decode_x_fp32_hf", "x fp32-hf", ".2f"), ("decode_x_fp32", "x fp32", ".2f"),
         ("total_x_fp32", "latency x fp32", ".2f"), ("bound_tokens_per_s", "bound tok/s", ".1f"),
         ("share_of_bound", "share", ".2f")]


def parse_args(argv: list[str] | None = None) -> Any:
    """Command line of this benchmark."""
    parser = cli.new_parser(__doc__)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per call, round-robin (median)")
    parser.add_argument("--no-overheads", dest="overheads", action="store_false",
                        help="skip the answer()/generate/decode and no-cache timings")
    parser.add_argument("--memory", action="store_true", help="peak RSS of each path from a saved folder")
    parser.add_argument("--workdir", default=None, help="where the image and --memory's folders go (default: temp)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="cpu: this process's CPU time (steady on a shared machine, with --threads 1); wall")
    parser.add_argument("--tiny", action="store_true", help="shrink every part (a code-path check, not a timing)")
    parser.add_argument("--device", default="cpu", choices=["cpu"])
    cli.add_run_options(parser)
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or min(args.new_tokens) < 2 or args.repeats < 1:
        parser.error("batch sizes >= 1, new tokens >= 2 and repeats >= 1")
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns it."""
    global clock
    args = parse_args(argv)
    device = cli.setup(args)
    clock = CLOCKS[args.clock]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = []
        for config in args.configs:
            with torch.no_grad():
                result = measure_config(config, args.paths, sorted(set(args.batch_sizes)),
                                        sorted(set(args.new_tokens)), args.repeats, args.overheads, workdir,
                                        args.seed, args.tiny)
            if args.memory:
                result["memory"] = measure_memory(config, args.paths, workdir, args.seed, args.tiny)
            results.append(result)
    rows = [{"config": r["config"], **p} for r in results for p in r["points"]]
    common.print_table(f"CPU inference on {common.device_name(device)} (ratios only: shared machine)", rows, TABLE)
    for r in results:
        if "overheads" in r:
            print(r["config"], json.dumps({k: round(v, 3) for k, v in r["overheads"]["ratios"].items()}))
    name = f"{NAME}-tiny" if args.tiny else NAME
    written = cli.write(NAME, name, device, args, {"cpu": cpu_model(), "results": results})
    plot(results, Path(written["path"]).with_suffix(".png"))
    return written


def plot(results: list[dict[str, Any]], out: Path) -> None:
    """Decode tokens/s of every path per config and batch size at the longest length, with the bandwidth bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(r, b) for r in results for b in sorted({p["batch_size"] for p in r["points"]})]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (r, batch) in zip(axes[0], panels):
        longest = max(p["new_tokens"] for p in r["points"])
        points = [p for p in r["points"] if p["batch_size"] == batch and p["new_tokens"] == longest]
        names = [p["path"] for p in points]
        ax.bar(names, [p["decode_tokens_per_s"] for p in points], color="tab:blue", label="measured")
        ax.scatter(names, [p["bound_tokens_per_s"] for p in points], marker="_", s=300, color="tab:red",
                   label="bandwidth bound")
        ax.set_yscale("log")
        ax.set_title(f"{r['config']}, batch {batch}, {longest} tokens", fontsize=10)
        ax.set_ylabel("decode tokens/s")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", out)


def cpu_model() -> str:
    """lscpu's model name, flags that matter here and core count."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return common.device_name(torch.device("cpu"))
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, "
            f"flags {' '.join(wanted)}")


main = common.exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
