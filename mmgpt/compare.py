"""Compare fusions: train each on the same data, budget and seeds, evaluate, and report side by side.

    mmgpt compare-fusions [--config default] [--fusions all] [--steps N] [--seeds 0 1 2] [--match-params N]
                          [--out DIR] [key=value ...]

Every (fusion, seed) pair is an ordinary training run (mmgpt.training.loop: build_run -> train -> finish) in
DIR/runs/FUSION-seedS, with only model.fusion.type, seed, max_steps and the run folder changed; the
key=value overrides apply to every run alike. A run with checkpoints resumes (--resume latest semantics);
a run with its DIR/runs/FUSION-seedS/compare.json is finished and is not redone. A stop request (Ctrl-C,
SIGTERM) checkpoints the current run and ends the comparison; the next call resumes it. DIR/report.md,
report.json, report.html and the plots are rewritten from every finished run's record at the end
(mmgpt.compare_report). --match-params N sets model.fusion.dim per fusion so that its trainable parameters are
within 5% of N (mmgpt.fusion.width).
DIR must be new, empty, or a comparison folder mmgpt wrote: a file or any other non-empty folder is refused.

Two controls are always in the table: "blind" (the config's own fusion, trained and evaluated with every
image replaced by one constant image: what the question alone gives, data.blind=true) and "prior" (the
most frequent training answer of each question type). Each cell is the mean over seeds with its std and
95% t-interval; one seed prints its value alone and says n=1. "p vs best" is a paired bootstrap over the
seeds both rows have and the VQA questions against the fusion of best mean exact match.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from mmgpt.compare_report import BLIND, PRIOR, markdown_table, write_report
from mmgpt.jsonfile import read_json_file
from mmgpt.outputs import prepare_output_folder
from mmgpt.saving import write_json

logger = logging.getLogger("mmgpt.compare")

RECORD_NAME = "compare.json"


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The compare-fusions command line; --fusions all means every registered fusion."""
    from mmgpt.fusion import FUSIONS

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default", help="the preset or YAML every run starts from")
    parser.add_argument("--fusions", nargs="+", default=["all"],
                        help=f"fusions to compare, or 'all' ({', '.join(sorted(FUSIONS))})")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of every run (default 300)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of every fusion")
    parser.add_argument("--eval-points", type=int, default=4,
                        help="periodic evaluations per run, the points of the eval curves (default 4)")
    parser.add_argument("--match-params", type=int, default=None, metavar="N",
                        help="give each fusion the width (model.fusion.dim) that makes its trainable parameters "
                             "within 5%% of N (the table's 'fusion params'); default: the config's width for all")
    parser.add_argument("--out", default="runs/compare-fusions",
                        help="folder of the runs and the report: new, empty, or an earlier comparison (continued); "
                             "a file or another non-empty folder is refused")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. batch_size=64")
    # intermixed: overrides may come before or after the options
    args = parser.parse_intermixed_args(argv)
    fusions = sorted(FUSIONS) if args.fusions == ["all"] else args.fusions
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown:
        parser.error(f"unknown fusion(s) {', '.join(unknown)}; available: all, {', '.join(sorted(FUSIONS))}")
    if args.steps < 1 or args.eval_points < 1:
        parser.error(f"--steps and --eval-points must be >= 1, got {args.steps} and {args.eval_points}")
    if args.match_params is not None and args.match_params < 1:
        parser.error(f"--match-params must be >= 1, got {args.match_params}")
    owned_keys = ("model.fusion.type", "seed", "max_steps", "output_dir", "data.blind",
                  *(("model.fusion.dim",) if args.match_params is not None else ()))
    owned = [o for o in args.overrides if o.split("=", 1)[0] in owned_keys]
    if owned:
        parser.error(f"{', '.join(owned)}: set by compare-fusions itself "
                     "(use --fusions, --seeds, --steps, --out, --match-params)")
    args.fusions = list(dict.fromkeys(fusions))
    args.seeds = list(dict.fromkeys(args.seeds))
    args.widths = {}
    return args


