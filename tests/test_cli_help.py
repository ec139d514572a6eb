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
