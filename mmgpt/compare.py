"""Compare fusions: train each on the same data, budget and seeds, evaluate, and report side by side.

    mmgpt compare-fusions [--config default] [--fusions all] [--steps N] [--seeds 0 1 2] [--out DIR] [key=value ...]

Every (fusion, seed) pair is an ordinary training run (mmgpt.training.loop: build_run -> train -> finish) in
DIR/runs/FUSION-seedS, with only model.fusion.type, seed, max_steps and the run folder changed; the
key=value overrides apply to every run alike. A run with checkpoints resumes (--resume latest semantics);
a run with its DIR/runs/FUSION-seedS/compare.json is finished and is not redone. A stop request (Ctrl-C,
SIGTERM) checkpoints the current run and ends the comparison; the next call resumes it. DIR/report.md,
report.json, report.html and the PNG plots are rewritten from every finished run's record at the end.
DIR must be new, empty, or a comparison folder mmgpt wrote: a file or any other non-empty folder is refused.

Two controls are always in the table: "blind" (the config's own fusion, trained and evaluated with every
image replaced by one constant image: what the question alone gives, data.blind=true) and "prior" (the
most frequent training answer of each question type). Each cell is the mean over seeds with its std and
95% t-interval; one seed prints its value alone and says n=1. "p vs best" is a paired bootstrap over the
VQA questions (pooled over the seeds both rows have) against the fusion of best mean exact match.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from mmgpt.eval.significance import paired_bootstrap, seed_statistics
from mmgpt.jsonfile import read_json_file
from mmgpt.outputs import prepare_output_folder
from mmgpt.saving import write_json

logger = logging.getLogger("mmgpt.compare")

RECORD_NAME = "compare.json"
BLIND, PRIOR = "blind", "prior"
# metrics taken from the final evaluation, by the suffix of their "set/metric" key, in table order
FINAL_METRICS = {"vqa_exact_match": "VQA EM", "caption_Bleu_4": "BLEU-4", "caption_CIDEr": "CIDEr"}


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
    args = parser.parse_args(argv)
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
    templates = PromptTemplates(vqa=cfg.model.vqa_template, caption=cfg.model.caption_prompt)
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
    cfg, train_args = parse_train_args(argv)
    run = build_run(cfg, train_args)
    first_step, start = run.state.step, time.perf_counter()
    if not train(run):
        run.accelerator.end_training()
        logger.warning("%s seed %d stopped at step %d; run compare-fusions again to resume", fusion, seed,
                       run.state.step)
        return None
    seconds = time.perf_counter() - start - run.eval_seconds
    result = finish(run)
    model = run.raw_model
    types, per_question = question_scores(run.eval_sets,
                                          lambda vqa: generate_answers(model, vqa, batch_size=256))
    record = {
        "fusion": fusion, "seed": seed, "architecture": run.cfg.model.fusion.type, "width": run.cfg.model.fusion.dim,
        "steps": run.state.step,
        "folder": str(folder),
        "parameters": model.num_parameters(), "fusion_parameters": sum(p.numel() for p in model.fusion.parameters()),
        # the steps of this process only: a resumed run's earlier steps ran elsewhere
        # None when no step ran here (resumed at its last step after a kill between saving and recording)
        "seconds_per_step": seconds / (run.state.step - first_step) if run.state.step > first_step else None,
        "resumed_from_step": first_step,
        "metrics": result["metrics"], "per_question_type": types, "per_question": per_question,
        "eval_curve": run.state.history.get("eval", []),
    }
    write_json(folder / RECORD_NAME, record, indent=2)
    return record


def eval_curve(record: dict[str, Any]) -> list[list[float]]:
    """The periodic eval losses of a run, then its final evaluation's (mean over the held-out sets, as training's)."""
    losses = [v for k, v in record["metrics"].items() if k.endswith("/loss")]
    final = [[record["steps"], statistics.fmean(losses)]] if losses else []
    return [*record["eval_curve"], *final]


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fusion: each column's mean and std over seeds, and the mean eval curve."""
    by_fusion: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_fusion[record["fusion"]].append(record)
    summary = {}
    for fusion, runs in by_fusion.items():
        columns: dict[str, list[float]] = defaultdict(list)
        for run in runs:
            columns["parameters"].append(run["parameters"])
            columns["fusion_parameters"].append(run["fusion_parameters"])
            columns["seconds_per_step"].append(run["seconds_per_step"])
            for key, value in run["metrics"].items():
                if key.rsplit("/", 1)[-1] in FINAL_METRICS:
                    columns[key].append(value)
            for name, types in run["per_question_type"].items():
                for kind, value in types.items():
                    columns[f"{name}/type/{kind}"].append(value)
        curve: dict[int, list[float]] = defaultdict(list)
        for run in runs:
            for step, loss in eval_curve(run):
                curve[int(step)].append(loss)
        summary[fusion] = {"seeds": sorted(r["seed"] for r in runs if r["seed"] is not None),
                           "architecture": runs[0].get("architecture"),
                           # the runs' own widths: one value unless runs of different --match-params were mixed
                           "widths": sorted({r["width"] for r in runs if r.get("width") is not None}),
                           "columns": {k: seed_statistics(v) for k, v in columns.items()},
                           "eval_curve": [[s, statistics.fmean(v)] for s, v in sorted(curve.items())]}
    return summary


