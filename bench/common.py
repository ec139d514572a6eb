"""Shared benchmark helpers: devices, timing, peak memory, FLOP counting and MFU, results files, tables.

FLOP counting (used for MFU)
----------------------------
MFU = achieved model FLOP/s / the device's peak dense bf16 FLOP/s, with "model FLOPs" as in
nanoGPT's `estimate_mfu` and the PaLM paper (appendix B): a transformer's forward pass costs
``2 * N`` FLOPs per token for its N weights (one multiply and one add per weight) plus
``4 * L * (H * Q) * T`` per token for attention (``Q K^T`` and ``A V`` over a context of T tokens,
L layers, H heads of size Q); training adds the backward pass, twice the forward, giving the familiar
``6 * N + 12 * L * H * Q * T`` per token. Conventions:

* N counts the parameters of every part, trainable and frozen, except embedding-lookup tables
  (``nn.Embedding`` weights, ViT position embeddings and class/register tokens), which are read, not
  multiplied. A tied LM head is a matmul, so its ``vocab x width`` weights are counted, once, on the
  positions where logits are computed (mmgpt computes them for the answer positions only).
* The parts of a multimodal model see different numbers of tokens per sample (a ViT-B/16 at 224 px:
  197 image tokens; the generator: prompt + answer tokens), so the count is made per part:
  ``2 * N_part * tokens_part`` plus that part's attention term, with T the part's own sequence
  length (the full T, as in PaLM, not T/2 for causal masks). Only real (unpadded) tokens count.
* Parts that are not token-wise transformers (a CNN image encoder, the fusion modules, whose
  cross-attention mixes two sequences, and the projector) are counted exactly with
  ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of the real batch.
* Training multiplies each part's forward FLOPs by 3 when it is trainable (forward, input gradients,
  weight gradients), by 2 when it is frozen but something before it is trainable (gradients still
  flow through it), and by 1 when neither (a frozen image encoder: forward only).
* Independently, the benchmarks also record ``FlopCounterMode``'s count of the whole training step
  (what the hardware executed, padding included) as a cross-check. On CPU it misses the fused SDPA
  kernel (no FLOP formula is registered for it), so it undercounts attention there.

Peak memory is ``torch.cuda.max_memory_allocated`` on GPU and the process's maximum resident set
size (``resource.getrusage``) on CPU; the latter is a high-water mark of the whole process, so it
never goes down between measurements made in one process.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmgpt.saving import write_json

logger = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"

# peak dense bf16 tensor-core FLOP/s (no sparsity), matched against torch.cuda.get_device_name();
# the first entry whose every word appears in the name wins, so the more specific ones come first
PEAK_FLOPS_BF16: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
]


# ----------------------------------------------------------------------------- setup


def exit_status(run: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """A bench script's main: run(argv) (its result goes to the results JSON; tests call run) -> exit status 0."""
    def main(argv: list[str] | None = None) -> int:
        run(argv)
        return 0

    main.__doc__ = run.__doc__
    return main


def setup_logging(verbose: bool = False) -> None:
    """INFO (or DEBUG) logging to stderr in one format for every benchmark."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.DEBUG if verbose else logging.INFO,
        force=True,
    )
    # the libraries' own INFO chatter (tokenizer training, dataset reading) is noise here
    for name in ("mmgpt", "transformers", "accelerate", "timm"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cpu' / 'cuda' / 'cuda:1' as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: only cpu and cuda are supported")
    return device


def device_name(device: torch.device) -> str:
    """Human-readable device: the GPU's name, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def device_slug(device: torch.device) -> str:
    """Short file-name form of the device: 'cpu', or the GPU name like 'nvidia-h100-80gb-hbm3'."""
    if device.type == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU), so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git_commit(path: Path = REPO, unknown: str | None = "unknown") -> str | None:
    """`git rev-parse --short HEAD` of the checkout at `path` (this repository), or `unknown`."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip() or unknown
    except (OSError, subprocess.SubprocessError):
        return unknown


def environment(device: torch.device) -> dict[str, Any]:
    """Where and when a result was taken: device, date, git commit, versions, threads."""
    env: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name(device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }
    try:
        import transformers

        env["transformers_version"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["cuda_version"] = torch.version.cuda
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return env


# ----------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls; `median_s` is the figure reported."""

    times_s: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        """Median of the repeats."""
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        """Fastest repeat."""
        return min(self.times_s)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: median, min, max and every repeat."""
        return {"median_s": self.median_s, "min_s": self.min_s, "max_s": max(self.times_s),
                "repeats": len(self.times_s), "times_s": self.times_s}


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 5) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times, each timed alone with GPU synchronisation."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    timing = Timing()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        timing.times_s.append(time.perf_counter() - start)
    return timing


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int = 1,
                     repeats: int = 5) -> dict[str, Timing]:
    """Time several callables round-robin (A B C A B C ...), so load from other processes hits each alike.

    Ratios between the medians are then much steadier on a shared machine than timing A's
    repeats, then B's.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    timings = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            timings[name].times_s.append(time.perf_counter() - start)
    return timings


