"""CPU thread settings under contention: training step time with and without another busy process.

A training run that shares the machine's cores with another job (a test suite, a second run) can slow
down far more than the lost core explains: OpenMP's worker threads spin at every barrier waiting for a
thread the scheduler has parked. This runs bench/train_throughput.py (the training loop's own step, default
config) in a fresh process per setting, so OpenMP reads its environment at start, once on an idle machine
and once beside `--busy` processes that each spin one core, settings interleaved, and reports median step
times side by side.

    python -m bench.cpu_threads                  # threads 1 and all cores, spin and passive waiting
    python -m bench.cpu_threads --busy 1 --steps 10
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import cli, common

logger = logging.getLogger("bench.cpu_threads")

NAME = "cpu_threads"
REPO = Path(__file__).resolve().parent.parent

TABLE = [("setting", "setting", "s"), ("load", "other busy processes", "d"), ("step_ms", "step ms (median)", ".0f"),
         ("vs_idle", "x its idle time", ".2f"), ("vs_best", "x best idle setting", ".2f")]


def spin(stop_at: float) -> None:
    """Keep one core busy until the wall clock passes stop_at (a stand-in for another job)."""
    x = 0
    while time.time() < stop_at:
        x += 1


def settings(cores: int) -> dict[str, dict[str, str]]:
    """Name -> environment for the training process: thread counts and OpenMP's wait policy."""
    found: dict[str, dict[str, str]] = {}
    for threads in sorted({1, cores}):
        found[f"{threads} thread(s), spin-wait"] = {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "ACTIVE"}
        if threads > 1:
            found[f"{threads} threads, passive wait"] = {"OMP_NUM_THREADS": str(threads),
                                                         "OMP_WAIT_POLICY": "PASSIVE"}
    return found


def step_time(env: dict[str, str], steps: int, warmup: int, busy: int) -> float:
    """Median training step time (s) in a fresh process with env, beside `busy` spinning processes."""
    spinners = [multiprocessing.Process(target=spin, args=(time.time() + 600,), daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "bench.train_throughput", "--steps", str(steps), "--warmup", str(warmup),
                       "--no-count-flops", "--device", "cpu", "--threads", env["OMP_NUM_THREADS"], "--out-dir", out]
            subprocess.run(command, cwd=REPO, env={**os.environ, **env}, check=True, capture_output=True, text=True)
            (result,) = Path(out).glob("*.json")
            return json.loads(result.read_text())["runs"][0]["step_time_s"]
    finally:
        for p in spinners:
            p.terminate()
            p.join()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every setting idle and under load, interleaved, print the table, write the JSON."""
    parser = cli.new_parser(__doc__)
    parser.add_argument("--busy", type=int, default=1, help="spinning processes beside training in the loaded case")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="repeats of the whole interleaved sweep (best kept)")
    cli.add_run_options(parser)
    args = parser.parse_args(argv)
    args.device = "cpu"
    device = cli.setup(args)
    cores = len(os.sched_getaffinity(0))
    chosen = settings(cores)
    times: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for busy in (0, args.busy):
            for name, env in chosen.items():
                t = step_time(env, args.steps, args.warmup, busy)
                times[name, busy] = min(t, times.get((name, busy), float("inf")))
                logger.info("%s, %d busy: %.0f ms", name, busy, 1e3 * t)
    best_idle = min(times[name, 0] for name in chosen)
    rows = [{"setting": name, "load": busy, "step_ms": 1e3 * t, "vs_idle": t / times[name, 0], "vs_best": t / best_idle}
            for (name, busy), t in times.items()]
    rows.sort(key=lambda r: (r["load"], r["step_ms"]))
    common.print_table(f"training step time beside busy processes on {common.device_name(device)} ({cores} cores)",
                       rows, TABLE)
    return cli.write(NAME, NAME, torch.device("cpu"), args, {"cores": cores, "rows": rows})


if __name__ == "__main__":
    main()
