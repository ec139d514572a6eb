"""Generation speed: tokens/s by batch size and length, KV-cache speedup, and answer() overhead.

For each batch size (default 1, 8, 32) and number of new tokens (default 32, 128), greedy decoding
of exactly N new tokens (``min_new_tokens = max_new_tokens``, so eos cannot end it early) is timed
four ways, round-robin (so load from other processes hits each alike), on the same randomly
initialised model and the same prompts and images:

* ``generate``: ``MMGPT.generate`` on a preprocessed batch (encode, fuse, project, then the
  generator's Hugging Face ``generate`` with its KV cache);
* ``generate_no_cache``: the same with ``use_cache=False`` passed through to Hugging Face ``generate``
  (every step re-runs the whole prefix + answer so far);
* ``bare``: ``generator.generate(inputs_embeds=..., attention_mask=...)`` on the prefix that
  ``MMGPT.generate`` would build, computed once beforehand: decoding alone, no mmgpt code;
* ``answer``: the public ``answer(prompts, images, model=...)`` from PIL images to strings.

Ratios: KV-cache speedup at the longest length, batch-32 over batch-1 tokens/s, and
answer()/bare and generate()/bare time (framework overhead). A stage breakdown of one answer()
call (preprocess, encode, decode loop, detokenize) shows where the overhead goes. On GPU, bf16
autocast is used for every path (answer() cannot take a model cast to bf16: its pixel tensors stay
float32).

    python -m bench.generation                        # default config, CPU or GPU
    python -m bench.generation --config gpu200m       # ~200M model (GPU)
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image

from bench import cli, common, workloads

logger = logging.getLogger("bench.generation")

NAME = "generation"
MODES = ("generate", "generate_no_cache", "bare", "answer")


@contextlib.contextmanager
def forced_length(model: Any, new_tokens: int) -> Iterator[None]:
    """Make every generate call of the model's generator produce exactly `new_tokens` tokens (eos suppressed)."""
    config = model.generator.generation_config
    old = config.min_new_tokens
    config.min_new_tokens = new_tokens
    try:
        yield
    finally:
        config.min_new_tokens = old