def main_metric(summary: dict[str, dict[str, Any]]) -> str | None:
    """The column the fusions are ranked and tested on: the first VQA set's exact match."""
    keys = sorted({k for item in summary.values() for k in item["columns"] if k.endswith("/vqa_exact_match")})
    return keys[0] if keys else None


def compare_to_best(records: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> None:
    """Add each row's gain over the blind control and its paired-bootstrap p-value against the best fusion."""
    import numpy as np

    key = main_metric(summary)
    fusions = [f for f in summary if f not in (BLIND, PRIOR) and key and summary[f]["columns"].get(key, {}).get("n")]
    if key is None or not fusions:
        return
    name = key.split("/")[0]
    best = max(fusions, key=lambda f: summary[f]["columns"][key]["mean"])
    hits = defaultdict(dict)  # fusion -> seed -> 0/1 per question
    for record in records:
        if name in record.get("per_question", {}):
            hits[record["fusion"]][record["seed"]] = record["per_question"][name]
    blind = summary.get(BLIND, {}).get("columns", {}).get(key, {})
    for fusion, item in summary.items():
        item["best"] = fusion == best
        if blind.get("n") and fusion != BLIND:
            item["gain_over_blind"] = item["columns"][key]["mean"] - blind["mean"]
        if fusion == best or not hits.get(fusion) or not hits.get(best):
            continue
        # the prior answers alike under every seed: it pairs with each of the best fusion's seeds
        seeds = sorted(hits[best]) if fusion == PRIOR else sorted(set(hits[best]) & set(hits[fusion]))
        other = [hits[fusion][None] if fusion == PRIOR else hits[fusion][seed] for seed in seeds]
        if seeds and all(len(o) == len(hits[best][seed]) for o, seed in zip(other, seeds)):
            item["p_vs_best"] = paired_bootstrap(np.array([hits[best][seed] for seed in seeds]), np.array(other))
            item["paired_seeds"] = len(seeds)


def table_columns(summary: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(column key, heading) of the report table, in order: size, speed, final metrics, question types."""
    keys = {k for s in summary.values() for k in s["columns"]}
    columns = [("width", "width"), ("parameters", "params"), ("fusion_parameters", "fusion params"),
               ("seconds_per_step", "s/step")]
    main = main_metric(summary)
    for suffix, heading in FINAL_METRICS.items():
        for k in sorted(keys):
            if k.endswith("/" + suffix):
                columns.append((k, f"{heading} ({k.split('/')[0]})" if len(keys) > 1 else heading))
                if k == main:
                    columns += [("ci95", "95% CI"), ("gain_over_blind", "gain over blind"), ("p_vs_best", "p vs best")]
    columns += [(k, k.rsplit("/", 1)[-1]) for k in sorted(keys) if "/type/" in k]
    return columns


def _cell(value: dict[str, float], key: str) -> str:
    if value["n"] == 0:
        return "-"
    if "parameters" in key:
        return f"{value['mean'] / 1e3:.1f}k"
    digits = 3 if key == "seconds_per_step" or "caption_" in key else 1
    if value["n"] == 1:  # one seed: no spread to show
        return f"{value['mean']:.{digits}f} (n=1)"
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def _row_cell(item: dict[str, Any], key: str, main: str | None) -> str:
    """One cell of a row: a column's mean ± std, or the main metric's interval, gain over blind and p-value."""
    if key == "ci95":
        value = item["columns"].get(main or "", {"n": 0})
        if value["n"] < 2:
            return "-"
        return f"{value['mean'] - value['ci95']:.1f} to {value['mean'] + value['ci95']:.1f}"
    if key == "width":
        return "/".join(str(w) for w in item.get("widths", [])) or "-"
    if key == "gain_over_blind":
        return f"{item['gain_over_blind']:+.1f}" if "gain_over_blind" in item else "-"
    if key == "p_vs_best":
        if item.get("best"):
            return "best"
        return f"{item['p_vs_best']:.3g}" if "p_vs_best" in item else "-"
    return _cell(item["columns"].get(key, {"n": 0}), key)


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    """The comparison as a Markdown table, best VQA exact match first."""
    columns = table_columns(summary)
    lines = ["| fusion | seeds | " + " | ".join(h for _, h in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    main = main_metric(summary)
    for fusion, item in sorted(summary.items(), key=lambda kv: -_sort_key(kv[1])):
        cells = [_row_cell(item, k, main) for k, _ in columns]
        name = f"{fusion} ({item['architecture']})" if fusion == BLIND and item.get("architecture") else fusion
        seeds = "-" if fusion == PRIOR else str(len(item["seeds"]))
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sort_key(item: dict[str, Any]) -> float:
    values = [v["mean"] for k, v in item["columns"].items() if k.endswith("/vqa_exact_match") and v["n"]]
    return values[0] if values else -math.inf


def plot(summary: dict[str, dict[str, Any]], out: Path) -> list[str]:
    """eval_curves.png (every fusion's mean eval loss over steps) and vqa.png (exact match ± std); their names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        logger.info("matplotlib not installed: no plots (pip install 'mmgpt[plot]')")
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fusion, item in sorted(summary.items()):
        if item["eval_curve"]:
            steps, losses = zip(*item["eval_curve"])
            ax.plot(steps, losses, "o-", label=fusion)
    ax.set(xlabel="optimizer step", ylabel="eval loss (nats / answer token, mean over seeds)", yscale="log")
    # plain numbers on the log axis ("4.4", not "4.4 x 10^0"), minor ticks too when no decade is in view
    plain = FuncFormatter(lambda value, _: f"{value:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "eval_curves.png", dpi=100)
    plt.close(fig)
    names = ["eval_curves.png"]
    ranked = sorted(summary.items(), key=lambda kv: -_sort_key(kv[1]))
    scores = [next((v for k, v in item["columns"].items() if k.endswith("/vqa_exact_match")), None)
              for _, item in ranked]
    if any(s is not None for s in scores):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        # error bars: the 95% t-interval of the mean (none for one seed or the deterministic prior)
        errors = [s["ci95"] if s and math.isfinite(s["ci95"]) else 0 for s in scores]
        bars = ax.bar([f for f, _ in ranked], [s["mean"] if s else 0 for s in scores], yerr=errors, capsize=3)
        for bar, (fusion, _) in zip(bars, ranked):
            if fusion in (BLIND, PRIOR):
                bar.set(hatch="//", facecolor="lightgrey", edgecolor="grey")
        ax.set(ylabel="VQA exact match (%), 95% CI")
        # anchored at their right end, rotated labels sit under their own bar instead of running into the next
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
        fig.tight_layout()
        fig.savefig(out / "vqa.png", dpi=100)
        plt.close(fig)
        names.append("vqa.png")
    return names


def html_report(summary: dict[str, dict[str, Any]], heading: str, waiting: str, plots: list[str]) -> str:
    """The report as one HTML page: the table and the plots beside it."""
    import html

    lines = markdown_table(summary).splitlines()
    rows = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]
    table = "<table><tr>" + "".join(f"<th>{c}</th>" for c in rows[0]) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:]) + "</table>"
    # fits a 1280 px window: compact cells, headings that wrap, numbers that do not
    style = ("body{font-family:sans-serif;margin:1.5em;max-width:1240px}table{border-collapse:collapse;"
             "font-size:13px;max-width:100%}td,th{border:1px solid #ccc;padding:3px 6px}td{white-space:nowrap}"
             "th{background:#eee;max-width:9em;white-space:normal}img{max-width:100%}p{max-width:60em}")
    images = "".join(f"<p><img src='{html.escape(n)}' alt='{html.escape(n)}'></p>" for n in plots)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Fusion comparison</title><style>{style}"
            f"</style></head><body><h1>Fusion comparison</h1><p>{html.escape(heading)}</p>{table}"
            f"<p>{html.escape(waiting)}</p>{images}</body></html>")


