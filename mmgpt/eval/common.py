"""What both evaluation scripts share: their command line, the result record, the HTML report, the run over a model."""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from mmgpt.config import PromptTemplates
from mmgpt.decoding import add_decoding_args
from mmgpt.logging_setup import configure_logging
from mmgpt.outputs import check_output_file
from mmgpt.ranges import check_range
from mmgpt.saving import write_json, write_text_atomic

logger = logging.getLogger(__name__)

PACKAGES = ("mmgpt", "torch", "transformers", "timm", "accelerate", "tokenizers", "pillow")


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _thumbnail(image: Any, size: int = 128) -> str:
    """An <img> tag with the image embedded as base64 PNG, or a note when it cannot be read; one per image of a list."""
    if isinstance(image, (list, tuple)):
        return "".join(_thumbnail(one, size // 2 if len(image) > 1 else size) for one in image)
    try:
        from mmgpt.images import load_image

        picture = load_image(image)
        picture.thumbnail((size, size))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        return f'<img src="data:image/png;base64,{encoded}" width="{size}">'
    except Exception as e:  # a report must not fail on one unreadable image
        return f"<em>image unavailable: {html.escape(str(e))}</em>"


def _distinct_images(rows: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The first `count` rows whose images differ (rows of one image, e.g. several questions, show it once)."""
    seen: set[str] = set()
    chosen = []
    for row in rows:
        key = repr(row.get("image_key", row["image"]))
        if key in seen:
            continue
        seen.add(key)
        chosen.append(row)
        if len(chosen) == count:
            break
    return chosen


def format_number(value: float) -> str:
    """A metric as read: up to 4 decimals without trailing zeros (99.93, 0.8123, 75), not 99.9300."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _table(parts: list[str], heading: str, values: dict[str, Any]) -> None:
    parts.append(f"<h2>{html.escape(heading)}</h2><table>")
    for key, value in values.items():
        shown = format_number(value) if isinstance(value, float) else html.escape(json.dumps(value, default=str))
        parts.append(f"<tr><th>{html.escape(str(key))}</th><td>{shown}</td></tr>")
    parts.append("</table>")


def write_html_report(
    path: str | Path, title: str, metrics: dict[str, Any], rows: Sequence[dict[str, Any]], per_section: int = 12,
    tables: dict[str, dict[str, Any]] | None = None, extra_html: str = "",
) -> None:
    """Self-contained HTML: metrics and extra `tables`, then the best and the worst examples (rows carry a 'score').

    The worst examples are only rows scoring below the best score. `extra_html` (a trusted fragment, e.g.
    mmgpt.explain's maps) goes after the examples.

    Each row pairs its own image, prompt, references and prediction; the best examples show distinct images
    (by 'image_key', else 'image'), so one image asked many easy questions does not fill the section.
    """
    ordered = sorted(rows, key=lambda r: r["score"], reverse=True)
    # the worst are the rows that fell short of the best score, lowest first: never a correct answer
    # shown after the real errors because fewer than `per_section` went wrong
    top = ordered[0]["score"] if ordered else 0.0
    worst = [row for row in ordered[::-1] if row["score"] < top][:per_section]
    sections = [("Best examples", _distinct_images(ordered, per_section)), ("Worst examples", worst)]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}th{background:#eee}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    _table(parts, "Metrics", metrics)
    for heading, values in (tables or {}).items():
        _table(parts, heading, values)
    for heading, chosen in sections:
        parts.append(f"<h2>{heading}</h2><table><tr><th>image</th><th>prompt</th><th>references</th>"
                     "<th>prediction</th><th>score</th></tr>")
        for row in chosen:
            references = "<br>".join(html.escape(r) for r in row["references"])
            parts.append(
                f"<tr><td>{_thumbnail(row['image'])}</td><td>{html.escape(row['prompt'])}</td>"
                f"<td>{references}</td><td>{html.escape(row['prediction'])}</td><td>{row['score']:.3f}</td></tr>"
            )
        parts.append("</table>")
        if not chosen:
            parts.append(f"<p>none: every example scored {format_number(float(top))}</p>")
    parts.append(extra_html)
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))


def parse_evaluation_args(argv: list[str] | None, prog: str | None, description: str, results_help: str,
                          add_arguments: Callable[[argparse.ArgumentParser], None]
                          ) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """An evaluation script's command line: --results (score a file), its own options, then add_model_args."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", help=results_help)
    add_arguments(parser)
    add_model_args(parser)
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    return args, parser


def finish_evaluation(out: Path, report: Path, record: dict[str, Any], title: str, metrics: dict[str, Any],
                      rows: Sequence[dict[str, Any]], tables: dict[str, dict[str, Any]], summary: Sequence[str],
                      extra_html: Callable[[], str] = str) -> dict[str, Any]:
    """Write the metrics record and the HTML report (`extra_html()` after its examples), print `summary` -> record."""
    write_json(out, record, indent=2, default=str)
    write_html_report(report, title, metrics, rows, tables=tables, extra_html=extra_html())
    print("\n".join([*summary, f"metrics: {out}", f"report:  {report}"]))
    return record


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --batch-size, --max-examples and --out/--report/--predictions, shared by both scripts."""
    parser.add_argument("--model", default=None,
                        help="model folder, or hf://org/name for a hub model (default: $MMGPT_MODEL or the main job's)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per generation batch")
    parser.add_argument("--max-examples", type=int, default=0, help="evaluate only the first N (0 = all)")
    parser.add_argument("--out", default=None,
                        help="metrics JSON to write (default: beside the model, e.g. runs/default/eval/<script>.json)")
    parser.add_argument("--report", default=None, help="HTML report to write (default: next to --out)")
    parser.add_argument("--predictions", default=None, help="write the model's answers in the official results format")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that already exist (without it they are refused before anything "
                             "runs); a folder in an output file's place is never replaced")
    add_decoding_args(parser)


def generate_for_eval(args: argparse.Namespace, read: Callable[[PromptTemplates], Sequence[Any]],
                      variants: Callable[[Sequence[Any]], Sequence[Mapping[str, Any]]] | None = None,
                      ) -> tuple[Sequence[Any], list[list[str]], dict[str, Any], Any]:
    """Load the model, read the evaluation set with the model's own prompt templates and run the model over it once
    per decoding variant (`variants(examples)`; default one), sharded across accelerate processes
    -> (examples, predictions of each variant, run info of the first, accelerator).

    A model trained with its own vqa_template or caption_prompt is asked in those words, as in training. A
    variant's options (e.g. answer_choices) replace the command line's decoding options; the command line's are
    checked before the (slow) model load, which happens once for all variants.
    """
    from accelerate import Accelerator

    from mmgpt.decoding import (
        check_decoding_options,
        check_seed,
        decoding_from_args,
        resolve_generation_config,
        set_values,
    )
    from mmgpt.devices import cpu_processes, set_cpu_threads, warn_if_one_process_launched
    from mmgpt.eval.runner import generate_answers
    from mmgpt.inference import default_model_path, load_model_or_export
    from mmgpt.runtime.manifest import is_export_folder

    options = decoding_from_args(args)
    seed = check_seed(options.pop("seed"))
    check_decoding_options(options)
    check_range("--batch-size", args.batch_size, ">= 1", integer=True)
    accelerator = Accelerator(cpu=cpu_processes())
    warn_if_one_process_launched(accelerator.num_processes, Path(sys.argv[0]).name or "eval_vqa.py")
    if accelerator.device.type == "cpu":
        set_cpu_threads()
    model_name = args.model or str(default_model_path())
    # an `mmgpt export` folder is evaluated through onnxruntime, on the CPU whatever device the processes have
    model = load_model_or_export(model_name, device=None if is_export_folder(model_name) else accelerator.device)
    examples = read(PromptTemplates.from_config(model.config))
    bad_images = None
    if isinstance(examples, list):
        from mmgpt.data.dataset import check_images

        # checked before any answer is generated: an image that cannot be read is skipped and counted, as in
        # training's evaluation, not an error after minutes of work
        examples, report = check_images(examples, model.processor.image_tensor, cache=False, max_bad_fraction=1.0,
                                        progress=accelerator.is_main_process, name="evaluation set")
        bad_images = report.summary()
        if report.num_bad:
            logger.warning("%s: %s", bad_images, "; ".join(f"{k}: {v}" for k, v in list(report.bad.items())[:5]))
        if not examples:
            raise ValueError(f"no question of the evaluation set has a usable image ({bad_images})")
    decodings = [{**options, **variant} for variant in (variants(examples) if variants else [{}])]
    for decoding in decodings:
        check_decoding_options(decoding)
    configs = [resolve_generation_config(model.generation_config, **decoding)[0] for decoding in decodings]
    predictions = [generate_answers(model, examples, batch_size=args.batch_size, accelerator=accelerator, seed=seed,
                                    generation_config=config) for config in configs]
    # every rank has the gathered answers: leave the process group now, since a rank that exits while gloo's
    # threads still run aborts ("terminate called without an active exception") and fails the launch. The barrier
    # first: a rank that has its gathered answers may still be sending its own, and tearing gloo down then aborts
    # the other rank (seen once in CI)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    info = {
        "model": str(model_name),
        "prompt_template": {"vqa": model.config.vqa_template, "caption": model.config.caption_prompt},
        "decoding": {**set_values(configs[0]), "seed": seed},  # the effective generation config
        "processes": accelerator.num_processes,
        **({"bad_images": bad_images} if bad_images is not None else {}),
    }
    return examples, predictions, info, accelerator


