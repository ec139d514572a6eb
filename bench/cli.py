"""Command-line plumbing the benchmark scripts share: their common options, main()'s setup, the results file.

Each script keeps its own `parse_args` and `main` and calls these where its own options and steps
sit among them, so each script's --help lists its options in its own order.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from bench import common, workloads


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help shows the script's module docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_workload_options(parser: argparse.ArgumentParser, fusion: bool = False) -> None:
    """--config, --fusion (only where a script runs a choice of fusions) and --tiny: which workload to build."""
    parser.add_argument("--config", choices=workloads.CONFIGS, default="default")
    if fusion:
        parser.add_argument("--fusion", default=None,
                            help=f"one of {', '.join(workloads.FUSIONS)}, or 'all' (default: the config's own)")
    parser.add_argument("--tiny", action="store_true", help="shrink the gpu200m config so it runs on a CPU")


def check_workload_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject what add_workload_options' options cannot build (exits with the usage message)."""
    if "fusion" in vars(args) and args.fusion not in (None, "all", *workloads.FUSIONS):
        parser.error(f"--fusion must be one of {', '.join(workloads.FUSIONS)} or all")
    # only gpu200m has a shrunk form (workloads.workload)
    if args.tiny and args.config != "gpu200m":
        parser.error("--tiny applies to --config gpu200m")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--threads, --out-dir, --seed and -v: the options every benchmark ends with."""
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--out-dir", default=None, help="where the JSON goes (default bench/results)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-v", "--verbose", action="store_true")


def setup(args: argparse.Namespace) -> torch.device:
    """Logging and torch threads as the command line asks; returns the device named by --device."""
    common.setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    return common.resolve_device(args.device)


def warmup_steps(args: argparse.Namespace) -> int:
    """--warmup, or its default: 3 steps, 10 with --compile (compiling takes several steps to settle)."""
    return args.warmup if args.warmup is not None else (10 if args.compile else 3)


def result_name(benchmark: str, config: str) -> str:
    """The results file's stem: the benchmark, with the workload's name unless it is the default config."""
    return benchmark if config == "default" else f"{benchmark}-{config}"


def write(benchmark: str, name: str, device: torch.device, args: argparse.Namespace,
          result: dict[str, Any]) -> dict[str, Any]:
    """Write {args, **result} to <name>-<device>.json under --out-dir; returns it with the file's path."""
    payload = {"args": vars(args), **result}
    path = common.write_results(name, device, payload, args.out_dir, benchmark=benchmark)
    return {**payload, "path": str(path)}
