"""Each `mmgpt <command> --help` shows that command's own usage line, and its argument errors name it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmgpt import cli


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_shows_the_commands_usage(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: mmgpt {command} ")


def test_the_command_list_is_aligned_and_complete(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--help"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert [row.split()[0] for row in rows] == list(cli.COMMANDS)
    # every summary starts in one column, the longest name's ("compare-fusions") included
    assert all(len(row.split(maxsplit=1)) == 2 for row in rows)
    assert len({len(row) - len(row.split(maxsplit=1)[1]) for row in rows}) == 1


def test_argument_errors_name_the_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["validate"])
    assert "mmgpt validate: error: the following arguments are required: --format" in capsys.readouterr().err


@pytest.mark.slow
def test_installed_command_help() -> None:
    script = shutil.which("mmgpt", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the mmgpt console script is not installed next to this Python")
    out = subprocess.run([script, "train", "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.startswith("usage: mmgpt train ")


def test_every_command_and_script_main_returns_its_exit_status() -> None:
    import importlib
    import inspect

    mains = [importlib.import_module(c.run).main if isinstance(c.run, str) else c.run for c in cli.COMMANDS.values()]
    for script in ("train", "eval_vqa", "eval_caption"):
        mains.append(importlib.import_module(script).main)
    assert all(inspect.signature(main).return_annotation in (int, "int") for main in mains)
