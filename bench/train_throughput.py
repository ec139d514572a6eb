"""Training throughput: samples/s, tokens/s, step time, peak memory and MFU of real mmgpt training steps.

Each step is the training loop's own (mmgpt/training/loop.py): an accelerate-prepared model and the
optimizer from `build_optimizer` (fused AdamW on CPU and GPU) with the cosine schedule, `model(**batch)`,
backward of `loss_sum / supervised tokens` (the loop's normalisation, one process), gradient
clipping, optimizer and scheduler step. Batches are made by the model's processor from random
images and easy-VQA-like text and sit on the device, so data loading is not timed (see
bench/data_pipeline.py for that).

    python -m bench.train_throughput                                # default CPU config, batch 128
    python -m bench.train_throughput --config gpu200m --fusion all  # ~200M model, bf16 (GPU)
    python -m bench.train_throughput --config gpu200m --tiny        # the same code path, shrunk for CPU
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import cli, common, workloads

logger = logging.getLogger("bench.train_throughput")

NAME = "train_throughput"


@contextlib.contextmanager
def fresh_accelerator(mixed_precision: str, device: torch.device) -> Any:
    """An Accelerator with this precision; accelerate's global state is reset before and after."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    try:
        yield Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu")
    finally:
        AcceleratorState._reset_state(True)


def make_step(model: Any, forward: Callable[..., Any], optimizer: Any, scheduler: Any, accelerator: Any,
              grad_clip: float) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """One optimizer step exactly as mmgpt/training/loop.py takes it (one process, no gradient accumulation)."""

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # the loop normalises by the supervised tokens of the global batch
        tokens = batch["answer_mask"][:, 1:].sum().to(torch.float32).clamp(min=1.0)
        out = forward(**batch, split_lengths=True)
        accelerator.backward(out.loss_sum * accelerator.num_processes / tokens)
        if grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss_sum.detach()

    return step


def measure(config: str = "default", fusion: str | None = None, tiny: bool = False, batch_size: int | None = None,
            steps: int = 10, warmup: int = 3, device: torch.device | None = None, precision: str | None = None,
            compile: bool = False, freeze_image_encoder: bool = False, profile: bool = False,
            count_flops: bool = True, seed: int = 0, image_autocast: str | None = None) -> dict[str, Any]:
    """Build the workload, take `warmup` + `steps` training steps, and return the figures of the timed ones."""
    from mmgpt.training.loop import image_autocast as image_autocast_on
    from mmgpt.training.optim import apply_freezing, build_optimizer, build_scheduler, fused_adamw, set_train_mode

    device = device or common.resolve_device("auto")
    work = workloads.workload(config, fusion=fusion, tiny=tiny)
    if freeze_image_encoder:
        work.model.image_encoder.freeze = True
    batch_size = batch_size or work.batch_size
    precision = precision or work.mixed_precision
    if device.type == "cpu" and precision == "fp16":
        raise SystemExit("fp16 autocast needs a GPU; use --precision bf16 or no on CPU")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    with fresh_accelerator(precision, device) as accelerator:
        model = workloads.build_model(work.model, seed=seed)
        image_autocast = image_autocast or work.image_encoder_autocast
        if image_autocast_on(image_autocast, device):
            # as the training loop does for image_encoder_autocast
            model.train_image_autocast = torch.bfloat16
        frozen = apply_freezing(model)
        info = workloads.describe(model)
        logger.info("%s (fusion %s): %.1fM parameters, batch %d, precision %s, device %s", work.name,
                    work.model.fusion.type, info["params_total"] / 1e6, batch_size, precision, device)
        common.reset_peak_memory(device)
        optimizer = build_optimizer(model, work.optim, fused=fused_adamw(device))
        scheduler = build_scheduler(optimizer, work.optim, total_steps=warmup + steps + 100)
        prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        raw = accelerator.unwrap_model(prepared)
        forward = torch.compile(prepared) if compile else prepared
        batches = workloads.synthetic_batches(raw, batch_size, num_batches=4, device=accelerator.device, seed=seed)
        set_train_mode(raw, frozen)

        flops = common.mmgpt_flops(raw, batches[0])
        step = make_step(prepared, forward, optimizer, scheduler, accelerator, work.optim.grad_clip)
        eager_step = make_step(prepared, prepared, optimizer, scheduler, accelerator, work.optim.grad_clip)

        counted = None
        if count_flops:
            # an extra, untimed step (eager: the counter cannot see inside compiled graphs)
            counted = common.counted_flops(lambda: eager_step(batches[0]))

        run = common.run_steps(step, batches, device, warmup, steps, profile=profile)
        final_loss = float(torch.stack(run.losses).mean()) if run.losses else None

    step_s = run.timing.median_s
    prompt_tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
    answer_tokens = sum(int(b["answer_mask"].sum()) for b in batches) / len(batches)
    supervised = sum(int(b["answer_mask"][:, 1:].sum()) for b in batches) / len(batches)
    flops_per_s = flops["train_flops"] / step_s
    return {
        "config": work.name,
        "fusion": work.model.fusion.type,
        "batch_size": batch_size,
        "precision": precision,
        "compile": compile,
        "image_encoder_autocast": image_autocast,
        "image_size": list(workloads.image_size(raw)),
        "frozen": [k for k, v in frozen.items() if v],
        **info,
        **run.figures(batch_size),
        # generator tokens: prompt (one prefix position each) + answer, padding excluded
        "tokens_per_s": (prompt_tokens + answer_tokens) / step_s,
        "supervised_tokens_per_s": supervised / step_s,
        "peak_memory_bytes": run.peak_memory_bytes,
        "peak_memory_kind": common.peak_memory_kind(device),
        "flops_per_step": flops["train_flops"],
        "flops_per_step_by_part": {k: v["train"] for k, v in flops["parts"].items()},
        "flops_detail": flops,
        "flops_per_step_counted": counted,
        "achieved_tflops": flops_per_s / 1e12,
        "peak_tflops_bf16": (common.peak_flops(device) or 0) / 1e12 or None,
        "mfu": common.mfu(flops_per_s, device),
        "compile_warmup_s": run.warmup_s if compile else None,
        "mean_loss_per_batch": final_loss,
        "profile": run.profile,
    }