def write_report(args: argparse.Namespace, records: list[dict[str, Any]], pending: list[str]) -> dict[str, Any]:
    """report.json, report.md, report.html and the plots in --out, from every finished run's record."""
    from mmgpt.saving import write_text_atomic

    out = Path(args.out)
    summary = summarise(records)
    compare_to_best(records, summary)
    plots = plot(summary, out)
    report = {"config": args.config, "steps": args.steps, "seeds": args.seeds, "fusions": args.fusions,
              "overrides": args.overrides, "match_params": args.match_params, "widths": args.widths,
              "pending": pending, "summary": summary, "runs": records}
    write_json(out / "report.json", report, indent=2)
    matched = ("" if args.match_params is None else
               f", widths chosen for {args.match_params:,} trainable fusion parameters (within 5%)")
    heading = (f"config `{args.config}`, {args.steps} steps, seeds {args.seeds}, overrides "
               f"`{' '.join(args.overrides) or 'none'}`{matched}; width = model.fusion.dim; mean ± std over seeds "
               "(one seed: its value, n=1) with the 95% t-interval of the mean; s/step leaves out the periodic evaluation; VQA columns are exact match "
               "(%), question-type columns are on the VQA set. Controls: blind = the config's fusion with every "
               "image one constant image, prior = the most frequent training answer per question type. "
               "p vs best: paired bootstrap over questions (pooled over seeds) against the best fusion.")
    waiting = f"Not finished yet (run the command again to resume): {', '.join(pending)}" if pending else ""
    text = ["# Fusion comparison", heading, markdown_table(summary), waiting, *[f"![{n}]({n})" for n in plots]]
    write_text_atomic(out / "report.md", "\n\n".join(t for t in text if t) + "\n")
    write_text_atomic(out / "report.html", html_report(summary, heading, waiting, plots))
    return report


def main(argv: list[str] | None = None, prog: str | None = None) -> dict[str, Any]:
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
