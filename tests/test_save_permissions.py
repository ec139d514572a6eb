"""Saved models and checkpoints get a normal file's and folder's mode under the umask, not mkdtemp's 0700."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny import build, one_thread, tiny_config  # noqa: F401  (autouse fixture)

from mmgpt.saving import current_umask


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(folder: Path) -> dict[str, int]:
    """Every path under `folder` (itself included, as '.') -> its permission bits."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def _assert_normal(folder: Path) -> None:
    modes = _modes(folder)
    for name, mode in modes.items():
        expected = 0o755 if (folder / name).is_dir() else 0o644
        assert mode == expected, f"{name}: {oct(mode)}, expected {oct(expected)}"


def test_saved_model_files_and_folders_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    model = build(tiny_config())
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    _assert_normal(tmp_path / "model")
    model.save_pretrained(tmp_path / "model")  # a second save replaces the folder the same way
    _assert_normal(tmp_path / "model")


def test_a_stricter_umask_is_kept(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        assert current_umask() == 0o077
        build(tiny_config()).save_pretrained(tmp_path / "model")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "model" / "config.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o700


def test_checkpoint_files_and_folders_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    from accelerate import Accelerator

    from mmgpt.training.checkpoint import save_checkpoint

    accelerator = Accelerator()
    layer = torch.nn.Linear(3, 2)
    accelerator.prepare(layer, torch.optim.AdamW(layer.parameters()))
    path = save_checkpoint(accelerator, tmp_path, 1, {"step": 1, "run_id": "r"}, keep=2)
    _assert_normal(path)
