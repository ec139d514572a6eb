"""Data pipeline throughput vs what training consumes, and the gain from caching frozen image features.

1. Pipeline: images/s of the training input path on easy-VQA train images: `RobustImages` (the
   training dataset wrapper) calling `processor.image_tensor` (PNG decode by
   `mmgpt.images.load_image` + the encoder's timm transform), batched by a DataLoader with the
   training loop's `make_collate(processor)` (tokenisation via `processor.collate`), with 0, 1 and 2
   workers. Measured twice: decoding every image ("decode") and from pixel tensors cached in memory
   by `check_images(..., cache=True)`, which is what configs/default.yaml (cache_images: true) does.
   The first batch (worker start-up) is excluded from the steady-state rate and reported separately.
2. Consumption: samples/s of real training steps of the same config (bench/train_throughput.py's
   measurement, on device-resident batches). Ratio = pipeline images/s / training samples/s.
   On a CPU-only machine the two compete for the same cores during training; measured here apart.
3. Feature caching: with the image encoder frozen, a training step that runs the encoder under
   `torch.no_grad()` is compared with one that reads the encoder's output precomputed once (the
   same model forward, with the image encoder swapped for a pass-through and the features given in
   place of the pixels). The cached features sit in device memory, so the cached step excludes any
   cost of storing or reading them (host copy, disk); the speedup is per training step, the
   one-off precompute (one encoder forward per distinct image) is not amortised into it. Caching is
   only exact when the encoder is frozen, in eval mode, and preprocessing is deterministic (no
   augmentation), which holds for mmgpt's eval-style timm transform.

    python -m bench.data_pipeline                     # default config (64 px CNN), CPU
    python -m bench.data_pipeline --config gpu200m    # ViT-B/16 at 224 px (GPU)
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench import cli, common, train_throughput, workloads

logger = logging.getLogger("bench.data_pipeline")

NAME = "data_pipeline"


def easy_vqa_examples(max_examples: int, seed: int = 0) -> list[Any]:
    """Shuffled easy-VQA train examples (image = PNG path), as the training mixture would draw them."""
    from mmgpt.data.formats import read_dataset
    from mmgpt.data.spec import DatasetSpec

    try:
        examples = read_dataset(DatasetSpec(format="easy_vqa", split="train"))
    except ImportError as e:
        raise SystemExit(f"the easy-vqa package is needed for its PNG files ({e}); pip install easy-vqa") from e
    random.Random(seed).shuffle(examples)
    return examples[:max_examples]


def image_loader(processor: Any) -> tuple[Callable[[Any], torch.Tensor], str]:
    """processor.image_tensor when mmgpt.images.load_image exists, else PIL open + the processor's transform."""
    try:
        from mmgpt.images import load_image  # noqa: F401

        return processor.image_tensor, "mmgpt.images.load_image"
    except ImportError:
        from PIL import Image

        def pil_tensor(source: Any) -> torch.Tensor:
            if isinstance(source, torch.Tensor):
                return source
            with Image.open(source) as image:
                return processor.image_transform(image.convert("RGB"))

        return pil_tensor, "PIL.Image.open"


def pipeline_rate(processor: Any, examples: Sequence[Any], load: Callable[[Any], torch.Tensor], batch_size: int,
                  num_workers: int, num_batches: int) -> dict[str, Any]:
    """Iterate a training-style DataLoader for `num_batches` batches; images/s after the first and overall."""
    from mmgpt.data.dataset import RobustImages, make_collate

    dataset = RobustImages(list(examples), load)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=make_collate(processor),
                        num_workers=num_workers, drop_last=True, pin_memory=False, persistent_workers=False)
    start = time.perf_counter()
    first = None
    count = 0
    for batch in loader:
        count += 1
        if first is None:
            first = time.perf_counter()
        if batch["pixel_values"].shape[0] != batch_size:
            raise RuntimeError("short batch")
        if count >= num_batches:
            break
    end = time.perf_counter()
    if count < num_batches:
        raise RuntimeError(f"only {count} batches available; lower --batches or raise --max-examples")
    steady = (count - 1) * batch_size / (end - first) if count > 1 else None
    return {"workers": num_workers, "batches": count, "batch_size": batch_size,
            "first_batch_s": first - start, "total_s": end - start,
            "images_per_s_overall": count * batch_size / (end - start),
            "images_per_s": steady if steady is not None else count * batch_size / (end - start)}


