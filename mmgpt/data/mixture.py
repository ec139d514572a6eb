"""Weighted mixture of datasets with a deterministic, resumable per-epoch order.

Each epoch the number of draws per dataset is fixed by weight (largest-remainder apportionment of
`num_samples`, so weights are met exactly rather than only in expectation), each dataset is walked in
fresh random permutations (cycled when it must give more than one pass), and the draws of all datasets
are interleaved by a random permutation. All randomness comes from one CPU
``torch.Generator().manual_seed(seed + epoch)``, so every process (rank, DataLoader worker, resumed run)
computes the same order for the same (seed, epoch). With weights proportional to dataset sizes and
``num_samples`` equal to the total size, an epoch is exactly one pass over every example.

The order lives in the Dataset object: call `set_epoch` before building each epoch's DataLoader
iterator (with ``persistent_workers=True`` the workers would keep a stale copy).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from mmgpt.data.example import Example

logger = logging.getLogger(__name__)


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integer shares proportional to `weights` (largest remainder, ties to earlier entries)."""
    wsum = float(sum(weights))
    if total < 0 or wsum <= 0:
        raise ValueError(f"cannot apportion {total} over weights {list(weights)}")
    quotas = [total * w / wsum for w in weights]
    shares = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


class Mixture(Dataset):
    """Map-style dataset drawing from several Example lists in proportion to their weights."""

    def __init__(self, datasets: Sequence[tuple[str, Sequence[Example], float]], num_samples: int | None = None,
                 seed: int = 0) -> None:
        self.names: list[str] = []
        self.datasets: list[Sequence[Example]] = []
        self.weights: list[float] = []
        for name, examples, weight in datasets:
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"mixture dataset {name!r}: weight must be a finite number >= 0, got {weight!r}")
            if weight == 0:
                logger.info("mixture: dataset %r has weight 0 and is excluded", name)
                continue
            if len(examples) == 0:
                raise ValueError(f"mixture dataset {name!r} has weight {weight} but no examples")
            self.names.append(name)
            self.datasets.append(examples)
            self.weights.append(float(weight))
        if not self.datasets:
            raise ValueError("mixture has no dataset with weight > 0 and examples")
        self.num_samples = sum(len(d) for d in self.datasets) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"mixture num_samples must be > 0, got {num_samples!r}")
        self.seed = int(seed)
        self.counts = apportion(self.num_samples, self.weights)
        self.epoch = 0
        self._order: tuple[torch.Tensor, torch.Tensor] | None = None
        for name, data, count in zip(self.names, self.datasets, self.counts):
            logger.info("mixture: %s gives %d of %d draws per epoch (%.2f passes over %d examples)",
                        name, count, self.num_samples, count / len(data), len(data))

    def set_epoch(self, epoch: int) -> None:
        """Select the order of `epoch`; cheap to call repeatedly with the same value."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._order = None

    def order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dataset index, example index) of every position of the current epoch."""
        if self._order is None:
            self._order = self._build_order(self.epoch)
        return self._order

    def _build_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic order for `epoch`; see the module docstring."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        streams = []
        for data, count in zip(self.datasets, self.counts):
            passes = -(-count // len(data))
            perms = [torch.randperm(len(data), generator=g) for _ in range(passes)]
            streams.append(torch.cat(perms)[:count] if perms else torch.empty(0, dtype=torch.long))
        which = torch.cat([torch.full((c,), d, dtype=torch.long) for d, c in enumerate(self.counts)])
        which = which[torch.randperm(self.num_samples, generator=g)]
        index = torch.empty(self.num_samples, dtype=torch.long)
        for d, stream in enumerate(streams):
            # positions are in increasing order, so each dataset's stream is consumed front to back
            index[which == d] = stream
        return which, index

    def locate(self, i: int) -> tuple[str, int]:
        """(dataset name, example index) that position `i` of the current epoch maps to."""
        which, index = self.order()
        return self.names[int(which[i])], int(index[i])

    def __len__(self) -> int:
        """Draws per epoch."""
        return self.num_samples

    def __getitem__(self, i: int) -> Example:
        """The example at position `i` of the current epoch."""
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"mixture index {i} out of range for {self.num_samples} samples")
        which, index = self.order()
        return self.datasets[int(which[i])][int(index[i])]

