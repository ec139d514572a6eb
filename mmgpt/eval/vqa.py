"""VQA evaluation with the official VQA accuracy.

Run a model (easy-VQA test by default, or any VQA v2-format set):
    python eval_vqa.py [--model DIR] [--questions Q.json --annotations A.json --images DIR]
Or any question set train.py reads, several images per question included (a data entry of a config):
    python eval_vqa.py --dataset '{format: multi_image_shapes, split: test}'
    python eval_vqa.py --dataset '{format: jsonl, path: my_data/test.jsonl}'
Write the evaluated questions as an lmms-eval task folder too (mmgpt.eval.lmms_task), to score them there:
    python eval_vqa.py --model DIR --lmms-task tasks/mmgpt_vqa
Score an existing results file, no model needed:
    python eval_vqa.py --results R.json --questions Q.json --annotations A.json --out metrics.json
Shard across processes with `accelerate launch eval_vqa.py ...`; the numbers equal one process's.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from typing import Any

import yaml

from mmgpt.config import ConfigError, PromptTemplates, check_config_size, from_dict, parse_yaml
from mmgpt.data.example import Example
from mmgpt.data.spec import DatasetSpec
from mmgpt.eval.common import default_outputs, finish_evaluation, package_versions, parse_evaluation_args
from mmgpt.eval.vqa_metrics import VERSIONS, normalize_answer, official_header
from mmgpt.saving import write_json

logger = logging.getLogger("mmgpt.eval_vqa")
# question types the summary lists; a set with more (easy-VQA: 11, VQA v2: 65) has them in the JSON and the report
MAX_TYPES_SHOWN = 8


def official_files(examples: list[Example]) -> tuple[dict, dict, list[Any]]:
    """Examples -> official VQA questions and annotations JSON; a single answer counts as ten human answers."""
    questions, annotations, ids = [], [], []
    # official question ids are unique ints: keep the examples' own when they are, else number them by position
    # (mixing the two could give two questions one id, and scores and report rows would then pair wrongly)
    own = [e.id for e in examples]
    keep = all(isinstance(i, int) and not isinstance(i, bool) for i in own) and len(set(own)) == len(own)
    for index, e in enumerate(examples):
        qid = e.id if keep else index
        ids.append(qid)
        answers = e.meta.get("answers") or [e.answer] * 10
        questions.append({"question_id": qid, "image_id": e.meta.get("image_id", index),
                          "question": e.meta.get("question", e.prompt)})
        annotations.append({
            "question_id": qid, "image_id": e.meta.get("image_id", index),
            "question_type": e.meta.get("question_type", ""), "answer_type": e.meta.get("answer_type", ""),
            "multiple_choice_answer": e.answer,
            "answers": [{"answer": a, "answer_id": i + 1, "answer_confidence": "yes"} for i, a in enumerate(answers)],
        })
    return official_header(questions=questions), official_header(annotations=annotations), ids


def dataset_spec(text: str, max_examples: int = 0) -> DatasetSpec:
    """--dataset's text (a data entry of a config, as YAML) -> its DatasetSpec; ConfigError naming a bad field."""
    try:
        entry = parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--dataset must be a YAML mapping like '{{format: jsonl, path: test.jsonl}}': {e}") from e
    check_config_size(entry, "--dataset")
    if not isinstance(entry, dict):
        raise ConfigError(f"--dataset must be a YAML mapping like '{{format: jsonl, path: test.jsonl}}', got {text!r}")
    if max_examples and "max_examples" not in entry:
        entry = {**entry, "max_examples": max_examples}
    if "split" not in entry:  # DatasetSpec's own default is a training split
        entry = {**entry, "split": "test"}
    return from_dict(DatasetSpec, entry, prefix="--dataset")


