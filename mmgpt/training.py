"""Pieces of the training loop that are not the loop: optimizer, freezing, signals, NaN checks, plots.

Checkpoints and the run folder live in mmgpt/checkpoints.py.
"""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

COMPONENTS = ("text_encoder", "image_encoder", "fusion", "projector", "generator")


def cpu_processes() -> bool:
    """True when launched as several processes on a machine without a GPU.

    accelerate sets up CPU DDP (gloo) only when told cpu=True; without it each process would
    silently run alone.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_cpu_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads for CPU work; 0 = available cores / processes on this machine.

    `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, so a one-process CPU run
    would use one core of many; every CPU entry point calls this instead of trusting the variable.
    Returns the thread count set.
    """
    if threads <= 0:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, available_cores() // max(local, 1))
    torch.set_num_threads(threads)
    return threads


def component_of(name: str) -> str:
    """Which component a parameter name belongs to (its first dotted part)."""
    return name.split(".", 1)[0]


def apply_freezing(model: nn.Module) -> dict[str, bool]:
    """Freeze the components the model config marks frozen; return {component: frozen}."""
    cfg = model.config
    frozen = {
        "text_encoder": cfg.text_encoder.freeze,
        "image_encoder": cfg.image_encoder.freeze,
        "fusion": cfg.fusion.freeze,
        "projector": cfg.generator.freeze_projector,
        "generator": cfg.generator.freeze,
    }
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen[component_of(name)])
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("every component is frozen: nothing to train")
    return frozen


def set_train_mode(model: nn.Module, frozen: dict[str, bool]) -> None:
    """train() for trainable parts; frozen parts stay in eval() so their batch-norm statistics stay fixed."""
    model.train()
    for component, is_frozen in frozen.items():
        if is_frozen:
            getattr(model, component).eval()


def build_optimizer(model: nn.Module, optim_cfg: Any, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with a param group per (component, decay); no decay on biases, norms and embeddings."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and "embed" not in name and "wte" not in name and "wpe" not in name
        groups.setdefault((component_of(name), decay), []).append(param)
    param_groups = []
    for (component, decay), params in sorted(groups.items()):
        multiplier = float(optim_cfg.lr_multipliers.get(component, 1.0))
        param_groups.append(
            {
                "params": params,
                "lr": optim_cfg.lr * multiplier,
                "weight_decay": optim_cfg.weight_decay if decay else 0.0,
                "name": f"{component}{'' if decay else '.no_decay'}",
            }
        )
    kwargs = {"fused": fused} if fused is not None else {}
    return torch.optim.AdamW(param_groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any, total_steps: int) -> Any:
    """Linear warmup then cosine decay to lr * min_lr_ratio (the transformers schedule)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=min(optim_cfg.warmup_steps, max(total_steps - 1, 0)),
        num_training_steps=total_steps,
        min_lr_rate=optim_cfg.min_lr_ratio,
    )


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (then checkpoints and exits)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            # a second signal means "now"
            raise KeyboardInterrupt
        logger.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NonFiniteTraining(FloatingPointError):
    """The loss, the gradients or the weights became NaN or infinite; the message names the step."""


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers that hold a NaN or an infinity."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def plot_losses(history: dict[str, list], path: str | Path) -> bool:
    """Write the training (and eval) loss curves as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed: no loss-curve PNG (pip install 'mmgpt[plot]')")
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    if history.get("train"):
        steps, losses = zip(*history["train"])
        ax.plot(steps, losses, label="train loss")
    if history.get("eval"):
        steps, losses = zip(*history["eval"])
        ax.plot(steps, losses, "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / answer token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
