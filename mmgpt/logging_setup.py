"""The one place that configures logging for mmgpt's command lines (mmgpt, train.py, the eval scripts)."""
from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr at `level`; a later call changes the level (logging.basicConfig would ignore it).

    The handler is added once, and only when the root logger has none, so an application that set up
    its own logging keeps it; the level is applied on every call, so `mmgpt train` can raise the CLI's
    WARNING to INFO for training.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