def matched_widths(args: argparse.Namespace) -> dict[str, int]:
    """Each compared fusion's width for --match-params (the blind control's is its architecture's); {} without."""
    from mmgpt.dry_run import build_meta_model
    from mmgpt.fusion.width import matched_width
    from mmgpt.training.loop import parse_args as parse_train_args

    if args.match_params is None:
        return {}
    cfg, _ = parse_train_args(["--config", args.config, *args.overrides])
    model = build_meta_model(cfg)  # for the widths the fusion reads: the encoders' outputs
    widths = {}
    for fusion in dict.fromkeys([*args.fusions, cfg.model.fusion.type]):
        fusion_cfg = dataclasses.replace(cfg.model.fusion, type=fusion)
        widths[fusion], parameters = matched_width(fusion_cfg, model.text_encoder.output_dim,
                                                   model.image_encoder.output_dim, args.match_params)
        logger.info("%s: width %d, %d trainable fusion parameters (target %d)", fusion, widths[fusion],
                    parameters, args.match_params)
    widths[BLIND] = widths[cfg.model.fusion.type]
    return widths


def run_folder(out: Path, fusion: str, seed: int) -> Path:
    """The run folder of one (fusion, seed) pair."""
    return out / "runs" / f"{fusion}-seed{seed}"