def exact_match(annotations: dict, results: list[dict], version: str = "2017") -> dict[str, Any]:
    """Exact match of each answer with its question's most common reference, both normalised as the official
    scorer normalises answers: overall and per question type, 0-100.

    The official 2017 scorer normalises the prediction only when all ten references agree (every converted
    single-answer set): a reference such as "two" or "Red" then matches no answer at all, which exact match shows.
    """
    answers = {r["question_id"]: normalize_answer(str(r["answer"])) for r in results}
    hits: dict[str, list[bool]] = {}
    changed = []
    for a in annotations["annotations"]:
        if a["question_id"] not in answers:
            continue
        reference = a.get("multiple_choice_answer") or Counter(x["answer"] for x in a["answers"]).most_common(1)[0][0]
        normalised = normalize_answer(reference)
        if len({x["answer"] for x in a["answers"]}) == 1 and normalised != reference.strip():
            changed.append(reference)
        hits.setdefault(a.get("question_type", ""), []).append(answers[a["question_id"]] == normalised)
    if changed and version == "2017":
        logger.warning("%d questions have a single reference answer that the official normalisation changes (e.g. "
                       "%r -> %r): the official 2017 scorer counts every answer to them wrong; see exact_match",
                       len(changed), changed[0], normalize_answer(changed[0]))
    every = [h for group in hits.values() for h in group]
    return {"exact_match": 100.0 * sum(every) / max(len(every), 1),
            "exact_match_per_question_type": {k: 100.0 * sum(v) / len(v) for k, v in sorted(hits.items())}}


def read_examples(args: argparse.Namespace, templates: PromptTemplates | None = None) -> list[Example]:
    """The evaluation set: --dataset, VQA v2 files, or the built-in easy-VQA split (prompts by `templates`)."""
    from mmgpt.data.formats import read_dataset

    if args.dataset:
        spec = dataset_spec(args.dataset, args.max_examples)
        examples = list(read_dataset(spec, templates))
        kinds = sorted({e.task for e in examples} - {"vqa"})
        if kinds:
            raise ValueError(f"--dataset {spec.label!r} holds {', '.join(kinds)} examples; eval_vqa.py scores "
                             "questions (captions: eval_caption.py)")
        if not examples:
            raise ValueError(f"--dataset {spec.label!r} holds no questions")
        if args.lmms_task and any(isinstance(e.image, (list, tuple)) for e in examples):
            raise ValueError(f"--lmms-task writes one image per question; --dataset {spec.label!r} asks about several "
                             "images at once")
        return examples
    if args.questions:
        spec = DatasetSpec(format="vqa_v2", path=args.questions, annotations=args.annotations or "",
                           images=args.images or "", max_examples=args.max_examples, name="vqa")
    else:
        spec = DatasetSpec(format="easy_vqa", split=args.split, max_examples=args.max_examples, name="easy_vqa")
    return read_dataset(spec, templates)


def explained(args: argparse.Namespace, examples: list[Example]) -> str:
    """The report section of --explain K: the model's answer to each of the first K questions with its maps."""
    if args.explain <= 0 or not examples or args.results:
        return ""
    from mmgpt.explain import explain, explanation_html
    from mmgpt.inference import default_model_path

    # explain maps one image: questions about several are left out of this section
    examples = [e for e in examples if not isinstance(e.image, (list, tuple))]
    parts = [f"<h2>Explained answers (first {min(args.explain, len(examples))})</h2>"]
    for example in examples[: args.explain]:
        question = example.meta.get("question", example.prompt)
        parts.append(explanation_html(explain(args.model or default_model_path(), example.image, question)))
    return "\n".join(parts)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", metavar="SPEC",
                        help="evaluate any question set train.py reads: a config's data entry as YAML, e.g. "
                             "'{format: jsonl, path: test.jsonl}' or '{format: multi_image_shapes, split: test}' "
                             "(split defaults to test); several images per question are fine")
    parser.add_argument("--questions", help="official VQA questions JSON (default: easy-VQA)")
    parser.add_argument("--annotations", help="official VQA annotations JSON")
    parser.add_argument("--images", help="image folder of a VQA v2 set (COCO_<subtype>_<id>.jpg names)")
    parser.add_argument("--split", default=None, choices=["train", "test"], help="easy-VQA split (default test)")
    parser.add_argument("--metric-version", default="2017", choices=VERSIONS,
                        help="official evaluator version: 2017 (VQA v2 challenge server, LAVIS; default) or 2021 "
                             "(GT-Vision-Lab/VQA after its 2021 change)")
    parser.add_argument("--export-official", help="write the questions/annotations used, in the official format, here")
    parser.add_argument("--explain", type=int, default=0, metavar="K",
                        help="add per-answer-token maps over the image for the first K questions (mmgpt.explain)")
    parser.add_argument("--closed-set", action="store_true",
                        help="also answer with the evaluated questions' answer set as answer_choices, and report "
                             "open and closed-set accuracy side by side")
    parser.add_argument("--lmms-task", metavar="DIR",
                        help="also write the evaluated questions as an lmms-eval task folder (new or empty; its name "
                             "is the task's), to score the same questions with lmms-eval (mmgpt.eval.lmms_task)")


