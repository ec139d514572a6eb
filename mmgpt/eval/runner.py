"""Batched, process-sharded generation and loss over Examples, shared by training and the eval scripts."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import GenerationConfig

from mmgpt.data.example import Example
from mmgpt.decoding import resolve_generation_config
from mmgpt.devices import model_device
from mmgpt.sampling import seeded_decoding

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _process_share(items: Sequence[Any], accelerator: Any) -> Iterator[list[Any]]:
    """This process's contiguous share of `items` (all of them without an accelerator)."""
    if accelerator is None:
        yield list(items)
        return
    with accelerator.split_between_processes(list(items)) as local:
        yield local


def _gather(local: list[Any], accelerator: Any) -> list[Any]:
    """Every process's results, concatenated in process order: the order of the items before the split."""
    if accelerator is None or accelerator.num_processes == 1:
        return local
    return gather_object(local)


@torch.no_grad()
def generate_answers(
    model: Any,
    examples: Sequence[Example],
    batch_size: int = 64,
    accelerator: Any = None,
    progress: bool = True,
    seed: int | None = None,
    generation_config: GenerationConfig | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Answers for every example, in order, sharded across processes; decoding as in MMGPT.generate.

    Sampling draws from a private generator seeded with `seed` (plus the process index), never from torch's
    global RNG.
    """
    config, _ = resolve_generation_config(model.generation_config, generation_config, **generate_kwargs)
    processor = model.processor
    device = model_device(model)
    answers: list[str] = []
    show = progress and (accelerator is None or accelerator.is_main_process)
    if seed is not None and accelerator is not None:
        seed = (seed + accelerator.process_index) % 2**64
    was_training = model.training
    model.eval()
    with _process_share(examples, accelerator) as local, seeded_decoding(config, seed, device) as (decoding, extra):
        for start in tqdm(range(0, len(local), batch_size), desc="generating", disable=not show, leave=False):
            chunk = local[start : start + batch_size]
            batch = processor([e.prompt for e in chunk], [e.image for e in chunk])
            batch = {k: v.to(device) for k, v in batch.items()}
            tokens = model.generate_batch(batch, generation_config=decoding, **extra)
            answers.extend(processor.decode(tokens))
    model.train(was_training)
    return _gather(answers, accelerator)


@torch.no_grad()
def mean_loss(model: Any, examples: Sequence[Example], batch_size: int = 128, accelerator: Any = None) -> float:
    """Teacher-forced loss per answer token over all examples (summed exactly across processes)."""
    processor = model.processor
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    with _process_share(examples, accelerator) as local:
        for start in range(0, len(local), batch_size):
            batch = processor.collate(local[start : start + batch_size])
            out = model(**{k: v.to(device) for k, v in batch.items()})
            totals += torch.stack([out.loss_sum.double(), out.num_tokens.double()])
    model.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    return float(totals[0] / totals[1].clamp(min=1))


def score(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, float]:
    """Task metrics: VQA accuracy (official normalisation) for vqa/chat, COCO metrics for captions."""
    from mmgpt.eval.vqa_metrics import normalize_answer

    metrics: dict[str, float] = {}
    vqa = [(e, p) for e, p in zip(examples, predictions) if e.task != "caption"]
    if vqa:
        hits = [normalize_answer(p) == normalize_answer(e.answer) for e, p in vqa]
        metrics["vqa_exact_match"] = 100.0 * sum(hits) / len(hits)
    captions = [(e, p) for e, p in zip(examples, predictions) if e.task == "caption"]
    if captions:
        from mmgpt.eval.caption_metrics import score_captions

        references: dict[Any, list[str]] = {}
        candidates: dict[Any, str] = {}
        for e, p in captions:
            image_id = e.meta.get("image_id", e.id)
            references[image_id] = list(e.meta.get("references") or [e.answer])
            candidates[image_id] = p
        corpus, _ = score_captions(references, candidates)
        metrics.update({f"caption_{k}": v for k, v in corpus.items()})
    return metrics


def one_per_image(examples: Sequence[Example]) -> list[Example]:
    """Keep VQA/chat examples; for captions keep one example per image (its references are in meta)."""
    seen: set = set()
    kept = []
    for example in examples:
        if example.task == "caption":
            key = example.meta.get("image_id", example.id)
            if key in seen:
                continue
            seen.add(key)
        kept.append(example)
    return kept
