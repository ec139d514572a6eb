"""Parity of an ONNX export (mmgpt export + mmgpt.runtime) with the eager model on easy-VQA test questions.

Exports the model (the default exporter: dynamo, with TorchScript as fallback), then answers the same
test questions both ways: identical greedy answers (count and rate), exact-match accuracy of each,
max abs difference of the prefix embeddings, of the first decoder step's logits and of the logits at
every KV-cache step along the greedy path (against the eager generator on the whole sequence, no
cache), and batch-1 latency of each (torch and onnxruntime both with --threads threads, default 1).
Writes bench/results/export_parity-cpu.json.

    python -m bench.export_parity                                  # runs/default/model, all 9673 test questions
    python -m bench.export_parity --model PATH --questions 200
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench import common
from bench.common import setup_logging, write_results
from mmgpt.export import export_onnx
from mmgpt.inference import answer, question_prompts
from mmgpt.model import MMGPT
from mmgpt.runtime import OnnxVLM

logger = logging.getLogger("bench.export_parity")


def test_questions(count: int) -> tuple[list[str], list[str], list[str]]:
    """The first `count` easy-VQA test questions (0: all) -> (questions, image paths, answers)."""
    import easy_vqa

    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    count = count or len(questions)
    return list(questions[:count]), [paths[i] for i in image_ids[:count]], list(answers[:count])


def logit_differences(model: MMGPT, vlm: OnnxVLM, texts: list[str], images: list[str], steps: int) -> dict[str, float]:
    """Max abs differences of prefix, first-step logits and KV-cache step logits along the runtime's greedy path."""
    batch = model.processor(question_prompts(model, texts), images)
    ids = vlm.encode_prompts(vlm.prompts(texts))
    pixels = vlm.encode_images(images)
    with torch.no_grad():
        prefix, prefix_mask = model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    got, got_mask = vlm.prefix(ids["input_ids"], ids["attention_mask"], pixels)
    rows = len(texts)
    tokens = np.full((rows, 1), vlm.tokens["bos_token_id"])
    embeds = np.concatenate([got, vlm.embed(tokens)], axis=1)
    mask = np.concatenate([got_mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
    past, step_diffs = vlm.empty_past(rows), []
    for _ in range(steps):
        logits, past = vlm.decode_step(embeds, mask, past)
        with torch.no_grad():
            inputs = model.generator_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                            torch.as_tensor(tokens))
            eager = model.generator(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                    position_ids=inputs.position_ids, use_cache=False).logits
        step_diffs.append(float(np.abs(logits - eager[:, -1].numpy()).max()))
        next_tokens = logits.argmax(-1)[:, None]
        tokens = np.concatenate([tokens, next_tokens], axis=1)
        embeds, mask = vlm.embed(next_tokens), np.concatenate([mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
    return {"pixel_values": float(np.abs(pixels - batch["pixel_values"].numpy()).max()),
            "prefix_embeds": float(np.abs(got - prefix.numpy()).max()),
            "prefix_mask_equal": bool(np.array_equal(got_mask, prefix_mask.numpy())),
            "first_step_logits": step_diffs[0], "step_logits": max(step_diffs), "steps_compared": steps}


def latency(fn: Any, items: list[tuple[str, str]]) -> float:
    """Median seconds of fn(text, image) over `items`, after one warm-up call."""
    fn(*items[0])
    times = []
    for text, image in items:
        start = time.perf_counter()
        fn(text, image)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the parity measurement and write its results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/default/model", help="saved model folder")
    parser.add_argument("--questions", type=int, default=0, help="easy-VQA test questions (0: all)")
    parser.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency-questions", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime alike")
    parser.add_argument("--out", default=None, help="results folder (default: bench/results)")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    model = MMGPT.from_pretrained(args.model, device="cpu")
    texts, images, truth = test_questions(args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = export_onnx(args.model, Path(tmp) / "onnx", exporter=args.exporter)
        export_seconds = time.perf_counter() - start
        vlm = OnnxVLM(folder, threads=args.threads)
        manifest = vlm.manifest
        start = time.perf_counter()
        eager = answer(texts, images, model=model, batch_size=args.batch_size)
        eager_seconds = time.perf_counter() - start
        start = time.perf_counter()
        onnx = vlm.answer(texts, images, batch_size=args.batch_size)
        onnx_seconds = time.perf_counter() - start
        differences = [logit_differences(model, vlm, texts[i : i + 64], images[i : i + 64], steps=8)
                       for i in range(0, min(len(texts), 256), 64)]
        items = list(zip(texts, images))[: args.latency_questions]
        eager_latency = latency(lambda t, i: answer(t, i, model=model), items)
        onnx_latency = latency(vlm.answer, items)
    same = sum(a == b for a, b in zip(eager, onnx))
    payload = {
        "model": args.model, "questions": len(texts), "identical_answers": same,
        "identical_rate": same / len(texts),
        "mismatches": [{"question": t, "eager": a, "onnx": b} for t, a, b in zip(texts, eager, onnx) if a != b][:20],
        "exact_match": {"eager": sum(a == t for a, t in zip(eager, truth)) / len(texts),
                        "onnx": sum(a == t for a, t in zip(onnx, truth)) / len(texts)},
        "max_abs_diff": {key: max(d[key] for d in differences) for key in
                         ("pixel_values", "prefix_embeds", "first_step_logits", "step_logits")},
        "prefix_mask_equal": all(d["prefix_mask_equal"] for d in differences),
        "logit_questions": min(len(texts), 256),
        "graphs": {name: {"exporter": g["exporter"], "max_abs_diff_vs_eager": g["max_abs_diff_vs_eager"]}
                   for name, g in manifest["graphs"].items()},
        "export_seconds": export_seconds,
        "answer_seconds": {"eager": eager_seconds, "onnx": onnx_seconds, "batch_size": args.batch_size},
        "batch1_latency_s": {"eager": eager_latency, "onnx": onnx_latency, "ratio": onnx_latency / eager_latency},
    }
    write_results("export_parity", torch.device("cpu"), payload, out_dir=args.out)
    print(f"identical answers: {same}/{len(texts)}; exact match eager {payload['exact_match']['eager']:.4f} "
          f"onnx {payload['exact_match']['onnx']:.4f}; max abs diff {payload['max_abs_diff']}; "
          f"batch-1 latency eager {eager_latency * 1e3:.2f} ms onnx {onnx_latency * 1e3:.2f} ms")
    return payload


main = common.exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