@dataclass
class StepRun:
    """What run_steps measured: the timed steps, their losses, the warm-up, peak memory and a profile."""

    timing: Timing
    losses: list[Any]
    warmup_steps: int
    warmup_s: float
    peak_memory_bytes: int
    profile: dict[str, Any] | None

    def figures(self, batch_size: int) -> dict[str, Any]:
        """The step count, step time and samples/s entries of a training benchmark's JSON."""
        step_s = self.timing.median_s
        return {
            "steps": len(self.timing.times_s),
            "warmup_steps": self.warmup_steps,
            "step_time": self.timing.summary(),
            "step_time_s": step_s,
            "samples_per_s": batch_size / step_s,
        }


def run_steps(step: Callable[[Any], Any], batches: Sequence[Any], device: torch.device, warmup: int, steps: int,
              profile: bool = False) -> StepRun:
    """`warmup` untimed then `steps` timed training steps, cycling through `batches`; then peak memory, a profile.

    Each timed step is synchronised on its own, so a step's time is its own work, not queued work of
    the one before.
    """
    start = time.perf_counter()
    for i in range(warmup):
        step(batches[i % len(batches)])
    synchronize(device)
    warmup_s = time.perf_counter() - start
    timing, losses = Timing(), []
    for i in range(steps):
        begin = time.perf_counter()
        losses.append(step(batches[i % len(batches)]))
        synchronize(device)
        timing.times_s.append(time.perf_counter() - begin)
    # read before profiling, whose extra steps are not part of the measurement
    peak = peak_memory_bytes(device)
    prof = None
    if profile:
        cycle = iter(range(10**9))
        prof = profile_top_ops(lambda: step(batches[next(cycle) % len(batches)]), device, steps=2)
    return StepRun(timing, losses, warmup, warmup_s, peak, prof)


# ----------------------------------------------------------------------------- memory