def train_argv(args: argparse.Namespace, fusion: str, seed: int) -> list[str]:
    """The training command line of one run: resume its checkpoints, else start over in its folder."""
    from mmgpt.training.checkpoint import checkpoint_dirs, previous_run

    folder = run_folder(Path(args.out), fusion, seed)
    every = max(args.steps // args.eval_points, 1)
    # the blind control keeps the config's own fusion and sees one constant image
    architecture = ["data.blind=true"] if fusion == BLIND else [f"model.fusion.type={fusion}"]
    if fusion in args.widths:
        architecture.append(f"model.fusion.dim={args.widths[fusion]}")
    overrides = [*args.overrides, f"output_dir={folder}", f"seed={seed}", f"max_steps={args.steps}",
                 *architecture, f"eval_every={every}", f"save_every={every}"]
    if checkpoint_dirs(folder):
        mode = ["--resume", "latest"]
    elif previous_run(folder):
        # a finished model without its record: killed between saving and recording, so train it again
        mode = ["--overwrite"]
    else:
        mode = []
    return ["--config", args.config, *mode, *overrides]


def question_scores(eval_sets: list[tuple[str, list]], answer: Any) -> tuple[dict[str, dict[str, float]],
                                                                          dict[str, list[int]]]:
    """(exact match per question type, 0/1 per question) of each VQA eval set; `answer(examples)` -> answers."""
    from mmgpt.eval.vqa_metrics import normalize_answer

    types: dict[str, dict[str, float]] = {}
    per_question: dict[str, list[int]] = {}
    for name, examples in eval_sets:
        vqa = [e for e in examples if e.task != "caption"]
        if not vqa:
            continue
        hits = [int(normalize_answer(p) == normalize_answer(e.answer)) for e, p in zip(vqa, answer(vqa))]
        per_question[name] = hits
        by_type: dict[str, list[int]] = defaultdict(list)
        for example, hit in zip(vqa, hits):
            if example.meta.get("question_type"):
                by_type[example.meta["question_type"]].append(hit)
        if by_type:
            types[name] = {kind: 100.0 * sum(h) / len(h) for kind, h in sorted(by_type.items())}
    return types, per_question


def prior_record(args: argparse.Namespace) -> dict[str, Any]:
    """The prior control: each eval question answered with the most frequent training answer of its type."""
    from collections import Counter

    from mmgpt.config import PromptTemplates
    from mmgpt.eval.vqa_metrics import normalize_answer
    from mmgpt.training.loop import parse_args as parse_train_args
    from mmgpt.training.loop import read_splits

    cfg, _ = parse_train_args(["--config", args.config, *args.overrides])
    templates = PromptTemplates.from_config(cfg.model)
    counts: dict[str, Counter] = defaultdict(Counter)
    for _, examples in read_splits(cfg.data.train, templates):
        for e in examples:
            if e.task != "caption":
                counts[e.meta.get("question_type", "")][normalize_answer(e.answer)] += 1
                counts[None][normalize_answer(e.answer)] += 1  # for types training never saw
    prior = {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}
    eval_sets = read_splits(cfg.data.eval, templates)
    types, per_question = question_scores(
        eval_sets, lambda vqa: [prior.get(e.meta.get("question_type", ""), prior.get(None, "")) for e in vqa])
    metrics = {f"{name}/vqa_exact_match": 100.0 * sum(h) / len(h) for name, h in per_question.items() if h}
    return {"fusion": PRIOR, "seed": None, "steps": 0, "parameters": None, "fusion_parameters": None,
            "seconds_per_step": None, "metrics": metrics, "per_question_type": types, "per_question": per_question,
            "eval_curve": [], "answers": {str(k): v for k, v in prior.items()}}


def train_one(args: argparse.Namespace, fusion: str, seed: int) -> dict[str, Any] | None:
    """Train (or resume) one run and write its record; the saved record when it is already finished."""
    from mmgpt.eval.runner import generate_answers
    from mmgpt.training.loop import build_run, finish, train
    from mmgpt.training.loop import parse_args as parse_train_args

    folder = run_folder(Path(args.out), fusion, seed)
    if (folder / RECORD_NAME).is_file():
        logger.info("%s seed %d: finished earlier (%s)", fusion, seed, folder / RECORD_NAME)
        return read_json_file(folder / RECORD_NAME)
    argv = train_argv(args, fusion, seed)
    logger.info("%s seed %d: training in %s (%s)", fusion, seed, folder, " ".join(argv))
    began = time.perf_counter()
    cfg, train_args = parse_train_args(argv)
    run = build_run(cfg, train_args)
    first_step, start = run.state.step, time.perf_counter()
    setup = start - began
    if not train(run):
        run.accelerator.end_training()
        logger.warning("%s seed %d stopped at step %d; run compare-fusions again to resume", fusion, seed,
                       run.state.step)
        return None
    trained = time.perf_counter()
    seconds = trained - start - run.eval_seconds
    result = finish(run)
    model = run.raw_model
    types, per_question = question_scores(run.eval_sets,
                                          lambda vqa: generate_answers(model, vqa, batch_size=256))
    # this process's wall time: setup before the first step (config, data, image checks, model), the steps
    # (checkpoints included), evaluation (periodic and final, saving the model, the per-question answers)
    wall = {"setup": setup, "training": seconds,
            "evaluation": run.eval_seconds + time.perf_counter() - trained}
    record = {
        "fusion": fusion, "seed": seed, "architecture": run.cfg.model.fusion.type, "width": run.cfg.model.fusion.dim,
        "steps": run.state.step,
        "folder": str(folder),
        "parameters": model.num_parameters(), "fusion_parameters": sum(p.numel() for p in model.fusion.parameters()),
        # the steps of this process only: a resumed run's earlier steps ran elsewhere
        # None when no step ran here (resumed at its last step after a kill between saving and recording)
        "seconds_per_step": seconds / (run.state.step - first_step) if run.state.step > first_step else None,
        "resumed_from_step": first_step, "wall_seconds": wall,
        "metrics": result["metrics"], "per_question_type": types, "per_question": per_question,
        "eval_curve": run.state.history.get("eval", []),
    }
    write_json(folder / RECORD_NAME, record, indent=2)
    return record


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`mmgpt compare-fusions` -> exit status 0 (bad input raises; mmgpt.cli reports it with status 2)."""
    compare_fusions(argv, prog)
    return 0


def compare_fusions(argv: list[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    """Train every missing run, then write the report; returns the report record."""
    from mmgpt.logging_setup import configure_logging

    args = parse_args(argv, prog)
    configure_logging(logging.INFO)
    args.widths = matched_widths(args)  # before the folder is touched: an unreachable target changes nothing
    prepare_output_folder(args.out, "compare-fusions", reuse=True)
    records, pending = [], []
    for fusion in [*args.fusions, BLIND]:
        for seed in args.seeds:
            # a stopped run (Ctrl-C, SIGTERM, stop_at_step) stops the comparison: the rest waits for the next call
            record = None if pending else train_one(args, fusion, seed)
            if record is None:
                pending.append(f"{fusion}-seed{seed}")
            else:
                records.append(record)
    records.append(prior_record(args))
    report = write_report(args, records, pending)
    print(markdown_table(report["summary"]))
    print(f"report: {Path(args.out) / 'report.md'} (and report.html, report.json)")
    return report
