"""Training-time dataset: checks each image once, skips and counts bad ones, optionally caches pixels."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mmgpt.data.augment import augment
from mmgpt.data.example import Example
from mmgpt.data.pixel_cache import PixelCache

logger = logging.getLogger(__name__)


class TooManyBadImages(ValueError):
    """More of the training images are unusable than data.max_bad_fraction allows (bad input: one line, status 2)."""


def image_key(image: Any) -> Any:
    """A hashable identity for an image source (its path for files; a tuple of those for several images)."""
    if isinstance(image, (list, tuple)):
        return tuple(image_key(one) for one in image)
    if isinstance(image, (str, Path)):
        return str(image)
    return id(image)


def each_image(image: Any) -> list[Any]:
    """An example's images as a list: several (a list or tuple) or one."""
    return list(image) if isinstance(image, (list, tuple)) else [image]


@dataclass
class ImageReport:
    """Which images could not be used, and why."""

    total: int = 0
    bad: dict[str, str] = field(default_factory=dict)  # image key -> reason

    @property
    def num_bad(self) -> int:
        """How many distinct images were skipped."""
        return len(self.bad)

    def summary(self) -> str:
        """One line: counts per kind of problem."""
        kinds = Counter(reason.split(":")[0] for reason in self.bad.values())
        detail = ", ".join(f"{k}: {n}" for k, n in kinds.most_common()) or "none"
        return f"{self.num_bad} of {self.total} images skipped ({detail})"


def check_images(
    examples: Sequence[Example],
    image_tensor: Callable[[Any], torch.Tensor],
    cache: bool,
    max_bad_fraction: float,
    progress: bool = True,
    name: str = "",
    pixel_cache: PixelCache | None = None,
) -> tuple[list[Example], ImageReport]:
    """Decode each distinct image once; drop examples whose image is bad.

    With `cache`, the examples that are kept carry their preprocessed pixel tensor instead of
    the source, so training never decodes an image twice; with a `pixel_cache` as well (made for the
    processor whose `image_tensor` this is), those tensors and the bad images' reasons come from disk when
    an earlier run checked the same files. Every process runs the same check on the same data, so all
    ranks keep identical example lists.
    """
    report = ImageReport()
    sources = {}
    for example in examples:
        for image in each_image(example.image):
            sources.setdefault(image_key(image), image)
    report.total = len(sources)

    def decode() -> tuple[list[torch.Tensor | None], dict[int, str]]:
        return _decode_each(list(sources.values()), image_tensor, progress, f"checking images {name}".strip(),
                            keep=cache)

    if cache and pixel_cache is not None:
        pixels, bad = pixel_cache.get_or_build(list(sources.values()), decode, name=name)
    else:
        pixels, bad = decode()
    tensors: dict[Any, Any] = {}
    for i, (key, source) in enumerate(sources.items()):
        if i in bad:
            report.bad[str(key)] = bad[i]
            tensors[key] = None
        else:
            tensors[key] = pixels[i] if cache else source
    if report.num_bad:
        logger.warning("%s: %s", name or "dataset", report.summary())
        for reason in list(report.bad.values())[:5]:
            logger.warning("  skipped %s", reason)
    if report.total and report.num_bad / report.total > max_bad_fraction:
        raise TooManyBadImages(
            f"{name or 'dataset'}: {report.summary()}, more than data.max_bad_fraction={max_bad_fraction:g}; "
            f"fix the data or raise the threshold. First problems: "
            + "; ".join(list(report.bad.values())[:3])
        )
    kept = []
    for example in examples:
        values = [tensors[image_key(image)] for image in each_image(example.image)]
        if any(value is None for value in values):  # one bad image spoils a question about several
            continue
        if cache:
            example = replace(example, image=values if isinstance(example.image, (list, tuple)) else values[0])
        kept.append(example)
    return kept, report


def _decode_each(sources: Sequence[Any], image_tensor: Callable[[Any], torch.Tensor], progress: bool,
                 desc: str, keep: bool = True) -> tuple[list[torch.Tensor | None], dict[int, str]]:
    """Pixels of each source (None for a bad one, and for every one unless `keep`) and {index: reason} of the bad
    ones; without `keep` only the check is kept, so the decoded images are not all held in memory at once."""
    from mmgpt.images import ImageError

    pixels: list[torch.Tensor | None] = []
    bad: dict[int, str] = {}
    for i, source in enumerate(tqdm(sources, desc=desc, disable=not progress)):
        try:
            tensor = image_tensor(source)
        except (ImageError, OSError, ValueError) as e:
            bad[i] = str(e) if str(e) else type(e).__name__
            tensor = None
        pixels.append(tensor if keep else None)
    return pixels, bad


