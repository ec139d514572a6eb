"""What an entry point does before its heavy imports, so a command reaches its work sooner."""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def imports_without_gc() -> Iterator[None]:
    """Import inside this block with the garbage collector off; what was imported is then frozen out of its passes.

    torch, transformers and timm make ~0.8M objects that live as long as the process; the collector's passes over
    them while they are imported find nothing and cost about 1 CPU second of every start (bench/startup_phases.py).
    Leaves the collector alone when the caller already turned it off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
