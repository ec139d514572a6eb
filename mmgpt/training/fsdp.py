"""FSDP (accelerate's FSDP2, `fully_shard`): what training adds to accelerate's support of it.

`accelerate launch --config_file configs/accelerate/fsdp.yaml train.py` shards parameters, gradients and
optimizer state across the processes. Evaluation and the saved model need the full weights: `full_copy`
gathers them (the average's, with optim.ema_decay) into a plain copy of the model made before sharding, on
every rank, so evaluation splits its examples across ranks as under DDP and the saved model folder is the
usual one. Settings training cannot run under are refused at start, naming the setting.
"""
from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.state import PartialState
from accelerate.utils import DistributedType, broadcast, parse_flag_from_env
from accelerate.utils.constants import FSDP_MODEL_NAME
from torch import nn

from mmgpt.config import ConfigError

logger = logging.getLogger(__name__)


def setup_fsdp(accelerator: Accelerator) -> bool:
    """FSDP's part of starting a run: CPU processes switched to it, settings checked; True when the run is FSDP."""
    if use_fsdp_on_cpu(accelerator):
        logger.info("FSDP on CPU processes (gloo)")
    if accelerator.distributed_type != DistributedType.FSDP:
        return False
    check_fsdp_settings(accelerator)
    # MMGPTOutput.logits is a slice of the generator's logits, which training never changes in place (what
    # FSDP warns about on every step)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPMMGPT\) returned a view tensor")
    return True


def use_fsdp_on_cpu(accelerator: Accelerator) -> bool:
    """Turn CPU processes into FSDP ones when the accelerate config asks for FSDP; True when it did.

    accelerate sets FSDP up only on GPUs and other accelerators: on CPU processes a config with
    `distributed_type: FSDP` silently gives DDP over gloo. fully_shard itself runs on CPU (gloo), so the run
    gets what its config asked for, and FSDP is tested on machines without a GPU.
    """
    if accelerator.distributed_type != DistributedType.MULTI_CPU or not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return False
    # the plugin reads the launcher's FSDP_* variables, as the Accelerator does on a GPU
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def check_fsdp_settings(accelerator: Accelerator) -> None:
    """Refuse the accelerate FSDP settings that training does not support, naming the setting and the fix."""
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        # FSDP1 wraps the model in flat parameters: frozen parts, tied embeddings and the parameter names the
        # optimizer groups, the weight average and the saved model rely on all change under it
        raise ConfigError(f"accelerate config: fsdp_version {plugin.fsdp_version} (FSDP1) is not supported for "
                          "training; set fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
    if plugin.activation_checkpointing:
        raise ConfigError("accelerate config: fsdp_activation_checkpointing is not supported for training (it "
                          "renames the wrapped layers); set it to false and use gradient_checkpointing=true")


def check_checkpoint(accelerator: Accelerator, folder: Path) -> None:
    """Refuse to resume a checkpoint whose layout this run cannot load: written with(out) FSDP, or in the other layout.

    Under FSDP accelerate writes the model and optimizer as torch.distributed.checkpoint folders
    (SHARDED_STATE_DICT) or as whole files (FULL_STATE_DICT); without it, model.safetensors and a plain optimizer.
    """
    written = ("SHARDED_STATE_DICT" if (folder / f"{FSDP_MODEL_NAME}_0").is_dir()
               else "FULL_STATE_DICT" if (folder / f"{FSDP_MODEL_NAME}.bin").is_file() else None)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if written is None and fsdp:
        raise ConfigError(f"--resume {folder}: written without FSDP, so this FSDP run cannot load it; resume it "
                          "without --config_file configs/accelerate/fsdp.yaml")
    if written is not None and not fsdp:
        raise ConfigError(f"--resume {folder}: written under FSDP (fsdp_state_dict_type {written}); resume it "
                          "with accelerate launch --config_file configs/accelerate/fsdp.yaml")
    if fsdp and written != accelerator.state.fsdp_plugin.state_dict_type.name:
        raise ConfigError(f"--resume {folder}: written with fsdp_state_dict_type {written}, and this run has "
                          f"{accelerator.state.fsdp_plugin.state_dict_type.name}; resume it with "
                          f"--fsdp_state_dict_type {written}")


def describe_units(model: nn.Module) -> str:
    """The FSDP units of a prepared model, e.g. 'MMGPT, LlamaDecoderLayer x2' (each gathers its weights at once)."""
    from torch.distributed.fsdp import FSDPModule

    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # fully_shard makes the class FSDP<name>
            name = type(module).__name__.removeprefix("FSDP")
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in counts.items())


def is_sharded(model: nn.Module) -> bool:
    """True when `model`'s parameters are FSDP2 shards (DTensors) rather than whole tensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def named_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter (a tied one once) and buffer, in the order AveragedModel averages them."""
    return list(model.named_parameters()) + list(model.named_buffers())


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank the main process's buffers (batch-norm statistics), which FSDP leaves to each rank.

    DDP copies them from the main process before every forward pass, so its statistics are the ones a run
    keeps; a checkpoint holds one copy, written by any rank, so all ranks must agree before it is saved.
    """
    for buffer in model.buffers():
        broadcast(buffer, from_process=0)


def full_tensors(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Whole tensors on every rank: shards are all-gathered, buffers (kept per rank) come from the main process."""
    from torch.distributed.tensor import DTensor

    return [t.full_tensor() if isinstance(t, DTensor) else broadcast(t.detach().clone(), from_process=0)
            for t in tensors]


@torch.no_grad()
def full_copy(template: nn.Module, tensors: list[tuple[str, torch.Tensor]], device: torch.device) -> nn.Module:
    """A copy of `template` on `device` holding `tensors` (named as the model's, sharded or whole); every rank calls it.

    The template is the model before sharding: it brings the structure, tied weights and non-persistent
    buffers (rotary frequencies), so only the trained values are gathered.
    """
    model = copy.deepcopy(template).to(device)
    targets = dict(named_tensors(model))
    names = [name for name, _ in tensors]
    differ = set(names) ^ set(targets)
    if differ:
        raise ValueError(f"the sharded model and its template differ in {sorted(differ)[:3]}")
    for name, value in zip(names, full_tensors(t for _, t in tensors)):
        targets[name].copy_(value)
    return model
