"""Training batches from a mixture with at least one streamed dataset: no pass over the data before step one.

`StreamingMixture` plans this process's batches forever: each a `PlannedBatch` of undecoded Examples (image
bytes or paths). Each batch comes from one dataset, chosen so that in every block of `BLOCK` batches each
dataset gives its weight's share (largest remainder, mmgpt.data.mixture's `apportion`), in an order drawn from
(seed, block): the same choice on every process, so the weights hold across datasets of both kinds. A streamed
dataset (mmgpt.data.hf.HFStream) is read by each process from its own shard (`split_dataset_by_node`) and
restarts with the next pass when its shard ends; a sequence of Examples is walked in a fresh seeded permutation
per pass, each process taking every world_size-th position. As no dataset ever runs out, every process runs the
same number of steps.

The plan is made where the DataLoader iterates its sampler (the main process: reading rows is cheap);
`BatchImages` decodes, transforms and augments a planned batch where the DataLoader fetches (its workers), so
any number of workers gives the same batches in the same order. An image that fails to load is counted and
replaced by the next good image of its batch, which keeps the batch full and the plan independent of decoding.
Each batch carries the mixture's `state_dict` after it, so a checkpoint records exactly where every dataset
stands; a resumed run continues from there (approximate only within a streamed dataset's shuffle buffer, see
HFStream). Resuming needs the same number of processes.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import Dataset

from mmgpt.data.augment import augment
from mmgpt.data.example import Example
from mmgpt.data.hf import is_stream
from mmgpt.data.mixture import apportion

logger = logging.getLogger(__name__)

BLOCK = 100


@dataclass
class PlannedBatch:
    """One batch before its images are read: global batch number, dataset, examples, mixture state after it."""

    number: int
    dataset: str
    examples: list[Example]
    state: dict[str, Any]


class StreamingMixture:
    """This process's `PlannedBatch`es, endless: iterate it where the DataLoader iterates its sampler."""

    def __init__(self, datasets: Sequence[tuple[str, Any, float]], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        kept = [(name, data, float(weight)) for name, data, weight in datasets if weight > 0]
        if not kept:
            raise ValueError("mixture has no dataset with weight > 0")
        self.names = [name for name, _, _ in kept]
        self.sources = [data for _, data, _ in kept]
        self.counts = apportion(BLOCK, [weight for _, _, weight in kept])
        # dataset number per slot of a block, before the block's shuffle
        self._block = torch.cat([torch.full((c,), d) for d, c in enumerate(self.counts)])
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        for source in self.sources:
            if is_stream(source):
                source.shard(rank, world_size)
        self._state: dict[str, Any] = {"batches": 0, "sources": [self._fresh(s) for s in self.sources]}

    @staticmethod
    def _fresh(source: Any) -> dict[str, Any]:
        return source.state_dict() if is_stream(source) else {"epoch": 0, "position": 0}

    def state_dict(self) -> dict[str, Any]:
        """Batches given and where each dataset stands (JSON-serialisable)."""
        return {"batches": self._state["batches"], "world_size": self.world_size,
                "sources": [dict(s) for s in self._state["sources"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict` written by a run with as many processes."""
        if state.get("world_size", 1) != self.world_size or len(state["sources"]) != len(self.sources):
            raise ValueError(f"the checkpoint's data position is for {state.get('world_size', 1)} process(es) and "
                             f"{len(state['sources'])} dataset(s); resume with the same processes and datasets")
        self._state = {"batches": state["batches"], "sources": [dict(s) for s in state["sources"]]}
        for source, saved in zip(self.sources, self._state["sources"]):
            if is_stream(source):
                source.load_state_dict(saved)

    def dataset_of_batch(self, batch: int) -> int:
        """Which dataset gives global batch number `batch` (the same on every process)."""
        order = torch.randperm(BLOCK, generator=torch.Generator().manual_seed(self.seed + batch // BLOCK))
        return int(self._block[order[batch % BLOCK]])

    def _examples(self, d: int) -> Iterator[Example]:
        """Dataset d's examples for this process from its saved position on, forever (`_position` says where)."""
        source = self.sources[d]
        if is_stream(source):
            while True:
                fresh, empty = source.state_dict()["row_state"] is None, True
                for example in source:
                    empty = False
                    yield example
                if empty and fresh:  # a pass resumed at its very end is empty too
                    raise ValueError(f"dataset {self.names[d]!r} gives no examples to process {self.rank} of "
                                     f"{self.world_size}")
        state = self._list_positions[d] = dict(self._state["sources"][d])
        while True:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * d + state["epoch"])
            mine = torch.randperm(len(source), generator=generator)[self.rank::self.world_size].tolist()
            if not mine:
                raise ValueError(f"dataset {self.names[d]!r} has fewer examples than processes")
            for position in range(state["position"], len(mine)):
                state = self._list_positions[d] = {"epoch": state["epoch"], "position": position + 1}
                yield source[mine[position]]
            state = {"epoch": state["epoch"] + 1, "position": 0}

    def _position(self, d: int) -> dict[str, Any]:
        """Where dataset d stands after the last example `_examples` gave (asked once a batch: a stream's costs)."""
        source = self.sources[d]
        return source.state_dict() if is_stream(source) else dict(self._list_positions[d])

    def __iter__(self) -> Iterator[PlannedBatch]:
        self._list_positions: dict[int, dict[str, Any]] = {}
        streams = [self._examples(d) for d in range(len(self.sources))]
        for batch in itertools.count(self._state["batches"]):
            d = self.dataset_of_batch(batch)
            examples = []
            for _ in range(self.batch_size):
                example = next(streams[d])
                examples.append(example if example.source else replace(example, source=self.names[d]))
            self._state["sources"][d] = self._position(d)
            self._state["batches"] = batch + 1
            yield PlannedBatch(batch, self.names[d], examples, self.state_dict())


class BatchImages(Dataset):
    """Reads the images of a `PlannedBatch` -> ((Example with pixels, failures) pairs, mixture state).

    Indexed by PlannedBatch (DataLoader(BatchImages(...), sampler=StreamingMixture(...), batch_size=None)), so
    the DataLoader's workers do the decoding. A failed image is replaced by the next good one of the batch,
    whose pair carries the failure; a batch with no good image is an error.
    """

    def __init__(self, image_tensor: Callable[[Any], torch.Tensor], seed: int = 0,
                 augment: dict[str, list[str]] | None = None) -> None:
        self.image_tensor, self.seed = image_tensor, seed
        self.augment = {name: ops for name, ops in (augment or {}).items() if ops}

    def _load(self, planned: PlannedBatch, position: int) -> torch.Tensor:
        pixels = self.image_tensor(planned.examples[position].image)
        if planned.dataset in self.augment:
            number = planned.number * len(planned.examples) + position
            pixels = augment(pixels, self.augment[planned.dataset], self.seed, 0, f"{planned.dataset} {number}")
        return pixels

    def __getitem__(self, planned: PlannedBatch) -> tuple[list[tuple[Example, list[str]]], dict[str, Any]]:
        from mmgpt.images import ImageError

        loaded: list[Example | None] = []
        failures: list[str] = []
        for position, example in enumerate(planned.examples):
            try:
                loaded.append(replace(example, image=self._load(planned, position)))
            except (ImageError, OSError, ValueError) as e:
                loaded.append(None)
                failures.append(str(e))
        good = [i for i, example in enumerate(loaded) if example is not None]
        if not good:
            raise RuntimeError(f"all {len(loaded)} images of a batch of {planned.dataset!r} failed to load: "
                               f"{failures[-1]}")
        items, failed = [], iter(failures)
        for i, example in enumerate(loaded):
            if example is None:
                # the next good image of the batch, wrapping round
                items.append((loaded[next((g for g in good if g > i), good[0])], [next(failed)]))
            else:
                items.append((example, []))
        return items, planned.state


def first_examples(dataset: Any, limit: int) -> list[Example]:
    """Up to `limit` examples from the start of a list, a lazy sequence or a stream (stored order: HFStream.head)."""
    if not is_stream(dataset):
        return list(dataset[:limit]) if limit else list(dataset)
    return dataset.head(limit)
