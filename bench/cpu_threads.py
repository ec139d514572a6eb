"""CPU thread settings under contention: training step time with and without another busy process.

A training run that shares the machine's cores with another job (a test suite, a second run) can slow
down far more than the lost core explains: OpenMP's worker threads spin at every barrier waiting for a
thread the scheduler has parked. This runs bench/train_throughput.py (the training loop's own step, default
config) in a fresh process per setting, so OpenMP reads its environment at start, on an idle machine and
beside each count of `--busy` processes that each spin one core, all conditions interleaved within each round,
and reports median step times side by side. A training run with cpu_threads: 0 takes the OpenMP default with
the thread count mmgpt.devices.threads_beside picks for the cores other processes keep busy during its start-up;
the table's last rows ("follow_cpu_load: true") repeat the row of that setting for each load.

    python -m bench.cpu_threads                  # idle, 1 and 2 busy processes
    python -m bench.cpu_threads --busy 1 --steps 10
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import statistics
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
from mmgpt.devices import threads_beside

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


# what the environment may hold that changes how OpenMP threads wait; each setting states all of it
_WAIT_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def settings(cores: int) -> dict[str, dict[str, str]]:
    """Name -> environment for the training process: thread counts and how OpenMP's threads wait."""
    found: dict[str, dict[str, str]] = {
        f"{cores} threads, OpenMP default": {"OMP_NUM_THREADS": str(cores)},
        f"{cores} threads, spin-wait": {"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "ACTIVE"},
        f"{cores} threads, passive wait": {"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"},
        "1 thread": {"OMP_NUM_THREADS": "1"},
    }
    if cores == 1:
        return {"1 thread": found["1 thread"]}
    # the same environment under two names is measured once
    unique: dict[str, dict[str, str]] = {}
    for name, env in found.items():
        if env not in unique.values():
            unique[name] = env
    return unique


def step_time(env: dict[str, str], steps: int, warmup: int, busy: int) -> float:
    """Median training step time (s) in a fresh process with env, beside `busy` spinning processes."""
    spinners = [multiprocessing.Process(target=spin, args=(time.time() + 600,), daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "bench.train_throughput", "--steps", str(steps), "--warmup", str(warmup),
                       "--no-count-flops", "--device", "cpu", "--threads", env["OMP_NUM_THREADS"], "--out-dir", out]
            base = {k: v for k, v in os.environ.items() if k not in _WAIT_KEYS}
            subprocess.run(command, cwd=REPO, env={**base, **env}, check=True, capture_output=True, text=True)
            (result,) = Path(out).glob("*.json")
            return json.loads(result.read_text())["runs"][0]["step_time_s"]
    finally:
        for p in spinners:
            p.terminate()
            p.join()


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every setting idle and under load, interleaved, print the table, write the JSON."""
    parser = cli.new_parser(__doc__)
    parser.add_argument("--busy", type=int, nargs="+", default=[1, 2],
                        help="counts of spinning processes beside training in the loaded cases (idle is always run)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="repeats of the whole interleaved sweep (the median of the rounds is kept)")
    parser.add_argument("--settings", nargs="+", default=None, help="only these settings (names as in the table)")
    cli.add_run_options(parser)
    args = parser.parse_args(argv)
    args.device = "cpu"
    device = cli.setup(args)
    cores = len(os.sched_getaffinity(0))
    chosen = settings(cores)
    if args.settings:
        unknown = sorted(set(args.settings) - set(chosen))
        if unknown:
            parser.error(f"unknown setting(s) {unknown}; available: {', '.join(chosen)}")
        chosen = {name: chosen[name] for name in args.settings}
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        # every condition once per round, so a change in the machine's other load spreads over all of them
        for busy in (0, *args.busy):
            for name, env in chosen.items():
                t = step_time(env, args.steps, args.warmup, busy)
                samples.setdefault((name, busy), []).append(t)
                logger.info("%s, %d busy: %.0f ms", name, busy, 1e3 * t)
    times = {key: statistics.median(values) for key, values in samples.items()}
    for busy in (0, *args.busy):
        threads = threads_beside(cores, float(busy))
        name = f"{cores} threads, OpenMP default" if threads == cores else "1 thread" if threads == 1 else None
        if name in chosen:
            times["follow_cpu_load: true", busy] = times[name, busy]
            samples["follow_cpu_load: true", busy] = samples[name, busy]
    best_idle = min(times[name, 0] for name in chosen)
    rows = [{"setting": name, "load": busy, "step_ms": 1e3 * t, "vs_idle": t / times[name, 0], "vs_best": t / best_idle,
             "rounds_ms": [round(1e3 * v, 1) for v in samples[name, busy]]}
            for (name, busy), t in times.items()]
    rows.sort(key=lambda r: (r["load"], r["step_ms"]))
    common.print_table(f"training step time beside busy processes on {common.device_name(device)} ({cores} cores)",
                       rows, TABLE)
    return cli.write(NAME, NAME, torch.device("cpu"), args, {"cores": cores, "rows": rows})


main = common.exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
