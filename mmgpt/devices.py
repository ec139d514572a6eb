"""CPU processes and threads: what accelerate leaves for each entry point to set."""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


def cpu_processes() -> bool:
    """True when launched as several processes on a machine without a GPU.

    accelerate sets up CPU DDP (gloo) only when told cpu=True; without it each process would
    silently run alone.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def warn_if_one_process_launched(num_processes: int, script: str) -> bool:
    """Warn (and return True) when `accelerate launch --num_processes N` started this script as one process.

    Without a GPU, accelerate's launcher runs one plain process for `--cpu` or a bare `--num_processes N`
    and says nothing; its tell is the rendezvous address it exports without a WORLD_SIZE.
    """
    if num_processes == 1 and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        logger.warning("`accelerate launch --num_processes N` without a GPU starts one process (accelerate's CPU "
                       "launcher); for N CPU processes use `accelerate launch --multi_gpu --num_processes N %s` "
                       "(CPU DDP when there is no GPU)", script)
        return True
    return False


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
