"""Compression for CPU deployment, measured on the same models in one table: fp32, int8, pruned, distilled, ONNX.

Rows: fp32 eager; int8 (mmgpt quantize's default) and bf16; generator MLP pruned by 50% (mmgpt prune) +
recovery fine-tune (train.py init_from=); a student of under 1/4 of the teacher's parameters trained with distillation
(distill.teacher=) and the same student trained without it for the same steps; the ONNX export (fp32 and
--int8) run by mmgpt.runtime. Models: the main job's (runs/default/model, trained) and a wide ~30M-parameter model with
random weights, for the speed columns only (its accuracy columns stay empty).

Columns: parameters, weight bytes on disk, load time, latency per answer at batch 1 (median over
--latency-questions questions asked one at a time) and batch 32 (a batch of 32 questions / 32), easy-VQA
test exact match and caption CIDEr (shapes_captions val), both as train.py's final evaluation computes them
(mmgpt.training.loop.evaluate, every example). Trained rows take them from their run's metrics.json; the
quantised and exported rows are evaluated here, the exports through mmgpt.runtime. Training runs live in --work
and are reused when complete.

    python -m bench.compress                         # one run, CPU, one thread
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import REPO, print_table, setup_logging, write_results
from mmgpt.runtime.manifest import is_export_folder

logger = logging.getLogger("bench.compress")

# the student: a quarter of the default model's width in every part (0.26M of 1.16M parameters)
STUDENT = ["model.image_encoder.kwargs={widths: [16, 32, 48], stem_width: 16}", "model.fusion.dim=64",
           "model.fusion.num_layers=1", "model.generator.kwargs.hidden_size=64",
           "model.generator.kwargs.intermediate_size=192", "model.generator.kwargs.num_attention_heads=2",
           "model.generator.kwargs.num_key_value_heads=2"]
STUDENT_STEPS = ["max_steps=300", "batch_size=64", "eval_every=0", "save_every=0", "optim.lr=1e-3",
                 "optim.warmup_steps=30"]
# 150 steps of 64 at lr 1e-4 kept easy-VQA (-0.09 points) but not the captions (CIDEr -0.18)
RECOVERY_STEPS = ["max_steps=500", "batch_size=128", "eval_every=0", "save_every=0", "optim.lr=2e-4",
                  "optim.warmup_steps=20"]
# random weights: a model where the linear layers dominate the time
WIDE = ["model.fusion.dim=512", "model.generator.kwargs.hidden_size=512",
        "model.generator.kwargs.intermediate_size=2048", "model.generator.kwargs.num_hidden_layers=6",
        "model.generator.kwargs.num_attention_heads=8", "model.generator.kwargs.num_key_value_heads=8"]
QUESTIONS = ["what shape is in the image?", "what color is the shape?", "is there a red shape?",
             "does the image contain a circle?"]


def train_run(work: Path, name: str, overrides: list[str], threads: int) -> Path:
    """A train.py run in work/NAME (reused when it finished before) -> its folder."""
    out = work / name
    if not (out / "metrics.json").is_file():
        command = [sys.executable, str(REPO / "train.py"), *overrides, f"output_dir={out}", f"cpu_threads={threads}",
                   "--overwrite"]
        logger.info("training %s: %s", name, " ".join(command[2:]))
        subprocess.run(command, check=True, cwd=REPO)
    return out


def run_metrics(run: Path) -> dict[str, float]:
    """easy-VQA exact match and caption CIDEr of a finished run's final evaluation."""
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    return {"vqa_em": metrics.get("easy_vqa_test/vqa_exact_match"),
            "cider": metrics.get("shapes_captions_val/caption_CIDEr")}


def evaluate_folder(folder: Path) -> dict[str, float]:
    """The final evaluation of train.py (every test question, every caption image) for a model folder."""
    from mmgpt.config import PromptTemplates
    from mmgpt.model import MMGPT
    from mmgpt.training.config import TrainConfig
    from mmgpt.training.loop import evaluate, read_splits

    model = MMGPT.from_pretrained(folder)
    templates = PromptTemplates.from_config(model.config)
    metrics = evaluate(model, read_splits(TrainConfig().data.eval, templates), None, max_examples=0)
    return {"vqa_em": metrics.get("easy_vqa_test/vqa_exact_match"),
            "cider": metrics.get("shapes_captions_val/caption_CIDEr")}


