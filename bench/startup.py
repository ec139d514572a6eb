"""Start-up of a training run: seconds from `accelerate launch` to the end of the first training step.

Each measurement launches the README's command in a fresh process,

    accelerate launch --config_file configs/accelerate/cpu.yaml train.py output_dir=TMP stop_at_step=1

and times, from this process, the moment the progress bar first shows step 1 (the run then checkpoints and
stops). "cold" runs with an empty image cache and no cached tokenizer ($MMGPT_CACHE/images, .../tokenizers), "warm"
with what the cold run left;
both share the built-in datasets of this process's $MMGPT_CACHE, generated first when missing. With
`--repo`, other checkouts (each with its own `.venv`, e.g. the commit before a change) are measured too,
every checkout and condition once per round, so a change in the machine's other load spreads over all.

    python -m bench.startup                         # this checkout, 3 rounds of cold + warm
    python -m bench.startup --repo /tmp/before --rounds 4
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import cli, common

logger = logging.getLogger("bench.startup")

NAME = "startup"
REPO = Path(__file__).resolve().parent.parent
# tqdm's bar after its first update, e.g. "training:   1%|          | 1/100"
_FIRST_STEP = re.compile(r"training:.*\| 1/\d+")
_IN_PROCESS = re.compile(r"first step after ([\d.]+) s \(start-up ([\d.]+) s")

TABLE = [("repo", "checkout", ""), ("cache", "image cache", ""),
         ("launch_to_first_step_s", "launch to first step (s)", ".1f"), ("in_process_s", "in the process (s)", ".1f"),
         ("rounds_s", "each round (s)", "")]


def python_of(repo: Path) -> str:
    """The checkout's own .venv python, else this one."""
    venv = repo / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def launch(repo: Path, cache: Path, extra: list[str], python: str | None = None,
           watch: Callable[[int], Callable[[], dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Run the README's training command once; seconds until the first step, from here and as the run logs it.

    `python`: the interpreter (default: the checkout's, `python_of`). `watch`, if given, is called with the
    launcher's pid once it started, and what it returns once the launcher's output ends: a dict added to the result.
    """
    with tempfile.TemporaryDirectory() as out:
        # the `accelerate` command itself (its CLI imports every subcommand), not the lighter accelerate.commands.launch
        command = [python or python_of(repo), "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
                   str(repo / "configs" / "accelerate" / "cpu.yaml"), "train.py", f"output_dir={out}/run",
                   "stop_at_step=1", "max_steps=100", *extra]
        env = {**os.environ, "MMGPT_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        watched = watch(process.pid) if watch else dict
        seen, first, in_process, text = b"", None, None, []
        assert process.stdout is not None
        while chunk := process.stdout.read1(65536):
            seen += chunk
            *lines, seen = re.split(rb"[\r\n]", seen)
            for line in (raw.decode(errors="replace") for raw in lines):
                text.append(line)
                if first is None and _FIRST_STEP.search(line):
                    first = time.perf_counter() - start
                if match := _IN_PROCESS.search(line):
                    in_process = float(match.group(1))
        more = watched()
        if process.wait() != 0 or first is None:
            raise RuntimeError(f"{' '.join(command)} failed (status {process.returncode}):\n" + "\n".join(text[-20:]))
    return {"launch_to_first_step_s": first, "in_process_s": in_process, **more}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure cold and warm start-up of each checkout, interleaved; print the table, write the JSON."""
    parser = cli.new_parser(__doc__)
    parser.add_argument("--repo", action="append", default=[], help="another checkout to measure (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="cold + warm per checkout per round (median kept)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    cli.add_run_options(parser)
    args = parser.parse_args(argv)
    args.device = "cpu"
    cli.setup(args)
    repos = [REPO, *(Path(r).resolve() for r in args.repo)]
    from mmgpt.data.records import default_cache_root
    from mmgpt.data.shapes import build_shapes_captions

    build_shapes_captions(default_cache_root() / "shapes")  # the built-in set is not part of start-up
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for repo in repos:
                cache = Path(tmp) / repo.name
                shutil.rmtree(cache, ignore_errors=True)
                cache.mkdir()
                (cache / "shapes").symlink_to(default_cache_root() / "shapes")
                for condition in ("cold", "warm"):
                    result = launch(repo, cache, args.overrides)
                    samples.setdefault((str(repo), condition), []).append(result)
                    logger.info("%s, %s: %.1f s to the first step (%s s in the process)", repo, condition,
                                result["launch_to_first_step_s"], result["in_process_s"])
    rows = []
    for (repo, condition), runs in samples.items():
        in_process = [r["in_process_s"] for r in runs if r["in_process_s"] is not None]
        rows.append({"repo": repo, "cache": condition,
                     "launch_to_first_step_s": statistics.median(r["launch_to_first_step_s"] for r in runs),
                     "in_process_s": statistics.median(in_process) if in_process else None,
                     "rounds_s": ", ".join(f"{r['launch_to_first_step_s']:.1f}" for r in runs)})
    common.print_table(f"launch to first training step on {common.device_name(torch.device('cpu'))}", rows, TABLE)
    return cli.write(NAME, NAME, torch.device("cpu"), args, {"rows": rows, "samples": {
        f"{repo} {condition}": runs for (repo, condition), runs in samples.items()}})


main = common.exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