def reset_peak_memory(device: torch.device) -> None:
    """Start a new GPU peak-memory window (the CPU high-water mark cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA max_memory_allocated since the last reset, or the process's max RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_memory_kind(device: torch.device) -> str:
    """What peak_memory_bytes measures on this device."""
    return "cuda_max_memory_allocated" if device.type == "cuda" else "process_max_rss"


# ----------------------------------------------------------------------------- FLOPs and MFU


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of the GPU from PEAK_FLOPS_BF16; None on CPU or for an unknown GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS_BF16:
        if all(word in name for word in key.split()):
            return value
    logger.warning("no peak-FLOPs entry for %r: MFU not reported (add it to PEAK_FLOPS_BF16)", name)
    return None


def mfu(flops_per_s: float | None, device: torch.device) -> float | None:
    """Model FLOPs utilisation against the bf16 peak; None on CPU."""
    peak = peak_flops(device)
    if peak is None or flops_per_s is None:
        return None
    return flops_per_s / peak


def transformer_forward_flops(num_params: int, num_layers: int, attn_width: int, seq_lens: Iterable[int]) -> float:
    """Forward FLOPs of a transformer over sequences: sum_T (2 * N * T + 4 * L * attn_width * T * T).

    This is nanoGPT's `estimate_mfu` / PaLM's count divided by 3 (forward only): per token
    2N for the weights and 4 * L * H * Q * T for attention scores and values.
    """
    total = 0.0
    for t in seq_lens:
        total += 2.0 * num_params * t + 4.0 * num_layers * attn_width * t * t
    return total


def lookup_parameter_ids(module: nn.Module) -> set[int]:
    """ids of embedding-lookup tables in `module`: nn.Embedding weights, position embeddings, class/register tokens."""
    ids = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    for name, param in module.named_parameters():
        last = name.rsplit(".", 1)[-1]
        if last in ("pos_embed", "cls_token", "reg_token", "dist_token", "position_embedding", "position_embeddings"):
            ids.add(id(param))
    return ids


def count_params(module: nn.Module, exclude: set[int] | None = None) -> int:
    """Parameters of `module` (shared tensors once), leaving out the ids in `exclude`."""
    exclude = exclude or set()
    return sum(p.numel() for p in module.parameters() if id(p) not in exclude)


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that torch.utils.flop_counter counts while running `fn` (matmuls, convolutions, SDPA on GPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def vit_forward_flops(vit: nn.Module, num_images: int) -> float | None:
    """Forward FLOPs of a timm VisionTransformer over `num_images` images; None if `vit` is not one."""
    if not all(hasattr(vit, a) for a in ("patch_embed", "blocks", "embed_dim", "num_prefix_tokens")):
        return None
    grid = getattr(vit.patch_embed, "grid_size", None)
    if grid is None:
        return None
    tokens = int(grid[0]) * int(grid[1]) + int(vit.num_prefix_tokens)
    n = count_params(vit, lookup_parameter_ids(vit))
    return transformer_forward_flops(n, len(vit.blocks), int(vit.embed_dim), [tokens] * num_images)


def causal_lm_forward_flops(lm: nn.Module, seq_lens: Sequence[int], logit_positions: int) -> float:
    """Forward FLOPs of a Hugging Face causal LM: transformer body over `seq_lens`, LM head on `logit_positions`."""
    cfg = lm.config
    head = lm.get_output_embeddings()
    head_weight = head.weight if head is not None else lm.get_input_embeddings().weight
    exclude = lookup_parameter_ids(lm) | {id(head_weight)}
    body = count_params(lm, exclude)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    flops = transformer_forward_flops(body, int(cfg.num_hidden_layers), heads * head_dim, seq_lens)
    return flops + 2.0 * head_weight.numel() * logit_positions


def training_multiplier(trainable: bool, upstream_trainable: bool) -> int:
    """3 for a trainable part, 2 for a frozen part that gradients pass through, 1 for forward only."""
    if trainable:
        return 3
    return 2 if upstream_trainable else 1


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


@torch.no_grad()
def mmgpt_flops(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Model FLOPs of one MMGPT forward and training step on `batch`, per part (see the module docstring)."""
    prompt_lens = batch["attention_mask"].sum(dim=1).tolist()
    answer_lens = batch["answer_mask"].sum(dim=1).tolist()
    num_images = int(batch["pixel_values"].shape[0])
    parts: dict[str, dict[str, Any]] = {}

    # image encoder: analytic for a ViT, counted for anything else (CNNs)
    encoder = model.image_encoder
    vit = getattr(encoder, "model", None)
    forward = vit_forward_flops(vit, num_images) if vit is not None else None
    method = "analytic (ViT)"
    if forward is None:
        forward = counted_flops(lambda: encoder(batch["pixel_values"]))
        method = "FlopCounterMode"
    parts["image_encoder"] = {"forward": float(forward), "method": method}

    # text encoder: a lookup for lm_embeddings, counted otherwise
    text_encoder = model.text_encoder
    if count_params(text_encoder, lookup_parameter_ids(text_encoder)) == 0:
        parts["text_encoder"] = {"forward": 0.0, "method": "embedding lookup"}
    else:
        flops = counted_flops(lambda: text_encoder(batch["input_ids"], batch["attention_mask"]))
        parts["text_encoder"] = {"forward": float(flops), "method": "FlopCounterMode"}

    # fusion and projector: counted on the real batch
    text, text_mask = text_encoder(batch["input_ids"], batch["attention_mask"])
    image = encoder(batch["pixel_values"])
    holder: dict[str, torch.Tensor] = {}

    def run_fusion() -> None:
        holder["fused"], _ = model.fusion(text, text_mask, image)

    parts["fusion"] = {"forward": float(counted_flops(run_fusion)), "method": "FlopCounterMode"}
    parts["projector"] = {"forward": float(counted_flops(lambda: model.projector(holder["fused"]))),
                          "method": "FlopCounterMode"}

    # generator: prefix (one position per prompt token) + answer; logits on the answer positions
    seq_lens = [int(p + a) for p, a in zip(prompt_lens, answer_lens)]
    parts["generator"] = {"forward": causal_lm_forward_flops(model.generator, seq_lens, int(sum(answer_lens))),
                          "method": "analytic (transformer + LM head)"}

    # does anything before each part need gradients? (lm_embeddings trains the generator's embedding table)
    embedding = model.generator.get_input_embeddings().weight
    text_trainable = _trainable(text_encoder) or (parts["text_encoder"]["method"] == "embedding lookup"
                                                  and embedding.requires_grad)
    upstream = {"image_encoder": False, "text_encoder": False}
    upstream["fusion"] = _trainable(encoder) or text_trainable
    upstream["projector"] = upstream["fusion"] or _trainable(model.fusion)
    upstream["generator"] = upstream["projector"] or _trainable(model.projector)
    for name in ("image_encoder", "text_encoder", "fusion", "projector", "generator"):
        trainable = text_trainable if name == "text_encoder" else _trainable(getattr(model, name))
        mult = training_multiplier(trainable, upstream[name])
        parts[name].update(trainable=trainable, train_multiplier=mult, train=parts[name]["forward"] * mult)
    forward_total = sum(p["forward"] for p in parts.values())
    train_total = sum(p["train"] for p in parts.values())
    return {
        "forward_flops": forward_total,
        "train_flops": train_total,
        "parts": parts,
        "prompt_tokens": int(sum(prompt_lens)),
        "answer_tokens": int(sum(answer_lens)),
        "images": num_images,
    }


