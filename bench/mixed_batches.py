"""Step time of the main job with batches of one training set against mixed batches, side by side in one process.

Each step is the training loop's own `forward_backward` and optimizer step, on batches the run's own loader
data gives (images read from the checked, cached sets), drawn round-robin: a one-set batch, a mixed batch split
by answer length (the default), a mixed batch in one pass. Load from other processes then hits each alike.

    python -m bench.mixed_batches                       # the main job's config, 40 steps of each
    python -m bench.mixed_batches --steps 5 batch_size=8 # any train.py override after the options
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
from bench.step_variants import loader_batch, train_step

logger = logging.getLogger("bench.mixed_batches")

NAME = "mixed_batches"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    parser.add_argument("--out-dir", default=None, help="results folder (default bench/results)")
    parser.add_argument("overrides", nargs="*", help="train.py config overrides")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Time the three kinds of step; returns {path, kinds}."""
    from mmgpt.data.dataset import GroupedBatches, make_collate
    from mmgpt.training.loop import build_run
    from mmgpt.training.loop import parse_args as train_args

    args = parse_args(argv)
    common.setup_logging()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        cfg, train_ns = train_args([f"output_dir={folder}/run", *args.overrides])
        run_ = build_run(cfg, train_ns)
        mixture, data = run_.batch_sampler.mixture, run_.loader.dataset
        collate = make_collate(run_.raw_model.processor)
        size = cfg.batch_size
        samplers = {"one set per batch": GroupedBatches(mixture, size, seed=cfg.seed),
                    "mixed, split by answer length": GroupedBatches(mixture, size, seed=cfg.seed, mixed=True),
                    "mixed, one pass": GroupedBatches(mixture, size, seed=cfg.seed, mixed=True)}
        streams = {name: iter(sampler) for name, sampler in samplers.items()}

        def step(name: str) -> None:
            batch = loader_batch(data, collate, next(streams[name]))
            if name != "mixed, one pass":
                train_step(run_, batch)
                return
            run_.model(**batch).loss.backward()
            run_.optimizer.step()
            run_.optimizer.zero_grad()

        timings = common.time_interleaved({name: (lambda n=name: step(n)) for name in samplers}, device,
                                          warmup=args.warmup, repeats=args.steps)
    base = timings["one set per batch"].median_s
    kinds = {name: {**t.summary(), "ratio_to_one_set": t.median_s / base} for name, t in timings.items()}
    for name, figures in kinds.items():
        logger.info("%-32s %7.1f ms  %.2fx", name, 1000 * figures["median_s"], figures["ratio_to_one_set"])
    path = common.write_results(NAME, device, {"batch_size": size, "overrides": args.overrides, "kinds": kinds},
                                args.out_dir)
    return {"path": str(path), "kinds": kinds}


main = common.exit_status(run)

if __name__ == "__main__":
    sys.exit(main())
