"""mmgpt.data.dataset.GroupedBatches: one dataset per batch or mixed, questions about one image kept together."""
from __future__ import annotations

import pytest
import torch

from mmgpt.data.dataset import GroupedBatches
from mmgpt.data.example import Example
from mmgpt.data.mixture import Mixture


def _mixture() -> Mixture:
    images = [torch.full((3, 2, 2), float(i)) for i in range(30)]
    # 30 images with 6 questions each, and a caption set on other images
    vqa = [Example(images[i % 30], f"q{i // 30}", "a") for i in range(180)]
    captions = [Example(torch.full((3, 2, 2), -1.0 - i), "Describe the image.", "c", task="caption") for i in range(40)]
    return Mixture([("vqa", vqa, 3.0), ("captions", captions, 1.0)], num_samples=220, seed=1)


def _images(mixture: Mixture, batch: list[int]) -> list[float]:
    return [float(mixture[p].image[0, 0, 0]) for p in batch]


def test_batches_come_from_one_dataset_and_are_reproducible() -> None:
    mixture = _mixture()
    sampler = GroupedBatches(mixture, batch_size=16, seed=3, questions_per_image=4)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) == 16
        assert len({mixture.locate(p)[0] for p in batch}) == 1
    again = GroupedBatches(_mixture(), batch_size=16, seed=3, questions_per_image=4)
    again.set_epoch(2)
    assert list(again) == batches
    flat = [p for batch in batches for p in batch]
    assert len(flat) == len(set(flat))


@pytest.mark.parametrize("k", [2, 4])
def test_questions_about_one_image_sit_together(k: int) -> None:
    mixture = _mixture()
    grouped, plain = GroupedBatches(mixture, 30, seed=0, questions_per_image=k), GroupedBatches(mixture, 30, seed=0)
    vqa_batches = lambda sampler: [b for b in sampler if mixture.locate(b[0])[0] == "vqa"]  # noqa: E731
    distinct_grouped = [len(set(_images(mixture, b))) for b in vqa_batches(grouped)]
    distinct_plain = [len(set(_images(mixture, b))) for b in vqa_batches(plain)]
    # far fewer distinct images per batch than in random order
    assert sum(distinct_grouped) / len(distinct_grouped) <= 30 / k + 4
    assert sum(distinct_grouped) < sum(distinct_plain)


def test_questions_per_image_must_be_positive() -> None:
    with pytest.raises(ValueError, match="questions_per_image"):
        GroupedBatches(_mixture(), 8, questions_per_image=0)


@pytest.mark.parametrize("k", [1, 4])
def test_mixed_batches_draw_from_every_dataset_in_the_mixture_proportions(k: int) -> None:
    mixture = _mixture()
    sampler = GroupedBatches(mixture, batch_size=16, seed=3, questions_per_image=k, mixed=True)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 220 // 16
    flat = [p for batch in batches for p in batch]
    assert len(flat) == len(set(flat)) and all(len(batch) == 16 for batch in batches)
    names = [[mixture.locate(p)[0] for p in batch] for batch in batches]
    assert sum(len(set(n)) == 2 for n in names) >= len(batches) - 2
    captions = sum(n.count("captions") for n in names) / len(flat)
    assert 0.15 <= captions <= 0.35  # a quarter of the draws
    again = GroupedBatches(_mixture(), batch_size=16, seed=3, questions_per_image=k, mixed=True)
    again.set_epoch(1)
    assert list(again) == batches
    if k > 1:
        vqa = [[x for x in _images(mixture, b) if x >= 0] for b in batches]
        assert sum(len(set(v)) for v in vqa) < sum(len(v) for v in vqa) / 2