def evaluate_export(folder: Path, batch_size: int = 256) -> dict[str, float]:
    """The same final evaluation for an ONNX export, run by mmgpt.runtime (greedy, the export's own prompts)."""
    from mmgpt.eval.runner import one_per_image, score
    from mmgpt.runtime import OnnxVLM
    from mmgpt.training.config import TrainConfig
    from mmgpt.training.loop import read_splits

    model = OnnxVLM(folder)
    metrics: dict[str, float] = {}
    for name, examples in read_splits(TrainConfig().data.eval, model.templates):
        kept = one_per_image(examples)
        predictions: list[str] = []
        for start in range(0, len(kept), batch_size):
            chunk = kept[start : start + batch_size]
            batch = model.encode_prompts([e.prompt for e in chunk])
            tokens = model.generate(batch["input_ids"], batch["attention_mask"],
                                    model.encode_images([e.image for e in chunk]))
            predictions.extend(model.decode(tokens))
        metrics.update({f"{name}/{k}": v for k, v in score(kept, predictions).items()})
    return {"vqa_em": metrics.get("easy_vqa_test/vqa_exact_match"),
            "cider": metrics.get("shapes_captions_val/caption_CIDEr")}


def weight_bytes(folder: Path) -> int:
    """Bytes of the weight files: model.safetensors, or an export's ONNX graphs and their data."""
    if (folder / "model.safetensors").is_file():
        return (folder / "model.safetensors").stat().st_size
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data"))


def speed(folder: Path, images: list[str], questions: int) -> dict[str, Any]:
    """Parameters, load time and batch-1 / batch-32 latency per answer of a model folder or an export."""
    onnx = is_export_folder(folder)
    start = time.perf_counter()
    if onnx:
        from mmgpt.runtime import OnnxVLM

        model = OnnxVLM(folder)
        params = None
    else:
        from mmgpt.model import MMGPT

        model = MMGPT.from_pretrained(folder)
        params = model.num_parameters()
    load_s = time.perf_counter() - start
    from mmgpt.inference import answer

    def ask(texts: list[str], paths: list[str]) -> Any:
        return model.answer(texts, paths) if onnx else answer(texts, paths, model=model)

    texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(max(questions, 32))]
    ask(texts[:1], images[:1])  # warm-up
    single = []
    for i in range(questions):
        t0 = time.perf_counter()
        ask(texts[i:i + 1], images[i:i + 1])
        single.append(time.perf_counter() - t0)
    ask(texts[:32], images[:32])
    t0 = time.perf_counter()
    ask(texts[:32], images[:32])
    batch32 = (time.perf_counter() - t0) / 32
    return {"params": params, "bytes": weight_bytes(folder), "load_s": load_s,
            "b1_ms": 1000 * statistics.median(single), "b32_ms": 1000 * batch32}


def build_wide(work: Path, source: Path) -> Path:
    """A random-weight ~30M-parameter model with the trained model's tokenizer, saved once."""
    folder = work / "wide-fp32"
    if not (folder / "model.safetensors").is_file():
        from mmgpt.hf_models import load_hf_tokenizer
        from mmgpt.model import MMGPT
        from mmgpt.training.config import load_train_config

        torch.manual_seed(0)
        cfg = load_train_config("default", WIDE)
        tokenizer = load_hf_tokenizer(source / "tokenizer")
        model = MMGPT.from_config(cfg.model, tokenizer=tokenizer)
        model.save_pretrained(folder)
    return folder


def onnx_export(source: Path, out: Path, int8: bool = False) -> Path | None:
    """The ONNX export of `source` in `out` (reused; `int8`: mmgpt export --int8), or None when mmgpt.export/runtime
    are unavailable."""
    try:
        from mmgpt.export import export_onnx
    except ImportError as e:
        logger.warning("no ONNX row: %s", e)
        return None
    if not is_export_folder(out):
        export_onnx(source, out, int8=int8)
    return out


def profile_int8(work: Path, images: list[str]) -> dict[str, Any]:
    """Top ops by self CPU time of one batch-32 answer on the wide model, fp32 against int8: where int8's time goes."""
    from bench.common import profile_top_ops
    from mmgpt.inference import answer
    from mmgpt.model import MMGPT

    texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(32)]
    result = {}
    for name in ("wide-fp32", "wide-int8"):
        model = MMGPT.from_pretrained(work / name)
        answer(texts, images[:32], model=model)
        result[name] = profile_top_ops(lambda m=model: answer(texts, images[:32], model=m), torch.device("cpu"),
                                       steps=1, top=8)
    return result


