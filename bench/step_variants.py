"""Training step time of the main job against variants of its config, side by side in one process.

Each variant is a run of train.py's config with its own overrides, built by the training loop itself
(model, optimizer, bf16 autocast policy). Variants with the same data settings take the same batches, drawn
as the loop draws them (mixed batches, split by answer length); one that changes them (e.g.
`data.questions_per_image=2`) draws its own from the same seed. They run round-robin, so load from other
processes hits each alike.

    python -m bench.step_variants                                   # the default against its CNN in fp32
    python -m bench.step_variants --variant "fp32 CNN" image_encoder_autocast=no \\
        --variant "stride-2 CNN" model.image_encoder.name=mmgpt_tiny_cnn --steps 20
    python -m bench.step_variants --variant "2 questions per image" data.questions_per_image=2
    python -m bench.step_variants --common batch_size=8 --steps 2   # overrides every variant shares
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import common

logger = logging.getLogger("bench.step_variants")

NAME = "step_variants"
BASE = "default"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "OVERRIDE"), default=None,
                        help="a variant: its name, then train.py overrides (repeatable; default: the CNN in fp32)")
    parser.add_argument("--common", nargs="*", default=[], help="train.py overrides every variant shares")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each variant first")
    parser.add_argument("--out-dir", default=None, help="results folder (default bench/results)")
    return parser.parse_args(argv)


def loader_batch(data: Any, collate: Any, positions: list[int]) -> dict[str, Any]:
    """The batch the training loader makes of `positions`, without its bad-image counts (not model inputs)."""
    batch = collate([data[p] for p in positions])
    return {k: v for k, v in batch.items() if k not in ("bad_images", "images_read")}


def train_step(run_: Any, batch: dict[str, Any]) -> None:
    """One optimizer step of the training loop on `batch` (one micro-batch)."""
    from mmgpt.training.loop import forward_backward

    forward_backward(run_, [batch])
    run_.optimizer.step()
    run_.optimizer.zero_grad()


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Time a step of the main job and of each variant; returns {path, variants}."""
    from accelerate.state import AcceleratorState

    from mmgpt.training.loop import build_run
    from mmgpt.training.loop import parse_args as train_args

    args = parse_args(argv)
    common.setup_logging()
    variants = {BASE: [], **{v[0]: v[1:] for v in (args.variant or [["fp32 CNN", "image_encoder_autocast=no"]])}}
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for i, (name, overrides) in enumerate(variants.items()):
            cfg, train_ns = train_args([f"output_dir={folder}/run{i}", *args.common, *overrides])
            # accelerate keeps one global state: a variant with another mixed_precision needs it anew (each
            # prepared model keeps its own autocast)
            AcceleratorState._reset_state(True)
            runs[name] = build_run(cfg, train_ns)
        # variants with the same data settings and batch size take the same batches: the first of them draws a new
        # one each round, from its run's own sampler and collate, as the training loader would
        streams: dict[str, tuple] = {}
        rows: dict[str, int] = {}
        plan: dict[str, tuple[tuple, bool]] = {}
        for name, run_ in runs.items():
            key = repr((run_.cfg.data, run_.cfg.batch_size, run_.cfg.seed))
            draws = key not in streams
            if draws:
                streams[key] = (run_.loader.dataset, run_.loader.collate_fn, iter(run_.batch_sampler), {})
            plan[name] = (streams[key], draws)

        def step(name: str) -> None:
            (data, collate, batches, batch), draws = plan[name]
            if draws:
                batch.clear()
                batch.update(loader_batch(data, collate, next(batches)))
            rows[name] = len(batch["input_ids"])
            train_step(runs[name], dict(batch))

        timings = common.time_interleaved({name: (lambda n=name: step(n)) for name in variants}, device,
                                          warmup=args.warmup, repeats=args.steps)
        params = {name: sum(p.numel() for p in r.raw_model.parameters()) for name, r in runs.items()}
    base = timings[BASE].median_s
    results = {name: {**t.summary(), "ratio_to_default": t.median_s / base, "overrides": variants[name],
                      "parameters": params[name], "batch_rows": rows[name]} for name, t in timings.items()}
    for name, figures in results.items():
        logger.info("%-24s %7.1f ms  %.2fx", name, 1000 * figures["median_s"], figures["ratio_to_default"])
    path = common.write_results(NAME, device, {"common": args.common, "variants": results}, args.out_dir)
    return {"path": str(path), "variants": results}


main = common.exit_status(run)

if __name__ == "__main__":
    sys.exit(main())
