"""Guards against NaN and infinity.

A diverged step stops the run (or is skipped), non-finite weights are never saved.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from mmgpt.training.checkpoint import TrainState, checkpoint_dirs

logger = logging.getLogger("mmgpt.train")


class NonFiniteTraining(FloatingPointError):
    """The loss, the gradients or the weights became NaN or infinite; the message names the step."""


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers that hold a NaN or an infinity."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _last_good(output_dir: Path, none: str) -> str:
    checkpoints = checkpoint_dirs(output_dir)
    return f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else none


def step_is_finite(accelerator: Accelerator, loss: torch.Tensor, grad_norm: torch.Tensor | None,
                   mixed_precision: str) -> bool:
    """True on every rank when no rank saw a NaN/inf loss or gradient norm in this step."""
    bad = (~torch.isfinite(loss)).float()
    # under fp16 an infinite gradient is the loss scaler's business: it skips that update and lowers its scale
    if grad_norm is not None and mixed_precision != "fp16":
        bad = bad + (~torch.isfinite(torch.as_tensor(grad_norm, device=loss.device))).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return not bool(bad > 0)


def skip_or_stop(skip: bool, state: TrainState, output_dir: Path, loss: torch.Tensor,
                 grad_norm: torch.Tensor | None) -> None:
    """Count and skip a step with a NaN/inf loss or gradient (skip_nonfinite_steps), or stop the run naming it."""
    step = state.step + 1
    norm = "unknown" if grad_norm is None else f"{float(grad_norm):.4g}"
    if skip:
        state.nonfinite_steps += 1
        logger.warning("step %d: loss %.4g, gradient norm %s: update skipped (skip_nonfinite_steps)",
                       step, float(loss), norm)
        return
    kept = _last_good(output_dir, "no checkpoint was written yet")
    # a checkpoint restores the optimizer's learning rates, so a lower optim.lr only helps a fresh start
    raise NonFiniteTraining(
        f"step {step}: the loss is {float(loss):.4g} and the gradient norm {norm}, so training diverged; nothing "
        f"of this step was applied or saved, and {kept}. Start over (--overwrite) with a lower optim.lr or "
        "optim.lr_multipliers and optim.grad_clip > 0, or skip such steps with skip_nonfinite_steps=true "
        "(with --resume latest to continue from that checkpoint)"
    )


def check_weights(model: nn.Module, step: int, output_dir: Path) -> None:
    """Refuse to save weights that hold NaN/inf (the last good checkpoint stays the newest)."""
    bad = nonfinite_parameters(model)
    if bad:
        kept = _last_good(output_dir, "no checkpoint was written")
        raise NonFiniteTraining(
            f"step {step}: {len(bad)} weight tensor(s) hold NaN or inf ({', '.join(bad[:3])}), so they were not "
            f"saved; {kept}. Start over (--overwrite) with a lower optim.lr or optim.lr_multipliers"
        )
