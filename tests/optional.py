"""Tests of optional parts: skipped with the reason where a developer's environment lacks the part, failed under CI.

CI (the `CI` environment variable, set by .ci/run and by hosted CI services) installs every part, so a part missing
there is a broken install, not a reason to skip. The README's test command installs them all too (`.[test]`).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def missing(reason: str) -> None:
    """Skip the calling test (or module) saying `reason`; under CI, fail with it instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (a failure under CI, which installs every part)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def needs_module(name: str, install: str) -> ModuleType:
    """The module `name`, or a skip/failure saying `install` brings it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"needs {name}: {install}")
        raise  # not reached: missing() raises
