"""Captioning evaluation with the COCO caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D; METEOR/SPICE with Java).

On the built-in shapes set (and any COCO file whose images carry the renderer's scene records) it also reports
caption facts: how often the position, colour, shape, size, count and spatial relation a caption states are
true of the scene (mmgpt.eval.caption_facts), as n-gram metrics reward the phrasing, not the facts.

Run a model (the built-in synthetic shapes test split by default, or any COCO-format set):
    python eval_caption.py [--model DIR] [--annotations captions.json --images DIR]
Score an existing results file [{image_id, caption}], no model needed:
    python eval_caption.py --results R.json --annotations captions.json --out metrics.json
Shard across processes with `accelerate launch eval_caption.py ...`; the numbers equal one process's.
"""
from __future__ import annotations

import argparse
import html
import logging
import sys
from typing import Any

from mmgpt.eval.common import default_outputs, finish_evaluation, package_versions, parse_evaluation_args
from mmgpt.saving import write_json

logger = logging.getLogger("mmgpt.eval_caption")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", help="COCO captions JSON (default: built-in shapes test split)")
    parser.add_argument("--images", help="image folder of the annotations' file_name entries")
    parser.add_argument("--split", default="test", choices=["train", "val", "test", "held_out"],
                        help="built-in split (default test; held_out: 300 new scenes each of one, two and three "
                             "shapes that no split shows, for caption facts)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="score a --results file that captions only some of the annotated images (default: refuse)")


def evaluate_captions(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Evaluate or score, write the metrics JSON and the HTML report; return the metrics record ({} off rank 0)."""
    args, parser = parse_evaluation_args(
        argv, prog, __doc__, "score this COCO results file [{image_id, caption}] instead of running a model",
        _add_arguments)
    from mmgpt.data.formats import read_dataset
    from mmgpt.data.spec import DatasetSpec
    from mmgpt.eval.caption_facts import facts_text, load_scenes, score_caption_facts
    from mmgpt.eval.caption_metrics import (
        available_java_metrics,
        load_coco_annotations,
        load_coco_results,
        score_captions,
    )
    from mmgpt.eval.runner import one_per_image

    out, report = default_outputs(args, "eval_caption", None if args.results else args.predictions)
    if args.annotations:
        spec = DatasetSpec(format="coco_captions", path=args.annotations, images=args.images or "", name="coco")
    else:
        spec = DatasetSpec(format="shapes_captions", split=args.split, name="shapes")
    info: dict[str, Any] = {"annotations": args.annotations or f"built-in shapes {args.split}"}
    if args.results:
        if not args.annotations:
            parser.error("--results needs --annotations (the COCO captions file to score against)")
        references = load_coco_annotations(args.annotations)
        predictions = load_coco_results(args.results)
        # the images and the prompt are shown only when the image folder is given
        examples = one_per_image(read_dataset(spec)) if args.images else []
        scenes = load_scenes(args.annotations)
        info["results"] = args.results
    else:
        from mmgpt.eval.common import generate_for_eval

        examples, (answers,), run_info, accelerator = generate_for_eval(
            args, lambda templates: one_per_image(read_dataset(spec, templates))[: args.max_examples or None])
        if not accelerator.is_main_process:
            return {}
        info.update(run_info)
        references = {e.meta["image_id"]: list(e.meta["references"]) for e in examples}
        predictions = {e.meta["image_id"]: a for e, a in zip(examples, answers)}
        scenes = {e.meta["image_id"]: e.meta["scene"] for e in examples if "scene" in e.meta}
        if args.predictions:
            write_json(args.predictions, [{"image_id": k, "caption": v} for k, v in predictions.items()], indent=2,
                       default=str)
    missing = [k for k in references if k not in predictions]
    if missing and not args.allow_partial:
        raise ValueError(
            f"{args.results}: no caption for {len(missing)} of the {len(references)} images in {args.annotations} "
            f"(e.g. image_id {', '.join(map(repr, missing[:5]))}); numbers over the rest would not be comparable. "
            "Pass --allow-partial to score only the images with a result, as the COCO toolkit does"
        )
    if missing:
        logger.warning("scoring %d of %d images: %d have no caption in %s (--allow-partial)",
                       len(references) - len(missing), len(references), len(missing), args.results)
        info["images_without_result"] = len(missing)
    references = {k: v for k, v in references.items() if k in predictions}
    metrics, per_image = score_captions(references, predictions)
    missing_java = sorted({"METEOR", "SPICE"} - set(available_java_metrics()))
    facts = score_caption_facts(scenes, predictions) if scenes else {}
    record = {"metrics": metrics, "unavailable": {m: "needs Java and the COCO toolkit's jar" for m in missing_java},
              "num_images": len(predictions), **info, "versions": package_versions()}
    if facts:
        record["caption_facts"] = facts
    # every row is looked up by the one image_id, so its image, prompt, references and caption belong together
    shown = {e.meta["image_id"]: e for e in examples}
    rows = [{"image": shown[k].image if k in shown else None, "image_key": k,
             "prompt": shown[k].prompt if k in shown else "", "references": references[k],
             "prediction": predictions[k], "score": per_image[k].get("CIDEr", 0.0)} for k in predictions]
    facts_html = f"<h2>Caption facts</h2><pre>{html.escape(facts_text(facts))}</pre>" if facts else ""
    summary = [f"caption metrics on {len(predictions)} images:",
               *(f"  {name:>8}: {value:.4f}" for name, value in metrics.items())]
    if missing_java:
        summary.append(f"  unavailable: {', '.join(missing_java)} (need Java and the COCO toolkit's jars)")
    if facts:
        summary.append(facts_text(facts))
    return finish_evaluation(out, report, record, "Caption evaluation", metrics, rows, {"Run": info}, summary,
                             extra_html=lambda: facts_html)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`mmgpt eval-caption` and eval_caption.py -> exit status 0 (bad input raises; mmgpt.cli reports it, status 2)."""
    evaluate_captions(argv, prog)
    return 0

if __name__ == "__main__":
    from mmgpt.errors import run_reporting_errors

    sys.exit(run_reporting_errors("python -m mmgpt.eval.caption", main))