TABLE = [
    ("config", "config", ""),
    ("fusion", "fusion", ""),
    ("batch_size", "batch", "d"),
    ("precision", "prec", ""),
    ("params_m", "params (M)", ".1f"),
    ("step_ms", "step (ms)", ".1f"),
    ("samples_per_s", "samples/s", ".1f"),
    ("tokens_per_s", "tokens/s", ".0f"),
    ("peak_mem", "peak mem", ""),
    ("achieved_tflops", "TFLOP/s", ".3g"),
    ("mfu_pct", "MFU %", ".1f"),
]


def table_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs -> rows for TABLE."""
    return [{**r, "params_m": r["params_total"] / 1e6, "step_ms": r["step_time_s"] * 1e3,
             "peak_mem": common.human_bytes(r["peak_memory_bytes"]),
             "mfu_pct": None if r["mfu"] is None else 100 * r["mfu"]} for r in runs]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of this benchmark."""
    parser = cli.new_parser(__doc__)
    cli.add_workload_options(parser, fusion=True)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 (default), 64 (gpu200m)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 10 with --compile)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default=None,
                        help="autocast precision (default: 'no' for default, 'bf16' for gpu200m)")
    parser.add_argument("--image-autocast", choices=("no", "bf16", "auto"), default=None,
                        help="the image encoder's training autocast (default: the config's image_encoder_autocast)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model, as train.py's compile: true")
    parser.add_argument("--freeze-image-encoder", action="store_true")
    parser.add_argument("--no-count-flops", action="store_true", help="skip the FlopCounterMode cross-check step")
    parser.add_argument("--profile", action="store_true", help="record the top ops of 2 profiled steps in the JSON")
    cli.add_run_options(parser)
    args = parser.parse_args(argv)
    cli.check_workload_options(parser, args)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark for each requested fusion, print the table, write the JSON; returns it."""
    args = parse_args(argv)
    device = cli.setup(args)
    fusions = list(workloads.FUSIONS) if args.fusion == "all" else [args.fusion]
    warmup = cli.warmup_steps(args)
    runs = []
    for fusion in fusions:
        runs.append(measure(args.config, fusion=fusion, tiny=args.tiny, batch_size=args.batch_size, steps=args.steps,
                            warmup=warmup, device=device, precision=args.precision, compile=args.compile,
                            freeze_image_encoder=args.freeze_image_encoder, profile=args.profile,
                            count_flops=not args.no_count_flops, seed=args.seed, image_autocast=args.image_autocast))
    common.print_table(f"training throughput on {common.device_name(device)}", table_rows(runs), TABLE)
    name = cli.result_name(NAME, runs[0]["config"])
    name += ("-compile" if args.compile else "") + ("-frozen" if args.freeze_image_encoder else "")
    return cli.write(NAME, name, device, args, {"runs": runs})


main = common.exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