def output_folder(args: argparse.Namespace) -> Path:
    """Where the metrics JSON and the HTML report go by default: beside the model folder, never inside it.

    A run's model `runs/NAME/model` gets `runs/NAME/eval/`; another model folder `DIR/NAME` gets
    `DIR/NAME-eval/`; a hub model `hf://org/name` gets `eval/org--name/` here; scoring a results file
    (no model) writes beside that file. The model folder is left as saved, since loading reads all of it.
    """
    if getattr(args, "results", None):
        return Path(args.results).expanduser().parent
    from mmgpt.inference import default_model_path

    model = str(args.model or default_model_path())
    if model.startswith("hf://"):
        return Path("eval") / model[len("hf://"):].strip("/").replace("/", "--")
    folder = Path(model).expanduser().absolute()
    return folder.parent / "eval" if folder.name == "model" else folder.parent / f"{folder.name}-eval"


def default_outputs(args: argparse.Namespace, stem: str, *more: str | Path | None) -> tuple[Path, Path]:
    """--out and --report, defaulting to <stem>.json / <stem>.html in `output_folder` (the report beside --out).

    They and the `more` output files are checked first (mmgpt.outputs.check_output_file): an existing one is
    refused without --overwrite, before the slow part runs.
    """
    out = Path(args.out) if args.out else output_folder(args) / f"{stem}.json"
    report = Path(args.report) if args.report else out.with_suffix(".html")
    for path in (out, report, *more):
        if path is not None:
            check_output_file(path, overwrite=args.overwrite)
    return out, report