def main(argv: list[str] | None = None) -> int:
    """Build or reuse every compressed model, measure each row, print one table and write the results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "runs/default/model"), help="the trained fp32 model")
    parser.add_argument("--work", default=str(REPO / "runs/compress"), help="folder for the compressed models and runs")
    parser.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads (default 1)")
    parser.add_argument("--latency-questions", type=int, default=20, help="batch-1 questions timed per row")
    parser.add_argument("--skip-eval", action="store_true",
                        help="leave the accuracy columns of the quantised and exported rows empty")
    parser.add_argument("--profile", action="store_true",
                        help="only profile fp32 against int8 on the wide model (after a full run) -> compress-profile")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    if args.profile:
        import easy_vqa

        _, _, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
        profile = profile_int8(Path(args.work), [paths[i] for i in image_ids[:32]])
        for name, data in profile.items():
            print(f"\n{name}: {data['total_self_ms']:.0f} ms self CPU time")
            for op in data["top_ops"]:
                print(f"  {op['name']:<40} {op['self_ms']:8.1f} ms  {100 * op['share']:5.1f}%  {op['calls']} calls")
        write_results("compress-profile", torch.device("cpu"), {"threads": args.threads, "profile": profile},
                      benchmark="compress")
        return 0
    from mmgpt.compress.prune import prune
    from mmgpt.compress.quantize import quantize

    source, work = Path(args.model), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import easy_vqa

    _, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    images = [paths[i] for i in image_ids[: max(args.latency_questions, 32)]]

    def ready(folder: Path, make: Any) -> Path:
        if not (folder / "config.json").is_file() and not is_export_folder(folder):
            make()
        return folder

    int8 = ready(work / "int8", lambda: quantize(source, work / "int8"))
    bf16 = ready(work / "bf16", lambda: quantize(source, work / "bf16", method="bf16"))
    pruned = ready(work / "pruned50", lambda: prune(source, work / "pruned50", 0.5))
    recovered = train_run(work, "pruned50-recovered500", [f"init_from={pruned}", *RECOVERY_STEPS], args.threads)
    distilled = train_run(work, "student-distilled", [*STUDENT, *STUDENT_STEPS, f"distill.teacher={source}",
                                                      "distill.alpha=0.5", "distill.temperature=2.0"], args.threads)
    plain = train_run(work, "student-plain", [*STUDENT, *STUDENT_STEPS], args.threads)
    onnx = onnx_export(source, work / "onnx")
    onnx_int8 = onnx_export(source, work / "onnx-int8", int8=True)
    wide = build_wide(work, source)
    wide_int8 = ready(work / "wide-int8", lambda: quantize(wide, work / "wide-int8"))
    wide_pruned = ready(work / "wide-pruned50", lambda: prune(wide, work / "wide-pruned50", 0.5))
    wide_onnx = onnx_export(wide, work / "wide-onnx")
    wide_onnx_int8 = onnx_export(wide, work / "wide-onnx-int8", int8=True)

    rows_spec = [  # metrics None: evaluated here on every test question and caption image
        ("default", "fp32 eager", source, run_metrics(source.parent)),
        ("default", "int8 (mmgpt quantize)", int8, None),
        ("default", "bf16 (mmgpt quantize --method bf16)", bf16, None),
        ("default", "pruned 50% MLP + 500-step recovery", recovered / "model", run_metrics(recovered)),
        ("default", "student 0.26M, distilled, 300 steps", distilled / "model", run_metrics(distilled)),
        ("default", "student 0.26M, no distillation, 300 steps", plain / "model", run_metrics(plain)),
        ("default", "ONNX runtime", onnx, None),
        ("default", "ONNX runtime int8 (mmgpt export --int8)", onnx_int8, None),
        ("wide (random weights)", "fp32 eager", wide, {}),
        ("wide (random weights)", "int8", wide_int8, {}),
        ("wide (random weights)", "pruned 50% MLP (no recovery)", wide_pruned, {}),
        ("wide (random weights)", "ONNX runtime", wide_onnx, {}),
        ("wide (random weights)", "ONNX runtime int8", wide_onnx_int8, {}),
    ]
    rows = []
    for model_name, row, folder, metrics in rows_spec:
        entry: dict[str, Any] = {"model": model_name, "row": row, "folder": str(folder) if folder else None}
        if folder is None:
            entry["note"] = "not measured: mmgpt.export / mmgpt.runtime unavailable"
            rows.append(entry)
            continue
        logger.info("measuring %s / %s", model_name, row)
        entry.update(speed(folder, images, args.latency_questions))
        if metrics is None and not args.skip_eval:
            metrics = evaluate_export(folder) if is_export_folder(folder) else evaluate_folder(folder)
        entry.update(metrics or {})
        rows.append(entry)
    columns = [("model", "model", ""), ("row", "row", ""), ("params", "params", ",d"), ("bytes", "weight bytes", ",d"),
               ("load_s", "load s", ".2f"), ("b1_ms", "ms/answer b1", ".1f"), ("b32_ms", "ms/answer b32", ".2f"),
               ("vqa_em", "easy-VQA EM %", ".2f"), ("cider", "CIDEr", ".3f")]
    print_table(f"Compression on CPU ({args.threads} thread(s))", rows, columns)
    write_results("compress", torch.device("cpu"), {"threads": args.threads, "rows": rows,
                                                    "student_overrides": STUDENT, "student_steps": STUDENT_STEPS,
                                                    "recovery_steps": RECOVERY_STEPS, "wide_overrides": WIDE})
    return 0


if __name__ == "__main__":
    sys.exit(main())