def evaluate_vqa(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Evaluate or score, write the metrics JSON and the HTML report; return the metrics record ({} off rank 0)."""
    args, parser = parse_evaluation_args(
        argv, prog, __doc__, "score this official results file [{question_id, answer}] instead of running a model",
        _add_arguments)
    if args.closed_set and args.results:
        parser.error("--closed-set runs a model; it cannot score a --results file")
    if args.dataset and (args.questions or args.annotations or args.images or args.split or args.results):
        parser.error("--dataset names the whole set: leave out --questions, --annotations, --images, --split and "
                     "--results")
    args.split = args.split or "test"
    if args.lmms_task and args.results:
        parser.error("--lmms-task writes the questions a model run answers; it cannot come from a --results file")
    if args.lmms_task:
        from mmgpt.eval.lmms_task import check_task_folder

        try:
            check_task_folder(args.lmms_task)
        except ValueError as e:
            parser.error(str(e))
    from mmgpt.eval.vqa_metrics import load_vqa_files, vqa_score

    # what a model run writes besides the metrics and the report (scoring a results file writes neither)
    official = [f"{args.export_official}/{name}.json" for name in ("questions", "annotations")] \
        if args.export_official else []
    out, report = default_outputs(args, "eval_vqa", *([] if args.results else [args.predictions, *official]))
    examples: list[Example] = []
    info: dict[str, Any] = {}
    is_main = True
    if args.results:
        if not (args.questions and args.annotations):
            parser.error("--results needs --questions and --annotations (the official files to score against)")
        questions, annotations, results = load_vqa_files(args.results, args.questions, args.annotations)
        info["results"] = args.results
        if args.images:  # only to show the images in the report
            examples = read_examples(args)
    else:
        from mmgpt.eval.common import generate_for_eval

        if args.questions and not args.annotations:
            parser.error("--questions without --annotations can be answered (--predictions) but not scored")

        def choices_of(examples: list[Example]) -> list[str]:
            return sorted({e.answer for e in examples}) if args.closed_set else []

        def variants(examples: list[Example]) -> list[dict[str, Any]]:
            # one model load for both passes: the open answers, then (--closed-set) the closed-set ones
            return [{}, {"answer_choices": choices_of(examples)}] if args.closed_set else [{}]

        examples, (predictions, *closed), info, accelerator = generate_for_eval(
            args, lambda templates: read_examples(args, templates), variants)
        choices = choices_of(examples)
        is_main = accelerator.is_main_process
        questions, annotations, ids = official_files(examples)
        results = [{"question_id": qid, "answer": p} for qid, p in zip(ids, predictions)]
        if is_main and args.predictions:
            write_json(args.predictions, results, indent=2, default=str)
        if is_main and args.export_official:
            write_json(f"{args.export_official}/questions.json", questions, indent=2, default=str)
            write_json(f"{args.export_official}/annotations.json", annotations, indent=2, default=str)
        if is_main and args.lmms_task:
            from mmgpt.eval.lmms_task import write_lmms_task

            # the same answer length as these answers had, so a served model answers alike
            write_lmms_task(examples, args.lmms_task, questions, annotations,
                            max_new_tokens=info["decoding"].get("max_new_tokens") or 16)
            info["lmms_task"] = args.lmms_task
    if not is_main:
        return {}
    scores = vqa_score(questions, annotations, results, version=args.metric_version)
    per_question = scores.pop("perQuestion")
    scores.update(exact_match(annotations, results, args.metric_version))
    record = {"metrics": scores, "num_questions": len(results), "metric_version": args.metric_version, **info,
              "questions": args.dataset or args.questions or f"easy-vqa {args.split}", "versions": package_versions()}
    side_by_side: dict[str, dict[str, Any]] = {}
    if args.closed_set:
        closed_results = [{"question_id": r["question_id"], "answer": p} for r, p in zip(results, closed[0])]
        closed_scores = vqa_score(questions, annotations, closed_results, version=args.metric_version)
        closed_scores.pop("perQuestion")
        record["closed_set"] = {"metrics": closed_scores, "answer_choices": choices}
        pairs = {"overall": (scores["overall"], closed_scores["overall"]),
                 **{kind: (value, closed_scores["perAnswerType"].get(kind, 0.0))
                    for kind, value in sorted(scores["perAnswerType"].items())}}
        side_by_side[f"Open vs closed-set accuracy ({len(choices)} choices)"] = {
            kind: f"{open_value:.2f} open, {closed_value:.2f} closed-set" for kind, (open_value, closed_value) in
            pairs.items()}
    answers = {r["question_id"]: r["answer"] for r in results}
    text = {q["question_id"]: q["question"] for q in questions["questions"]}
    # the question ids are unique in the official files (checked when scoring), so one id pairs a row's parts
    if args.results:
        shown = {e.id: e for e in examples}  # the vqa_v2 reader keeps the file's question ids
    else:
        shown = {q["question_id"]: e for q, e in zip(questions["questions"], examples)}
    rows = [{"image": shown[qid].image if qid in shown else None, "image_key": a["image_id"],
             "prompt": text.get(qid, ""), "references": sorted({x["answer"] for x in a["answers"]}),
             "prediction": answers[qid], "score": per_question.get(qid, 0.0) / 100.0}
            for a in annotations["annotations"] if (qid := a["question_id"]) in answers]
    summary = [f"VQA accuracy {scores['overall']:.2f} on {len(results)} questions",
               # a set whose questions name no answer type has one unnamed type: nothing to break down
               *(f"  {answer_type:>10}: {value:.2f}" for answer_type, value in sorted(scores["perAnswerType"].items())
                 if answer_type),
               f"exact match {scores['exact_match']:.2f} (both answers normalised as the official scorer normalises "
               "answers)"]
    # question types, where the set names a few
    by_type = {kind: f"{value:.2f} VQA accuracy, {scores['exact_match_per_question_type'][kind]:.2f} exact match"
               for kind, value in sorted(scores["perQuestionType"].items()) if kind}
    if 1 < len(by_type) <= MAX_TYPES_SHOWN:
        summary += ["by question type:", *(f"  {kind:>20}: {value}" for kind, value in by_type.items())]
    if args.closed_set:
        summary.append(f"closed-set VQA accuracy {record['closed_set']['metrics']['overall']:.2f} "
                       f"(answers limited to the {len(choices)} answers of these questions)")
    return finish_evaluation(out, report, record, "VQA evaluation", {"overall": scores["overall"]}, rows,
                             {"Per answer type": {k: v for k, v in sorted(scores["perAnswerType"].items()) if k},
                              **({"Per question type": by_type} if len(by_type) > 1 else {}), **side_by_side,
                              "Run": info}, summary, extra_html=lambda: explained(args, examples))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`mmgpt eval-vqa` and eval_vqa.py -> exit status 0 (bad input raises; mmgpt.cli reports it with status 2)."""
    evaluate_vqa(argv, prog)
    return 0


if __name__ == "__main__":
    from mmgpt.errors import run_reporting_errors

    sys.exit(run_reporting_errors("python -m mmgpt.eval.vqa", main))
