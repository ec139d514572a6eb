"""CPU seconds of each start-up phase of a training run, from the process's start to the end of its first step.

Wall time on a shared host says little; a process's CPU time (user + system, `getrusage`) barely depends on what
else runs. This runs `train.py`'s `main` in a fresh process (the checkout's own `.venv` python), with the
functions of `mmgpt.training.loop` that build a run wrapped to add up the CPU time spent in each, and stops the
run after its first step (`stop_at_step=1`, whose checkpoint is not counted).

    python -m bench.startup_phases                        # this checkout, warm caches ($MMGPT_CACHE), 3 runs
    python -m bench.startup_phases --cold                 # no $MMGPT_CACHE/images, no $MMGPT_CACHE/tokenizers
    python -m bench.startup_phases --repo /tmp/before     # another checkout (e.g. the commit before a change)

Phases that a checkout does not have (a function renamed or removed) are left out; "other" is what the build
spends outside the named phases.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import runpy
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# (phase, attribute of mmgpt.training.loop): the steps of building a run, in the order they run
PHASES = [("accelerator", "start_accelerator"), ("run folder", "prepare_output_dir"),
          ("annotations", "read_splits"), ("model + tokenizer", "build_model"),
          ("image cache key", "PixelCache.for_processor"), ("images", "check_images"),
          ("loader", "build_loader"), ("first step", "train"), ("checkpoint (not counted)", "save_checkpoint")]


def cpu_seconds() -> float:
    """User + system CPU seconds this process has used since it started."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(argv: list[str]) -> dict[str, float]:
    """In this process: import train.py as the launcher runs it, run its loop to the first step with the phases
    wrapped; CPU seconds per phase."""
    runpy.run_path("train.py", run_name="train")  # its imports exactly as `accelerate launch train.py` makes them
    loop = sys.modules["mmgpt.training.loop"]

    phases = {"interpreter + imports": cpu_seconds()}
    spent: dict[str, float] = {}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = cpu_seconds()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + cpu_seconds() - start
        return wrapper

    for name, attribute in PHASES:
        owner_name, _, member = attribute.rpartition(".")
        owner = getattr(loop, owner_name) if owner_name else loop
        function = getattr(owner, member, None)
        if function is None:
            continue
        if owner_name:  # a classmethod: wrap the bound method, keep it a classmethod
            setattr(owner, member, classmethod(timed(name, function.__func__)))
        else:
            setattr(loop, member, timed(name, function))
    loop.build_run = timed("build", loop.build_run)
    loop.main(argv)
    checkpoint = spent.pop("checkpoint (not counted)", 0.0)
    spent["first step"] = spent.get("first step", 0.0) - checkpoint
    phases.update({name: spent[name] for name, _ in PHASES if name in spent})
    phases["other"] = spent["build"] - sum(v for k, v in spent.items() if k not in ("build", "first step"))
    phases["total to the first step"] = cpu_seconds() - checkpoint
    return phases


def measure(repo: Path, cold: bool, overrides: list[str]) -> dict[str, float]:
    """Run `child` in a fresh process of `repo`'s python; its phases."""
    venv = repo / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    cache = Path(os.environ.get("MMGPT_CACHE") or "~/.cache/mmgpt").expanduser()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(repo)}
        if cold:
            fresh = Path(tmp) / "cache"
            fresh.mkdir()
            for entry in cache.iterdir():  # every built-in dataset; no cached images or tokenizers
                if entry.name not in ("images", "tokenizers"):
                    (fresh / entry.name).symlink_to(entry)
            env["MMGPT_CACHE"] = str(fresh)
        result = Path(tmp) / "phases.json"
        subprocess.run([python, str(Path(__file__).resolve()), "--child", str(result), "--",
                        f"output_dir={tmp}/run", "stop_at_step=1", "max_steps=100", *overrides],
                       cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> None:
    """Print the CPU seconds of each phase for each checkout (cold or warm)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", action="append", default=[], help="another checkout to measure (repeatable)")
    parser.add_argument("--cold", action="store_true", help="start with no cached images or tokenizers")
    parser.add_argument("--rounds", type=int, default=3, help="runs per checkout, alternated (the median is kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, os.getcwd())
        Path(args.child).write_text(json.dumps(child(args.overrides)))
        return
    repos = [REPO, *(Path(r).resolve() for r in args.repo)]
    runs: dict[Path, list[dict[str, float]]] = {repo: [] for repo in repos}
    for _ in range(args.rounds):
        for repo in repos:
            runs[repo].append(measure(repo, args.cold, args.overrides))
    results = {repo: {name: statistics.median(r[name] for r in rs if name in r) for name in rs[0]}
               for repo, rs in runs.items()}
    names = list(next(iter(results.values())))
    for r in results.values():
        names += [n for n in r if n not in names]
    print(f"CPU seconds, median of {args.rounds}" + ("  (cold caches)" if args.cold else "  (warm caches)"))
    print(f"{'phase':<26}" + "".join(f"{repo.name[-14:]:>16}" for repo in repos))
    for name in names:
        print(f"{name:<26}" + "".join(f"{results[repo].get(name, float('nan')):>16.2f}" for repo in repos))


if __name__ == "__main__":
    main()