# ----------------------------------------------------------------------------- profiling


def profile_top_ops(fn: Callable[[], Any], device: torch.device, steps: int = 2, top: int = 12) -> dict[str, Any]:
    """Run `fn` `steps` times under torch.profiler; the ops with the most self time (device time on GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    on_gpu = device.type == "cuda"

    def self_us(e: Any) -> float:
        if on_gpu:
            return float(getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0))
        return float(e.self_cpu_time_total)

    total = sum(self_us(e) for e in events) or 1.0
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    return {
        "steps": steps,
        "wall_s": wall,
        "time_kind": "self device time" if on_gpu else "self CPU time",
        "total_self_ms": total / 1e3,
        "top_ops": [{"name": e.key, "self_ms": self_us(e) / 1e3, "share": self_us(e) / total, "calls": int(e.count)}
                    for e in ranked],
        # on GPU: the share of wall time the device was busy; low means launch/Python overhead
        "device_busy_share": (total / 1e6) / wall if on_gpu else None,
    }


# ----------------------------------------------------------------------------- results


def results_path(name: str, device: torch.device, out_dir: str | Path | None = None) -> Path:
    """bench/results/<name>-<device>.json (or under `out_dir`)."""
    return Path(out_dir or RESULTS_DIR) / f"{name}-{device_slug(device)}.json"


def write_results(name: str, device: torch.device, payload: dict[str, Any], out_dir: str | Path | None = None,
                  benchmark: str | None = None) -> Path:
    """Write {benchmark, variant, env, **payload} to <name>-<device>.json; returns the path.

    `benchmark` is the script (train_throughput, ...), `name` the file stem, which may add a
    variant (train_throughput-gpu200m-compile); it defaults to `benchmark`.
    """
    path = results_path(name, device, out_dir)
    data = {"benchmark": benchmark or name, "variant": name, "env": environment(device), **payload}
    write_json(path, data, indent=2, default=_json_default, newline=True)
    logger.info("wrote %s", path)
    return path


def write_marked_section(path: Path, name: str, body: str, empty: str = "", replace_unmarked: bool = False) -> str:
    """Put `body` between `<!-- name:start -->` and `<!-- name:end -->` in the markdown file `path`; returns its text.

    Whatever stands outside the markers (hand-written sections, other generated ones) is kept. Where the file
    (or `empty`, when there is none) has no such markers, the block is appended, or with `replace_unmarked`
    becomes the whole file.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else empty
    block = f"{start}\n{body}\n{end}\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) + 1:]
    elif replace_unmarked or not text:
        text = block
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
    return text


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fmt(value: Any, spec: str = ".3g") -> str:
    """A table cell: numbers formatted with `spec`, None as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (key, header, format spec)."""
    header = [h for _, h, _ in columns]
    body = [[fmt(row.get(key), spec) for key, _, spec in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print a titled table to stdout (the one thing the benchmarks print)."""
    print(f"\n{title}\n{format_table(rows, columns)}", flush=True)


def human_bytes(n: int | None) -> str:
    """1234567 -> '1.2 MiB'."""
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
