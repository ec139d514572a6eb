"""An exponential moving average of the weights (optim.ema_decay > 0): what evaluation and the saved model use.

torch's AveragedModel keeps the copy; the decay warms up as min(ema_decay, (1 + n) / (10 + n)) after n
updates, so the average forgets the random initialisation within a few dozen steps instead of ~1/(1 - decay).
It is saved as ema.safetensors inside each checkpoint, so a resumed run continues the same average.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from torch.optim.swa_utils import AveragedModel

logger = logging.getLogger(__name__)

EMA_NAME = "ema.safetensors"


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
        # buffers too: batch-norm statistics of the averaged weights, not of the last step's
        self.averaged = AveragedModel(model, multi_avg_fn=_warmed_up_ema(decay), use_buffers=True)
        self.averaged.eval()
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (evaluate or save this)."""
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights."""
        self.averaged.update_parameters(model)

    def save(self, folder: Path) -> None:
        """Write the average (and its update count) into a checkpoint folder."""
        # save_model drops tied aliases (a tied lm_head) that a plain safetensors file cannot hold twice
        save_model(self.averaged, str(folder / EMA_NAME))

    def load(self, folder: Path) -> bool:
        """Restore the average saved in a checkpoint folder; False (average restarts from the model) if absent."""
        path = folder / EMA_NAME
        if not path.is_file():
            return False
        missing, unexpected = load_model(self.averaged, str(path), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: does not match the model (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
        return True
