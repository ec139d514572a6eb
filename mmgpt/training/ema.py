"""An exponential moving average of the weights (optim.ema_decay > 0): what evaluation and the saved model use.

torch's AveragedModel keeps the copy; the decay warms up as min(ema_decay, (1 + n) / (10 + n)) after n
updates, so the average forgets the random initialisation within a few dozen steps instead of ~1/(1 - decay).
It is saved as ema.safetensors inside each checkpoint, so a resumed run continues the same average.

Under FSDP the model cannot be deep-copied, and a whole copy on every rank would undo the sharding: the
average is then kept as shards like the model's (the same update, on each rank's part), and gathered whole
to be saved (the same file) or evaluated (mmgpt.training.fsdp.full_copy).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from torch.optim.swa_utils import AveragedModel

from mmgpt.training.fsdp import full_tensors, is_sharded, named_tensors

logger = logging.getLogger(__name__)

EMA_NAME = "ema.safetensors"
# the file's names: AveragedModel's state dict (the model's, under `module.`, and the update count)
PREFIX, COUNT = "module.", "n_averaged"


def _warmed_up_ema(decay: float):
    """A multi_avg_fn for AveragedModel: EMA with the warm-up above (num_averaged = updates so far)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:
            # integer buffers (batch norm's num_batches_tracked) follow the model
            for avg, cur in zip(averaged, current):
                avg.copy_(cur)

    return update


class WeightEMA:
    """The averaged copy of a model, updated after every optimizer step and saved with each checkpoint."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in (0, 1) for an average, got {decay}")
        self.averaged: AveragedModel | None = None
        # a sharded model's average: (name, shard) as named_tensors(model), and the update count
        self.shards: list[tuple[str, torch.Tensor]] = []
        self.n_averaged = torch.zeros((), dtype=torch.long)
        self._average = _warmed_up_ema(decay)
        if is_sharded(model):
            self.shards = [(name, t.detach().clone()) for name, t in named_tensors(model)]
            # the other names of tied parameters, so a file written with either name loads
            self._aliases = _aliases(model)
            return
        # buffers too: batch-norm statistics of the averaged weights, not of the last step's
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.eval()
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module | None:
        """The averaged model (evaluate or save this); None when it is sharded (see named_tensors)."""
        return self.averaged.module if self.averaged is not None else None

    def named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The average as (name, tensor), named as the model's parameters and buffers (shards under FSDP)."""
        return named_tensors(self.averaged.module) if self.averaged is not None else self.shards

    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights."""
        if self.averaged is not None:
            self.averaged.update_parameters(model)
            return
        # what AveragedModel.update_parameters does, on this rank's shards
        with torch.no_grad():
            current = [t.detach() for _, t in named_tensors(model)]
            averaged = [t for _, t in self.shards]
            if int(self.n_averaged) == 0:
                for avg, cur in zip(averaged, current):
                    avg.copy_(cur)
            else:
                # one call per kind: the foreach kernels take shards (DTensors) or whole buffers, not both
                groups: dict[tuple[bool, type], list[tuple[torch.Tensor, torch.Tensor]]] = {}
                for avg, cur in zip(averaged, current):
                    groups.setdefault((avg.is_floating_point(), type(avg)), []).append((avg, cur))
                for pairs in groups.values():
                    self._average([avg for avg, _ in pairs], [cur for _, cur in pairs], self.n_averaged)
        self.n_averaged += 1

    def save(self, folder: Path, write: bool = True) -> None:
        """Write the average (and its update count) into a checkpoint folder; `write` False on the other ranks.

        Every rank calls it: a sharded average is gathered whole first.
        """
        if self.averaged is not None:
            if write:
                # save_model drops tied aliases (a tied lm_head) that a plain safetensors file cannot hold twice
                save_model(self.averaged, str(folder / EMA_NAME))
            return
        tensors = full_tensors(t for _, t in self.shards)
        if write:
            state = {PREFIX + name: t.contiguous().cpu() for (name, _), t in zip(self.shards, tensors)}
            save_file({**state, COUNT: self.n_averaged.clone()}, str(folder / EMA_NAME))

    def load(self, folder: Path) -> bool:
        """Restore the average saved in a checkpoint folder; False (average restarts from the model) if absent."""
        path = folder / EMA_NAME
        if not path.is_file():
            return False
        if self.averaged is not None:
            missing, unexpected = load_model(self.averaged, str(path), strict=False)
        else:
            missing, unexpected = self._load_shards(load_file(str(path)))
        if missing or unexpected:
            raise ValueError(f"{path}: does not match the model (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
        return True

    @torch.no_grad()
    def _load_shards(self, saved: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Copy each rank's part of the saved whole tensors into the shards -> (missing, unexpected) names."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        used, missing = {COUNT}, []
        for name, shard in self.shards:
            key = next((PREFIX + n for n in self._aliases.get(name, [name]) if PREFIX + n in saved), None)
            if key is None:
                missing.append(PREFIX + name)
                continue
            used.add(key)
            value = saved[key].to(shard.device)
            if isinstance(shard, DTensor):
                # every rank read the whole file: each keeps its own part, nothing is sent
                value = distribute_tensor(value, shard.device_mesh, shard.placements, src_data_rank=None)
            shard.copy_(value)
        if COUNT in saved:
            self.n_averaged.copy_(saved[COUNT])
        else:
            missing.append(COUNT)
        return missing, sorted(set(saved) - used)


def _aliases(model: nn.Module) -> dict[str, list[str]]:
    """{parameter name: every name of that parameter}, for the parameters with several (tied weights)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {group[0]: group for group in names.values() if len(group) > 1}