class NoGradEncoder(nn.Module):
    """The frozen image encoder run under torch.no_grad()."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> I (B, Li, d_image), without autograd."""
        with torch.no_grad():
            return self.encoder(pixel_values)


class PrecomputedFeatures(nn.Module):
    """Stands in for the image encoder: the 'pixel_values' it receives are already its features."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """I (B, Li, d_image) -> the same."""
        return features


def feature_cache_speedup(config: str, tiny: bool, batch_size: int | None, steps: int, device: torch.device,
                          seed: int = 0) -> dict[str, Any]:
    """Per-step time of training with a frozen image encoder run each step vs features computed once."""
    from mmgpt.training.optim import apply_freezing, build_optimizer, build_scheduler, fused_adamw, set_train_mode

    work = workloads.workload(config, tiny=tiny)
    work.model.image_encoder.freeze = True
    batch_size = batch_size or work.batch_size
    with train_throughput.fresh_accelerator(work.mixed_precision, device) as accelerator:
        model = workloads.build_model(work.model, seed=seed)
        frozen = apply_freezing(model)
        optimizer = build_optimizer(model, work.optim, fused=fused_adamw(device))
        scheduler = build_scheduler(optimizer, work.optim, total_steps=2 * steps + 10)
        prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        raw = accelerator.unwrap_model(prepared)
        batches = workloads.synthetic_batches(raw, batch_size, num_batches=2, device=accelerator.device, seed=seed)
        set_train_mode(raw, frozen)
        encoder = raw.image_encoder
        with torch.no_grad(), accelerator.autocast():
            features = [encoder(b["pixel_values"]) for b in batches]
        step = train_throughput.make_step(prepared, prepared, optimizer, scheduler, accelerator, work.optim.grad_clip)
        run_encoder, cached = NoGradEncoder(encoder), PrecomputedFeatures()
        counter = {"full": 0, "cached": 0}

        def full() -> None:
            raw.image_encoder = run_encoder
            i = counter["full"] = counter["full"] + 1
            step(batches[i % 2])

        def from_cache() -> None:
            raw.image_encoder = cached
            i = counter["cached"] = counter["cached"] + 1
            step({**batches[i % 2], "pixel_values": features[i % 2]})

        try:
            timings = common.time_interleaved({"full": full, "cached": from_cache}, device, warmup=1, repeats=steps)
        finally:
            raw.image_encoder = encoder
        per_image = features[0][0].numel() * features[0].element_size()
    full_s, cached_s = timings["full"].median_s, timings["cached"].median_s
    return {
        "config": work.name,
        "fusion": work.model.fusion.type,
        "batch_size": batch_size,
        "precision": work.mixed_precision,
        "steps": steps,
        "step_with_encoder_s": full_s,
        "step_with_cached_features_s": cached_s,
        "step_with_encoder_times_s": timings["full"].times_s,
        "step_with_cached_features_times_s": timings["cached"].times_s,
        "speedup": full_s / cached_s,
        "feature_shape_per_image": list(features[0].shape[1:]),
        "feature_dtype": str(features[0].dtype).replace("torch.", ""),
        "feature_bytes_per_image": per_image,
        # easy-VQA train has 4000 distinct images
        "feature_cache_bytes_easy_vqa_train": per_image * 4000,
        "image_encoder_params": sum(p.numel() for p in encoder.parameters()),
    }


def measure(config: str = "default", tiny: bool = False, batch_size: int | None = None,
            workers: Sequence[int] = (0, 1, 2), batches: int = 8, max_examples: int = 4096, train_steps: int = 5,
            cache_steps: int = 5, device: torch.device | None = None, seed: int = 0) -> dict[str, Any]:
    """All three measurements of this benchmark for one config."""
    device = device or common.resolve_device("auto")
    work = workloads.workload(config, tiny=tiny)
    batch_size = batch_size or work.batch_size
    model = workloads.build_model(work.model, seed=seed)
    processor = model.processor
    load, loader_name = image_loader(processor)
    examples = easy_vqa_examples(max(max_examples, batch_size * batches), seed=seed)
    logger.info("pipeline: %d easy-VQA examples, batch %d, image transform %s", len(examples), batch_size,
                getattr(model.image_encoder, "data_config", {}).get("input_size"))

    pipeline = []
    for w in workers:
        row = pipeline_rate(processor, examples, load, batch_size, w, batches)
        pipeline.append({"mode": "decode", **row})
        logger.info("decode, %d workers: %.0f images/s", w, row["images_per_s"])
    from mmgpt.data.dataset import check_images

    cached_examples, _ = check_images(examples[: batch_size * batches], load, cache=True, max_bad_fraction=1.0,
                                      progress=False)
    for w in workers:
        row = pipeline_rate(processor, cached_examples, load, batch_size, w, batches)
        pipeline.append({"mode": "cached_pixels", **row})
        logger.info("cached pixels, %d workers: %.0f images/s", w, row["images_per_s"])
    del model

    training = train_throughput.measure(config, tiny=tiny, batch_size=batch_size, steps=train_steps, warmup=1,
                                        device=device, count_flops=False, seed=seed)
    consumed = training["samples_per_s"]
    for row in pipeline:
        row["ratio_to_training"] = row["images_per_s"] / consumed
    decode = [r for r in pipeline if r["mode"] == "decode"]
    best = max(decode, key=lambda r: r["images_per_s"])
    cache = feature_cache_speedup(config, tiny, batch_size, cache_steps, device, seed=seed)
    return {
        "config": work.name,
        "batch_size": batch_size,
        "image_loader": loader_name,
        "pipeline": pipeline,
        "training_samples_per_s": consumed,
        "training_step_time_s": training["step_time_s"],
        "ratio": {"best_decode_workers": best["workers"], "best_decode": best["ratio_to_training"],
                  "decode_by_workers": {str(r["workers"]): r["ratio_to_training"] for r in decode},
                  "cached_pixels_by_workers": {str(r["workers"]): r["ratio_to_training"]
                                               for r in pipeline if r["mode"] == "cached_pixels"}},
        "feature_cache": cache,
        "peak_memory_bytes": common.peak_memory_bytes(device),
        "peak_memory_kind": common.peak_memory_kind(device),
    }


TABLE = [
    ("mode", "pipeline", ""),
    ("workers", "workers", "d"),
    ("images_per_s", "images/s", ".0f"),
    ("first_batch_s", "1st batch (s)", ".3f"),
    ("ratio_to_training", "x training", ".2f"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of this benchmark."""
    parser = cli.new_parser(__doc__)
    cli.add_workload_options(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's (128 / 64)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--batches", type=int, default=8, help="batches per pipeline measurement")
    parser.add_argument("--max-examples", type=int, default=4096, help="easy-VQA examples to draw from")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps for the consumption rate")
    parser.add_argument("--cache-steps", type=int, default=5, help="timed steps of each feature-caching variant")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (training and feature caching)")
    cli.add_run_options(parser)
    args = parser.parse_args(argv)
    cli.check_workload_options(parser, args)
    if args.batches < 1 or args.train_steps < 1 or args.cache_steps < 1 or min(args.workers) < 0:
        parser.error("--batches, --train-steps and --cache-steps must be >= 1, --workers >= 0")
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, write the JSON; returns it."""
    args = parse_args(argv)
    device = cli.setup(args)
    result = measure(args.config, tiny=args.tiny, batch_size=args.batch_size, workers=sorted(set(args.workers)),
                     batches=args.batches, max_examples=args.max_examples, train_steps=args.train_steps,
                     cache_steps=args.cache_steps, device=device, seed=args.seed)
    common.print_table(f"data pipeline ({result['config']}, batch {result['batch_size']}) vs training "
                       f"({result['training_samples_per_s']:.1f} samples/s) on {common.device_name(device)}",
                       result["pipeline"], TABLE)
    c = result["feature_cache"]
    print(f"frozen image encoder: step {c['step_with_encoder_s'] * 1e3:.1f} ms with the encoder, "
          f"{c['step_with_cached_features_s'] * 1e3:.1f} ms from cached features: {c['speedup']:.2f}x "
          f"({common.human_bytes(c['feature_bytes_per_image'])} per image, "
          f"{common.human_bytes(c['feature_cache_bytes_easy_vqa_train'])} for easy-VQA train)")
    return cli.write(NAME, cli.result_name(NAME, result["config"]), device, args, result)


main = common.exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
