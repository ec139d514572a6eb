"""Logging is configured in one place (mmgpt.logging_setup), and `mmgpt train` shows training's INFO lines."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_train import make_jsonl, tiny_config
from tiny import one_thread  # noqa: F401  (autouse fixture)

import mmgpt.inference as inference
from mmgpt.cli import main as cli
from mmgpt.logging_setup import configure_logging


@contextlib.contextmanager
def fresh_root() -> Iterator[None]:
    """A root logger without handlers, as in a new process (pytest's own handlers would hide the bug).

    A context manager, not a fixture: pytest adds its capture handlers after fixtures are set up.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers[:] = []
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_later_call_changes_the_level_and_adds_no_second_handler() -> None:
    with fresh_root():
        configure_logging(logging.WARNING)
        configure_logging(logging.INFO)
        root = logging.getLogger()
        assert root.level == logging.INFO and len(root.handlers) == 1
        assert logging.getLogger("mmgpt.train").isEnabledFor(logging.INFO)


def test_mmgpt_train_shows_its_info_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference, "_POINTER", tmp_path / "default_model.txt")
    data = make_jsonl(tmp_path / "data")
    out = tmp_path / "run"
    with fresh_root():
        assert cli(["train", "--config", str(tiny_config(tmp_path, data, out, max_steps=2))]) == 0
    err = capsys.readouterr().err
    assert f"INFO mmgpt.train: model saved to {out / 'model'}" in err, err[-2000:]
    assert "final eval:" in err
