"""Training batches from a mixture with at least one streamed dataset: no pass over the data before step one.

`StreamingMixture` yields this process's batches forever. Each batch comes from one dataset, chosen so that in
every block of `BLOCK` batches each dataset gives its weight's share (largest remainder, mmgpt.data.mixture's
`apportion`), in an order drawn from (seed, block): the same choice on every process, so the weights hold across
datasets of both kinds. A streamed dataset (mmgpt.data.hf.HFStream) is read by each process from its own shard
(`split_dataset_by_node`) and restarts with the next pass when its shard ends; a sequence of Examples is walked
in a fresh seeded permutation per pass, each process taking every world_size-th position. As no dataset ever
runs out, every process runs the same number of steps.

Images are decoded as batches are formed; one that fails is skipped, counted, and replaced by the dataset's next
example (as `RobustImages` does). Each batch carries the mixture's `state_dict` after it, so a checkpoint records
exactly where every dataset stands; a resumed run continues from there (approximate only within a streamed
dataset's shuffle buffer, see HFStream). Resuming needs the same number of processes.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import IterableDataset

from mmgpt.data.augment import augment
from mmgpt.data.example import Example
from mmgpt.data.hf import is_stream
from mmgpt.data.mixture import apportion

logger = logging.getLogger(__name__)

BLOCK = 100


class StreamingMixture(IterableDataset):
    """This process's batches of (Example with pixels, failures) pairs, each with the mixture state after it."""

    def __init__(self, datasets: Sequence[tuple[str, Any, float]], batch_size: int,
                 image_tensor: Callable[[Any], torch.Tensor], seed: int = 0, rank: int = 0, world_size: int = 1,
                 augment: dict[str, list[str]] | None = None, max_tries: int = 16) -> None:
        kept = [(name, data, float(weight)) for name, data, weight in datasets if weight > 0]
        if not kept:
            raise ValueError("mixture has no dataset with weight > 0")
        self.names = [name for name, _, _ in kept]
        self.sources = [data for _, data, _ in kept]
        self.counts = apportion(BLOCK, [weight for _, _, weight in kept])
        # dataset number per slot of a block, before the block's shuffle
        self._block = torch.cat([torch.full((c,), d) for d, c in enumerate(self.counts)])
        self.batch_size, self.image_tensor, self.seed = batch_size, image_tensor, seed
        self.rank, self.world_size, self.max_tries = rank, world_size, max_tries
        self.augment = {name: ops for name, ops in (augment or {}).items() if ops}
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

    def _examples(self, d: int) -> Iterator[tuple[Example, dict]]:
        """Dataset d's examples for this process from its saved position on, forever, each with the state after it."""
        source = self.sources[d]
        if is_stream(source):
            while True:
                fresh, empty = source.state_dict()["row_state"] is None, True
                for example in source:
                    empty = False
                    yield example, source.state_dict()
                if empty and fresh:  # a pass resumed at its very end is empty too
                    raise ValueError(f"dataset {self.names[d]!r} gives no examples to process {self.rank} of "
                                     f"{self.world_size}")
        state = dict(self._state["sources"][d])
        while True:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * d + state["epoch"])
            mine = torch.randperm(len(source), generator=generator)[self.rank::self.world_size].tolist()
            if not mine:
                raise ValueError(f"dataset {self.names[d]!r} has fewer examples than processes")
            for position in range(state["position"], len(mine)):
                state = {"epoch": state["epoch"], "position": position + 1}
                yield source[mine[position]], state
            state = {"epoch": state["epoch"] + 1, "position": 0}

    def _load(self, d: int, example: Example, number: int) -> torch.Tensor:
        pixels = self.image_tensor(example.image)
        name = self.names[d]
        if name in self.augment:
            pixels = augment(pixels, self.augment[name], self.seed, 0, f"{name} {number}")
        return pixels

    def __iter__(self) -> Iterator[tuple[list[tuple[Example, list[str]]], dict[str, Any]]]:
        from mmgpt.images import ImageError

        streams = [self._examples(d) for d in range(len(self.sources))]
        for batch in itertools.count(self._state["batches"]):
            d = self.dataset_of_batch(batch)
            items = []
            while len(items) < self.batch_size:
                failures = []
                for _ in range(self.max_tries):
                    example, self._state["sources"][d] = next(streams[d])
                    try:
                        pixels = self._load(d, example, batch * self.batch_size + len(items))
                    except (ImageError, OSError, ValueError) as e:
                        failures.append(str(e))
                        continue
                    items.append((replace(example, image=pixels, source=example.source or self.names[d]), failures))
                    break
                else:
                    raise RuntimeError(f"{self.max_tries} consecutive images of {self.names[d]!r} failed to load: "
                                       f"{failures[-1]}")
            self._state["batches"] = batch + 1
            yield items, self.state_dict()


def first_examples(dataset: Any, limit: int) -> list[Example]:
    """Up to `limit` examples from the start of a list, a lazy sequence or a stream (a stream's position is kept)."""
    if not is_stream(dataset):
        return list(dataset[:limit]) if limit else list(dataset)
    saved = dataset.state_dict()
    examples = list(itertools.islice(iter(dataset), limit or None))
    dataset.load_state_dict(saved)
    return examples