def random_images(n: int, size: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """n random RGB PIL images of `size` (H, W)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)) for _ in range(n)]


@torch.no_grad()
def prefix_inputs(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs_embeds and attention mask MMGPT.generate hands to the generator: prefix + bos."""
    inputs = model.generator_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    return inputs.inputs_embeds, inputs.attention_mask


def bare_generate(model: Any, embeds: torch.Tensor, mask: torch.Tensor, new_tokens: int,
                  use_cache: bool = True) -> torch.Tensor:
    """Hugging Face generate on precomputed inputs_embeds, greedy, exactly `new_tokens` tokens."""
    tok = model.processor.tokenizer
    return model.generator.generate(
        inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, use_cache=use_cache, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )


def measure(config: str = "default", tiny: bool = False, device: torch.device | None = None,
            batch_sizes: Sequence[int] = (1, 8, 32), new_tokens: Sequence[int] = (32, 128), repeats: int = 3,
            warmup: int = 1, dtype: str = "auto", profile: bool = False, seed: int = 0) -> dict[str, Any]:
    """Time every (batch size, length, mode); returns runs, ratios, the answer() breakdown and a correctness check."""
    from mmgpt.inference import answer

    device = device or common.resolve_device("auto")
    dtype = ("bf16" if device.type == "cuda" else "fp32") if dtype == "auto" else dtype
    work = workloads.workload(config, tiny=tiny)
    model = workloads.build_model(work.model, seed=seed).eval().to(device)
    info = workloads.describe(model)
    logger.info("%s: %.1fM parameters, %s on %s", work.name, info["params_total"] / 1e6, dtype, device)
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16"
                else contextlib.nullcontext)
    size = workloads.image_size(model)
    max_batch = max(batch_sizes)
    images = random_images(max_batch, size, seed=seed)
    prompts = [q for q, _ in workloads.easy_vqa_like(max_batch, seed=seed)]

    def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in batch.items()}

    common.reset_peak_memory(device)
    runs = []
    for batch_size in batch_sizes:
        batch = to_device(model.processor(prompts[:batch_size], images[:batch_size]))
        with autocast():
            embeds, mask = prefix_inputs(model, batch)
        for n in new_tokens:
            # the calls run within this iteration; default arguments bind this iteration's values explicitly
            calls: dict[str, Callable[[], Any]] = {
                "generate": lambda batch=batch, n=n: model.generate(
                    batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                    max_new_tokens=n, min_new_tokens=n),
                "generate_no_cache": lambda batch=batch, n=n: model.generate(
                    batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                    max_new_tokens=n, min_new_tokens=n, use_cache=False),
                "bare": lambda embeds=embeds, mask=mask, n=n: bare_generate(model, embeds, mask, n),
                "answer": lambda batch_size=batch_size, n=n: answer(
                    prompts[:batch_size], images[:batch_size], model=model, max_new_tokens=n,
                    batch_size=batch_size),
            }
            row: dict[str, Any] = {"batch_size": batch_size, "new_tokens": n}
            with forced_length(model, n), autocast():
                produced = calls["bare"]().shape[1]
                if produced != n:
                    raise RuntimeError(f"bare generate produced {produced} tokens, expected {n}")
                timings = common.time_interleaved(calls, device, warmup=warmup, repeats=repeats)
                for mode, timing in timings.items():
                    row[f"{mode}_s"] = timing.median_s
                    row[f"{mode}_times_s"] = timing.times_s
                    row[f"{mode}_tokens_per_s"] = batch_size * n / timing.median_s
            row["cache_speedup"] = row["generate_no_cache_s"] / row["generate_s"]
            row["answer_over_bare"] = row["answer_s"] / row["bare_s"]
            row["generate_over_bare"] = row["generate_s"] / row["bare_s"]
            logger.info("batch %d, %d tokens: generate %.3fs, no cache %.3fs, bare %.3fs, answer %.3fs", batch_size, n,
                        row["generate_s"], row["generate_no_cache_s"], row["bare_s"], row["answer_s"])
            runs.append(row)
    peak = common.peak_memory_bytes(device)

    # does decoding without the cache give the same tokens? (greedy; fp32 should match exactly)
    small = to_device(model.processor(prompts[:2], images[:2]))
    n_check = min(16, max(new_tokens))
    with forced_length(model, n_check), autocast():
        cached = model.generate(small["input_ids"], small["attention_mask"], small["pixel_values"],
                                max_new_tokens=n_check)
        uncached = model.generate(small["input_ids"], small["attention_mask"], small["pixel_values"],
                                  max_new_tokens=n_check, use_cache=False)
    outputs_match = bool(torch.equal(cached, uncached))

    breakdown = answer_breakdown(model, prompts[: min(batch_sizes)], images[: min(batch_sizes)], min(new_tokens),
                                 device, autocast, warmup, repeats)
    prof = None
    if profile:
        b1 = to_device(model.processor(prompts[:1], images[:1]))
        with autocast():
            e1, m1 = prefix_inputs(model, b1)
        n = max(new_tokens)
        with forced_length(model, n), autocast():
            prof = {
                "cache": common.profile_top_ops(lambda: bare_generate(model, e1, m1, n), device, steps=1),
                "no_cache": common.profile_top_ops(lambda: bare_generate(model, e1, m1, n, use_cache=False),
                                                   device, steps=1),
            }
    return {
        "config": work.name,
        "fusion": work.model.fusion.type,
        "dtype": dtype,
        **info,
        "image_size": list(size),
        "runs": runs,
        "ratios": ratios(runs),
        "answer_breakdown": breakdown,
        "cache_outputs_match": outputs_match,
        "peak_memory_bytes": peak,
        "peak_memory_kind": common.peak_memory_kind(device),
        "profile": prof,
    }


def answer_breakdown(model: Any, prompts: list[str], images: list[Image.Image], new_tokens: int,
                     device: torch.device, autocast: Callable[[], Any], warmup: int, repeats: int) -> dict[str, Any]:
    """Median time of each stage answer() goes through, at one batch size and length."""
    from mmgpt.inference import question_prompts

    state: dict[str, Any] = {}

    def preprocess() -> None:
        batch = model.processor(question_prompts(model, prompts), images)
        state["batch"] = {k: v.to(device) for k, v in batch.items()}

    def encode() -> None:
        b = state["batch"]
        state["prefix"] = prefix_inputs(model, b)

    def decode_loop() -> None:
        state["tokens"] = bare_generate(model, *state["prefix"], new_tokens)

    def detokenize() -> None:
        model.processor.decode(state["tokens"])

    # interleaved in pipeline order, so each stage sees the previous stage's fresh output
    with forced_length(model, new_tokens), autocast():
        timings = common.time_interleaved({"preprocess": preprocess, "encode": encode, "decode_loop": decode_loop,
                                           "detokenize": detokenize}, device, warmup=warmup, repeats=repeats)
    stages = {name: t.median_s for name, t in timings.items()}
    total = sum(stages.values())
    return {"batch_size": len(prompts), "new_tokens": new_tokens, "stages_s": stages,
            "shares": {k: v / total for k, v in stages.items()},
            "overhead_over_decode": (total - stages["decode_loop"]) / stages["decode_loop"]}