class RobustImages(Dataset):
    """Wraps a dataset of Examples; an image that fails to load is replaced by the next example.

    Replacement keeps every batch full, so all processes run the same number of steps; the
    failure is reported in the batch (`bad_images`) to be counted by the training loop.
    `augment` maps a dataset name (Example.source) to the augmentations its images get; every
    question about one image gets the same draw within an epoch, so the image is still encoded once
    per batch (`unique_images`).
    """

    def __init__(self, dataset: Dataset, image_tensor: Callable[[Any], torch.Tensor], max_tries: int = 16,
                 augment: dict[str, list[str]] | None = None, seed: int = 0) -> None:
        self.dataset = dataset
        self.image_tensor = image_tensor
        self.max_tries = max_tries
        self.augment = {name: ops for name, ops in (augment or {}).items() if ops}
        self.seed = seed
        # images numbered in data order: the same on every process, unlike id() of a cached tensor
        self._image_numbers: dict[Any, int] = {}
        for name, examples in zip(getattr(dataset, "names", []), getattr(dataset, "datasets", [])):
            if name in self.augment:
                for example in examples:
                    for image in each_image(example.image):
                        self._image_numbers.setdefault(image_key(image), len(self._image_numbers))

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the underlying mixture."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> tuple[Example, list[str]]:
        from mmgpt.images import ImageError

        failures = []
        for offset in range(self.max_tries):
            example = self.dataset[(index + offset) % len(self.dataset)]
            try:
                pixels = [self.image_tensor(image) for image in each_image(example.image)]
            except (ImageError, OSError, ValueError) as e:
                failures.append(str(e))
                continue
            if example.source in self.augment:
                epoch = getattr(self.dataset, "epoch", 0)
                for k, image in enumerate(each_image(example.image)):
                    number = self._image_numbers.get(image_key(image))
                    key = f"image {number}" if number is not None else f"position {index}" + (f" {k}" if k else "")
                    pixels[k] = augment(pixels[k], self.augment[example.source], self.seed, epoch, key)
            several = isinstance(example.image, (list, tuple))
            return replace(example, image=pixels if several else pixels[0]), failures
        raise RuntimeError(f"{self.max_tries} consecutive images failed to load near index {index}: {failures[-1]}")


def make_collate(processor: Any) -> Callable[[list[tuple[Example, list[str]]]], dict[str, Any]]:
    """Collate (Example, failures) pairs into a model batch plus the count of failed images."""

    def collate(items: list[tuple[Example, list[str]]]) -> dict[str, Any]:
        batch = processor.collate([example for example, _ in items])
        batch["bad_images"] = torch.tensor(sum(len(f) for _, f in items))
        batch["images_read"] = torch.tensor(len(items) + int(batch["bad_images"]))
        return batch

    return collate


class GroupedBatches(torch.utils.data.Sampler):
    """Batches of mixture positions, in a seeded random order per epoch: each from one dataset, or (`mixed`) each
    drawn from all of them in the mixture's proportions.

    One dataset per batch means every optimizer step learns one task: in a mixture of VQA and captions, the
    image encoder then learns whichever attribute the first task to be learnt needs and stops serving the others
    (bench/RESULTS.md, "One attribute at a time"). Mixed batches avoid that; the model keeps their cost close
    to one-dataset batches by splitting each batch by answer length (`MMGPT.forward`'s `split_lengths`).
    With `questions_per_image` k > 1, up to k draws that share an image are placed next to each other, so a
    batch holds fewer distinct images and the model encodes each once (`unique_images`). Deterministic for
    (seed, epoch), identical on every process.
    """

    def __init__(self, mixture: Any, batch_size: int, seed: int = 0, questions_per_image: int = 1,
                 mixed: bool = False) -> None:
        if questions_per_image < 1:
            raise ValueError(f"data.questions_per_image must be >= 1, got {questions_per_image}")
        self.mixture = mixture
        self.batch_size = batch_size
        self.seed = seed
        self.questions_per_image = questions_per_image
        self.mixed = mixed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of `epoch` (the mixture's order changes with it)."""
        self.epoch = epoch
        self.mixture.set_epoch(epoch)

    def _by_image(self, positions: list[int], generator: torch.Generator) -> list[int]:
        """Positions regrouped into runs of up to k that share an image, the runs in random order."""
        which, index = self.mixture.order()
        open_runs: dict[Any, list[int]] = {}
        runs = []
        for position in positions:
            dataset = int(which[position])
            key = (dataset, image_key(self.mixture.datasets[dataset][int(index[position])].image))
            run = open_runs.setdefault(key, [])
            run.append(position)
            if len(run) == self.questions_per_image:
                runs.append(open_runs.pop(key))
        runs += list(open_runs.values())
        return [p for i in torch.randperm(len(runs), generator=generator).tolist() for p in runs[i]]

    def _batches(self) -> list[list[int]]:
        which, _ = self.mixture.order()
        generator = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
        # the mixture's positions are already in a random order of its datasets
        groups = [list(range(len(which)))] if self.mixed else [
            (which == d).nonzero().flatten().tolist() for d in range(len(self.mixture.datasets))]
        batches = []
        for positions in groups:
            if self.questions_per_image > 1:
                positions = self._by_image(positions, generator)
            # the last partial batch of each group is dropped, as drop_last would
            batches += [positions[i : i + self.batch_size] for i in range(0, len(positions) - self.batch_size + 1,
                                                                          self.batch_size)]
        if self.mixed:
            return batches
        order = torch.randperm(len(batches), generator=generator)
        return [batches[i] for i in order.tolist()]

    def __iter__(self):
        self.mixture.set_epoch(self.epoch)
        return iter(self._batches())

    def __len__(self) -> int:
        if self.mixed:
            return sum(self.mixture.counts) // self.batch_size
        return sum(count // self.batch_size for count in self.mixture.counts)
