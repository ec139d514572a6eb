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


def test_a_checkpoint_of_a_tied_model_saves_cleanly_and_resumes_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from accelerate import Accelerator

    from mmgpt.training.checkpoint import save_checkpoint, tied_aliases

    accelerator = Accelerator()
    model = build(tiny_config())
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))
    assert tied_aliases(model) == {"generator.lm_head.weight"}, "the tiny generator ties its lm_head"
    model(**_batch(model)).loss.backward()
    optimizer.step()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("WARNING"):
        path = save_checkpoint(accelerator, tmp_path, 1, {"step": 1, "run_id": "r"}, keep=2)
    assert "Removed shared tensor" not in caplog.text
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    accelerator.load_state(str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    generator = model.generator
    assert generator.lm_head.weight is generator.get_input_embeddings().weight, "still tied after loading"


def _batch(model: torch.nn.Module) -> dict:
    from mmgpt.data.example import Example

    examples = [Example(image=torch.zeros(3, 32, 32).numpy().transpose(1, 2, 0).astype("uint8"), prompt="what color?",
                        answer="red", task="vqa")] * 2
    return model.processor.collate(examples)


@pytest.mark.slow
def test_the_shipped_accelerate_config_silences_the_launcher_defaults_warning(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "hello.py"
    script.write_text("print('ran')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "LOCAL_RANK", "RANK", "WORLD_SIZE"))}
    env["HF_HOME"] = str(tmp_path / "hf")  # no `accelerate config` default file
    base = [sys.executable, "-m", "accelerate.commands.launch"]
    bare = subprocess.run([*base, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert "were not passed to `accelerate launch`" in bare.stderr + bare.stdout, "the warning this config avoids"
    shipped = subprocess.run([*base, "--config_file", str(root / "configs" / "accelerate" / "cpu.yaml"), str(script)],
                             env=env, capture_output=True, text=True, timeout=120)
    assert shipped.returncode == 0 and "ran" in shipped.stdout
    assert "were not passed" not in shipped.stderr + shipped.stdout, shipped.stderr