def ratios(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The headline ratios from the runs (each labelled with the sizes it was taken at)."""
    longest = max(r["new_tokens"] for r in runs)
    smallest, largest = min(r["batch_size"] for r in runs), max(r["batch_size"] for r in runs)
    cache = {str(r["batch_size"]): r["cache_speedup"] for r in runs if r["new_tokens"] == longest}
    by = {(r["batch_size"], r["new_tokens"]): r for r in runs}
    scaling = {str(n): by[(largest, n)]["generate_tokens_per_s"] / by[(smallest, n)]["generate_tokens_per_s"]
               for n in sorted({r["new_tokens"] for r in runs})}
    overhead = {f"{r['batch_size']}x{r['new_tokens']}": r["answer_over_bare"] for r in runs}
    return {
        "cache_speedup": {"new_tokens": longest, "by_batch_size": cache, "min": min(cache.values())},
        "batch_scaling": {"large_batch": largest, "small_batch": smallest, "by_new_tokens": scaling,
                          "min": min(scaling.values())},
        "answer_over_bare": {"by_batch_x_tokens": overhead, "max": max(overhead.values())},
        "generate_over_bare_max": max(r["generate_over_bare"] for r in runs),
    }


TABLE = [
    ("batch_size", "batch", "d"),
    ("new_tokens", "new tok", "d"),
    ("generate_tokens_per_s", "tok/s cache", ".0f"),
    ("generate_no_cache_tokens_per_s", "tok/s no cache", ".0f"),
    ("cache_speedup", "cache x", ".2f"),
    ("bare_s", "bare (s)", ".4f"),
    ("generate_s", "generate (s)", ".4f"),
    ("answer_s", "answer (s)", ".4f"),
    ("answer_over_bare", "answer/bare", ".3f"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of this benchmark."""
    parser = cli.new_parser(__doc__)
    cli.add_workload_options(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                        help="bf16 autocast or fp32 (auto: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--profile", action="store_true", help="record top ops of decoding with and without cache")
    cli.add_run_options(parser)
    args = parser.parse_args(argv)
    cli.check_workload_options(parser, args)
    if min(args.batch_sizes) < 1 or min(args.new_tokens) < 1 or args.repeats < 1:
        parser.error("batch sizes, new tokens and repeats must be >= 1")
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns it."""
    args = parse_args(argv)
    device = cli.setup(args)
    result = measure(args.config, tiny=args.tiny, device=device, batch_sizes=sorted(set(args.batch_sizes)),
                     new_tokens=sorted(set(args.new_tokens)), repeats=args.repeats, warmup=args.warmup,
                     dtype=args.dtype, profile=args.profile, seed=args.seed)
    common.print_table(f"generation ({result['config']}, {result['dtype']}) on {common.device_name(device)}",
                       result["runs"], TABLE)
    r = result["ratios"]
    b = result["answer_breakdown"]
    print(f"KV-cache speedup at {r['cache_speedup']['new_tokens']} tokens (min over batch sizes): "
          f"{r['cache_speedup']['min']:.2f}x; batch {r['batch_scaling']['large_batch']} vs "
          f"{r['batch_scaling']['small_batch']} tokens/s (min over lengths): {r['batch_scaling']['min']:.2f}x; "
          f"answer()/bare generate (max): {r['answer_over_bare']['max']:.3f}; cache and no-cache outputs match: "
          f"{result['cache_outputs_match']}")
    stages = ", ".join(f"{k} {v * 1e3:.1f} ms ({100 * b['shares'][k]:.0f}%)" for k, v in b["stages_s"].items())
    print(f"answer() stages at batch {b['batch_size']:d}, {b['new_tokens']:d} tokens: {stages}")
    return cli.write(NAME, cli.result_name(NAME, result["config"]), device, args, result)


main = common.exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
