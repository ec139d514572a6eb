"""CPU processes and threads: what accelerate leaves for each entry point to set."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

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


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy clock ticks of every CPU, this process's ticks) from /proc, or None where they cannot be compared.

    None off Linux, and where /proc/stat counts more CPUs than this process may use (a container given a few
    of a host's cores sees the host's totals there).
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    if cpus != available_cores():
        return None
    # user, nice, system, irq, softirq: time a hypervisor steals (and idle, iowait) is no process's here
    ticks = [int(v) for v in lines[0].split()[1:8]]
    busy = sum(ticks[i] for i in (0, 1, 2, 5, 6) if i < len(ticks))
    return busy, int(mine[11]) + int(mine[12])  # utime + stime


def busy_cores_of_others(start: tuple[int, int] | None, seconds: float) -> float | None:
    """Cores other processes kept busy on average since `start` (a cpu_jiffies()); None when unknown."""
    end = cpu_jiffies()
    if start is None or end is None or seconds <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / hz / seconds)


def threads_beside(threads: int, others: float | None) -> int:
    """The training thread count for a machine where other processes keep `others` cores busy.

    OpenMP's threads wait for each other at every operation: when another process holds a core, the thread
    the scheduler parks stalls them all, and a 2-thread step beside one busy process took 2.9x its idle time
    against 1.5x for one thread (bench/cpu_threads.py). So a core that others keep busy is not counted.
    """
    if others is None or threads < 2:
        return threads
    return max(1, min(threads, available_cores() - round(others)))


def window_median(recent: list[float], seconds: float, window: int) -> float | None:
    """Add a step's `seconds` to `recent` (kept to the last `window`) -> their median once it is full, else None."""
    recent.append(seconds)
    del recent[:-window]
    return sorted(recent)[window // 2] if len(recent) == window else None


SLOWDOWN_ADVICE = ("cpu_threads=1 or follow_cpu_load=true train faster beside other busy processes; the thread "
                   "count changes how the CPU rounds, so the weights a seed gives change too")


class SlowdownNotice:
    """Warns once when a CPU run's steps take `slowdown` times its fastest: another process holds a core.

    For runs whose thread count stays fixed (the default, follow_cpu_load off). Their OpenMP threads wait on the
    busy core at every operation: a 2-thread run beside a 1-thread training run on 2 cores went from 1.97 to 0.1
    steps/s, and nothing said why.
    """

    def __init__(self, threads: int, window: int = 8, slowdown: float = 3.0) -> None:
        self.threads, self.window, self.slowdown = threads, window, slowdown
        self.recent: list[float] = []
        self.fastest: float | None = None  # median of the fastest window of steps
        self.warned = False

    def started_beside(self, others: float | None) -> None:
        """Warn now if other processes kept `others` cores busy during start-up (no fast steps to compare with)."""
        if threads_beside(self.threads, others) < self.threads and not self.warned:
            self.warned = True
            logger.warning(
                "other processes kept %.1f cores busy during start-up, and the %d CPU threads wait for them at "
                "every operation. %s", others, self.threads, SLOWDOWN_ADVICE)

    def step_done(self, seconds: float) -> None:
        """Record a step's wall time; warns the first time a window of steps is `slowdown` times the fastest."""
        median = window_median(self.recent, seconds, self.window)
        if median is None:
            return
        if self.fastest is None or median < self.fastest:
            self.fastest = median
        elif median > self.slowdown * self.fastest and not self.warned:
            self.warned = True
            logger.warning(
                "training steps take %.1fx this run's fastest: another process is using the cores, and the %d "
                "CPU threads wait for it at every operation. %s", median / self.fastest, self.threads, SLOWDOWN_ADVICE)


class ThreadWatch:
    """Moves a CPU training run to one thread when another process starts competing for its cores, and back.

    A step that suddenly takes `slowdown` times the fastest steps seen with all threads means a neighbour came
    (a 2-thread step beside one busy process on 2 cores took 2.9x its idle time, one thread 1.5x); while on
    one thread it tries all threads again every `every` steps (doubling while they keep losing). A run that
    meets no neighbour never changes its count, so it rounds the same every time.
    """

    def __init__(self, threads: int, full: int, window: int = 8, slowdown: float = 1.8, every: int = 200):
        self.current, self.full = threads, full
        self.window, self.slowdown, self.base_every = window, slowdown, every
        self.every, self.since = every, 0
        self.recent: list[float] = []
        self.fastest: float | None = None  # median of the fastest window with all threads
        self.one_thread: float | None = None  # one thread's median before a try of all threads, when trying

    def step_done(self, seconds: float) -> int | None:
        """Record a step's wall time -> the thread count to change to now, or None to keep the current one."""
        median = window_median(self.recent, seconds, self.window)
        if median is None:
            return None
        if self.current == self.full and self.one_thread is None:
            if self.fastest is not None and median > self.slowdown * self.fastest:
                return self._change(1, f"a step takes {median / self.fastest:.1f}x the fastest with "
                                       f"{self.full} threads: another process competes for the cores")
            self.fastest = min(self.fastest or median, median)
            return None
        if self.one_thread is not None:  # the try of all threads is done
            one, self.one_thread = self.one_thread, None
            if median < 0.8 * one:
                self.every = self.base_every
                self.fastest = min(self.fastest or median, median)
                # the try ran on all threads: the change is from the one thread the run was on
                logger.info("CPU threads 1 -> %d: faster again (%.2fx)", self.full, median / one)
                self.since = 0
                return self.full
            self.every = min(2 * self.every, 8 * self.base_every)
            return self._change(1, None)
        self.since += 1
        if self.since >= self.every:
            self.one_thread = median
            return self._change(self.full, None)
        return None

    def _change(self, threads: int, why: str | None) -> int:
        if why:
            logger.info("CPU threads %d -> %d: %s", self.current, threads, why)
        self.current, self.since, self.recent = threads, 0, []
        return threads


def model_device(model: Any) -> torch.device:
    """Where a model's inputs go: an MMGPT's parameters' device, or an export's own (mmgpt.exported_model)."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device
