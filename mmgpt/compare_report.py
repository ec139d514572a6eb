"""The compare-fusions report: statistics over seeds, the tables, the plots and the HTML page.

Reads only the runs' records (mmgpt.compare writes them): report.json, report.md, report.html and the plots
(PNG for the Markdown, inline SVG in the HTML, so its labels are text a browser lays out and a test can measure).
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from mmgpt.eval.significance import paired_bootstrap, seed_statistics
from mmgpt.saving import write_json

logger = logging.getLogger("mmgpt.compare")

BLIND, PRIOR = "blind", "prior"
# metrics taken from the final evaluation, by the suffix of their "set/metric" key, in table order
FINAL_METRICS = {"vqa_exact_match": "VQA EM", "caption_Bleu_4": "BLEU-4", "caption_CIDEr": "CIDEr"}


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


def wall_seconds(records: list[dict[str, Any]]) -> dict[str, float]:
    """Setup, training and evaluation seconds summed over the trained runs' records (the prior has none)."""
    total = {"setup": 0.0, "training": 0.0, "evaluation": 0.0}
    for record in records:
        for phase, seconds in record.get("wall_seconds", {}).items():
            total[phase] += seconds
    return total


def table_columns(summary: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(column key, heading) of the main table, in order: size, speed, final metrics with the main one's interval,
    gain over blind and p-value. A metric names its eval set only where two sets report it."""
    keys = sorted({k for s in summary.values() for k in s["columns"]})
    columns = [("width", "width"), ("parameters", "params"), ("fusion_parameters", "fusion params"),
               ("seconds_per_step", "s/step")]
    main = main_metric(summary)
    for suffix, heading in FINAL_METRICS.items():
        sets = [k for k in keys if k.endswith("/" + suffix)]
        for k in sets:
            columns.append((k, f"{heading} ({k.split('/')[0]})" if len(sets) > 1 else heading))
            if k == main:
                columns += [("ci95", "95% CI"), ("gain_over_blind", "gain over blind"), ("p_vs_best", "p vs best")]
    return columns


def metric_sets(summary: dict[str, dict[str, Any]]) -> str:
    """Which eval set each metric column comes from, e.g. 'VQA EM: easy_vqa_test; BLEU-4: shapes_captions_val'."""
    keys = sorted({k for s in summary.values() for k in s["columns"]})
    named = [(heading, [k.split("/")[0] for k in keys if k.endswith("/" + suffix)])
             for suffix, heading in FINAL_METRICS.items()]
    return "; ".join(f"{heading}: {', '.join(sets)}" for heading, sets in named if sets)


def _cell(value: dict[str, float], key: str) -> str:
    if value["n"] == 0:
        return "-"
    if "parameters" in key:
        return f"{value['mean'] / 1e3:.1f}k"
    digits = 3 if key == "seconds_per_step" or "caption_" in key else 1
    if value["n"] == 1:  # one seed has no spread: its value alone (the 95% CI column says n=1)
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def _row_cell(fusion: str, item: dict[str, Any], key: str, main: str | None) -> str:
    """One cell of a row: a column's mean ± std, or the main metric's interval, gain over blind and p-value."""
    if key == "width":
        return "/".join(str(w) for w in item.get("widths", [])) or "-"
    if key == "ci95":
        value = item["columns"].get(main or "", {"n": 0})
        if fusion == PRIOR or value["n"] == 0:  # the prior is one deterministic answer per type
            return "-"
        if value["n"] == 1:
            return "n=1, no interval"
        return f"{value['mean'] - value['ci95']:.1f} to {value['mean'] + value['ci95']:.1f}"
    if key == "gain_over_blind":
        return f"{item['gain_over_blind']:+.1f}" if "gain_over_blind" in item else "-"
    if key == "p_vs_best":
        if item.get("best"):
            return "best"
        return f"{item['p_vs_best']:.3g}" if "p_vs_best" in item else "-"
    return _cell(item["columns"].get(key, {"n": 0}), key)


def _sort_key(item: dict[str, Any]) -> float:
    values = [v["mean"] for k, v in item["columns"].items() if k.endswith("/vqa_exact_match") and v["n"]]
    return values[0] if values else -math.inf


def ranked(summary: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The rows best VQA exact match first."""
    return sorted(summary.items(), key=lambda kv: -_sort_key(kv[1]))


def _row_name(fusion: str, item: dict[str, Any]) -> str:
    return f"{fusion} ({item['architecture']})" if fusion == BLIND and item.get("architecture") else fusion


def main_table(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The main table as rows of cells, the headings first: one row per fusion and control, best first."""
    columns = table_columns(summary)
    main = main_metric(summary)
    rows = [["fusion", "seeds", *(h for _, h in columns)]]
    for fusion, item in ranked(summary):
        seeds = "-" if fusion == PRIOR else str(len(item["seeds"]))
        rows.append([_row_name(fusion, item), seeds, *(_row_cell(fusion, item, k, main) for k, _ in columns)])
    return rows


def type_table(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    """VQA exact match per question type as rows of cells, the headings (the fusions, best first) first; [] when
    no set has question types. Types are rows, so many types make the table longer, not wider."""
    keys = sorted({k for s in summary.values() for k in s["columns"] if "/type/" in k})
    if not keys:
        return []
    sets = {k.split("/type/")[0] for k in keys}
    order = ranked(summary)
    rows = [["question type", *(_row_name(f, item) for f, item in order)]]
    for key in keys:
        name, kind = key.split("/type/")
        rows.append([kind if len(sets) == 1 else f"{name}: {kind}",
                     *(_cell(item["columns"].get(key, {"n": 0}), key) for _, item in order)])
    return rows


def markdown(rows: list[list[str]]) -> str:
    """Rows of cells (headings first) as a Markdown table."""
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows[1:])])


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    """The main table in Markdown, best VQA exact match first."""
    return markdown(main_table(summary))


def _plain(value: float, _: int) -> str:
    # four digits: the ticks of a narrow range (5.375, 5.4, 5.425) keep their true values
    return f"{value:.4g}"


def _eval_curves_figure(summary: dict[str, dict[str, Any]], plt: Any) -> Any:
    """Every fusion's mean eval loss over steps, on a log axis labelled with plain numbers."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # twenty colours: ten fusions and controls all differ
    for fusion, item in sorted(summary.items()):
        if item["eval_curve"]:
            steps, losses = zip(*item["eval_curve"])
            ax.plot(steps, losses, "o-", label=fusion)
    ax.set(xlabel="optimizer step", ylabel="eval loss (nats / answer token, mean over seeds)", yscale="log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))  # "4.4", not "4.4 x 10^0"
    # minor ticks labelled only when less than a decade is in view (no major tick may be); across decades
    # their labels would run into each other
    low, high = ax.get_ylim()
    ax.yaxis.set_minor_formatter(FuncFormatter(_plain) if 0 < low and high / low < 10 else NullFormatter())
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        # outside the axes: twelve entries would hide the curves
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _vqa_figure(summary: dict[str, dict[str, Any]], plt: Any) -> Any | None:
    """Horizontal bars of VQA exact match with 95% intervals, best at the top; None without VQA scores."""
    rows = [(f, next((v for k, v in item["columns"].items() if k.endswith("/vqa_exact_match")), None))
            for f, item in ranked(summary)]
    rows = [(f, s) for f, s in rows if s is not None and s["n"]]
    if not rows:
        return None
    # horizontal: the names are level and one bar apart, so no label can sit under its neighbour's
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.32 * len(rows)))
    positions = list(range(len(rows)))[::-1]
    # error bars: the 95% t-interval of the mean; none for one seed or the deterministic prior
    errors = [s["ci95"] if math.isfinite(s["ci95"]) else 0.0 for _, s in rows]
    bars = ax.barh(positions, [s["mean"] for _, s in rows], xerr=errors if any(errors) else None, capsize=3,
                   height=0.7)
    for bar, (fusion, _) in zip(bars, rows):
        if fusion in (BLIND, PRIOR):
            bar.set(hatch="//", facecolor="lightgrey", edgecolor="grey")
    ax.set_yticks(positions, [f for f, _ in rows])
    ax.set(xlabel="VQA exact match (%), 95% CI where there are several seeds", xlim=(0, 100))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def plot(summary: dict[str, dict[str, Any]], out: Path) -> list[str]:
    """eval_curves and vqa, each as .png (for the Markdown) and .svg (text kept as text, for the HTML); the
    names without suffix of those written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed: no plots (pip install 'mmgpt[plot]')")
        return []
    names = []
    for name, figure in (("eval_curves", _eval_curves_figure), ("vqa", _vqa_figure)):
        fig = figure(summary, plt)
        if fig is None:
            continue
        fig.savefig(out / f"{name}.png", dpi=100)
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
            fig.savefig(out / f"{name}.svg")
        plt.close(fig)
        names.append(name)
    return names


def _html_table(rows: list[list[str]], table_id: str) -> str:
    import html

    if not rows:
        return ""

    def text(cell: str) -> str:  # long fusion names may break after an underscore
        return html.escape(cell).replace("_", "_<wbr>")

    head = "<tr>" + "".join(f"<th>{text(c)}</th>" for c in rows[0]) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{text(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<div class='scroll'><table id='{table_id}'>{head}{body}</table></div>"


def html_report(summary: dict[str, dict[str, Any]], paragraphs: list[str], out: Path, plots: list[str]) -> str:
    """The report as one HTML page for a 1280 px window: the paragraphs, the tables and the plots as inline SVG."""
    import html

    # fits a 1280 px window: compact cells, headings that wrap, numbers that do not; a table too wide for the
    # page scrolls inside its own box rather than widening the page
    style = ("body{font-family:sans-serif;margin:1em auto;padding:0 1em;max-width:1200px}"
             ".scroll{max-width:100%;overflow-x:auto;margin:1em 0}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}td{white-space:nowrap}th{background:#eee;max-width:8em;white-space:normal;"
             "overflow-wrap:break-word}figure{margin:1em 0}figure svg{max-width:100%;height:auto}p{max-width:60em}")
    figures = ""
    for name in plots:
        svg = (out / f"{name}.svg").read_text(encoding="utf-8")
        figures += f"<figure id='{name}'>{svg[svg.index('<svg'):]}</figure>"
    text = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs if p)
    types = type_table(summary)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Fusion comparison</title><style>{style}"
            f"</style></head><body><h1>Fusion comparison</h1>{text}{_html_table(main_table(summary), 'main')}"
            + (f"<h2>VQA exact match per question type</h2>{_html_table(types, 'types')}" if types else "")
            + f"{figures}</body></html>")


def write_report(args: argparse.Namespace, records: list[dict[str, Any]], pending: list[str]) -> dict[str, Any]:
    """report.json, report.md, report.html and the plots in --out, from every finished run's record."""
    from mmgpt.saving import write_text_atomic

    out = Path(args.out)
    summary = summarise(records)
    compare_to_best(records, summary)
    plots = plot(summary, out)
    wall = wall_seconds(records)
    report = {"config": args.config, "steps": args.steps, "seeds": args.seeds, "fusions": args.fusions,
              "overrides": args.overrides, "match_params": args.match_params, "widths": args.widths,
              "pending": pending, "wall_seconds": wall, "summary": summary, "runs": records}
    write_json(out / "report.json", report, indent=2)
    matched = ("" if args.match_params is None else
               f", widths chosen for {args.match_params:,} trainable fusion parameters (within 5%)")
    heading = (f"config `{args.config}`, {args.steps} steps, seeds {args.seeds}, overrides "
               f"`{' '.join(args.overrides) or 'none'}`{matched}. width = model.fusion.dim; mean ± std over "
               "seeds (one seed: its value alone) with the 95% t-interval of the mean; s/step leaves out the "
               f"periodic evaluation; VQA is exact match (%); sets: {metric_sets(summary)}. Controls: blind = the "
               "config's fusion with every image one constant image, prior = the most frequent training answer "
               "per question type. p vs best: paired bootstrap over seeds and questions against the best fusion.")
    timing = ("Wall time of the finished runs: " + ", ".join(f"{phase} {sec:.1f} s" for phase, sec in wall.items())
              + " (setup: config, data, image checks and model before the first step; evaluation: periodic and "
              "final evaluation, saving and the per-question answers; a resumed run counts its last process only).")
    waiting = f"Not finished yet (run the command again to resume): {', '.join(pending)}" if pending else ""
    types = type_table(summary)
    text = ["# Fusion comparison", heading, markdown_table(summary), timing, waiting,
            *(["## VQA exact match per question type", markdown(types)] if types else []),
            *[f"![{n}]({n}.png)" for n in plots]]
    write_text_atomic(out / "report.md", "\n\n".join(t for t in text if t) + "\n")
    write_text_atomic(out / "report.html", html_report(summary, [heading, timing, waiting], out, plots))
    return report
