"""Every numeric config value is checked when the config is built: finite, in range, errors naming the key."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from mmgpt.config import ConfigError, load_config
from mmgpt.training.config import TrainConfig


def numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted key, int or float) of every numeric field in a config dataclass tree."""
    found = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            found += numeric_fields(tp, f"{prefix}{f.name}.")
        elif tp in (int, float):
            found.append((f"{prefix}{f.name}", tp))
    return found


def test_every_numeric_config_value_is_range_checked() -> None:
    fields = numeric_fields(TrainConfig)
    assert len(fields) > 25
    for key, tp in fields:
        for bad in ([".nan", ".inf", "-.inf"] if tp is float else ["-1"]):
            with pytest.raises(ConfigError) as info:
                load_config(TrainConfig, None, [f"{key}={bad}"])
            message = str(info.value)
            value = repr(float(bad.replace(".nan", "nan").replace(".inf", "inf"))) if tp is float else bad
            assert message.startswith(f"{key} must be ") and message.endswith(f"got {value}"), message


@pytest.mark.parametrize("override, message", [
    ("optim.lr_multipliers={generator: nan}", "optim.lr_multipliers.generator must be a finite number >= 0, got 'nan'"),
    ("optim.lr_multipliers={fusion: -1}", "optim.lr_multipliers.fusion must be a finite number >= 0, got -1"),
    ("optim.betas=[0.9, 1.5]", "optim.betas[1] must be a finite number in [0, 1), got 1.5"),
    ("save_every=-10", "save_every must be >= 0 (0 = only when stopping), got -10"),
    ("eval_every=-1", "eval_every must be >= 0 (0 = never), got -1"),
    ("keep_checkpoints=0", "keep_checkpoints must be >= 1, got 0"),
    ("model.text_encoder.max_length=0", "model.text_encoder.max_length must be >= 1, got 0"),
    ("model.fusion.dim=0", "model.fusion.dim must be >= 1, got 0"),
    ("model.fusion.dropout=1.0", "model.fusion.dropout must be a finite number in [0, 1), got 1.0"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio must be a finite number in [0, 1], got 2.0"),
    ("model.generator.kwargs.initializer_range=.nan",
     "model.generator.kwargs.initializer_range must be a finite number, got nan"),
])
def test_bad_numbers_name_the_key_the_value_and_the_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, None, [override])
    assert str(info.value) == message


def test_one_range_check_for_configs_command_lines_and_python_options() -> None:
    from mmgpt.decoding import int_option, real_option
    from mmgpt.ranges import check_range, within
    from mmgpt.serve.command import _check_args, build_parser

    # an int bound is exact: float(2**64 - 1) would round up and let 2**64 through
    assert within(2**64 - 1, f"[0, {2**64 - 1}]") and not within(2**64, f"[0, {2**64 - 1}]")
    with pytest.raises(ValueError, match=rf"seed must be an int in \[0, {2**64 - 1}\], got {2**64}"):
        int_option("seed", 2**64, 0, 2**64 - 1)
    with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\], got 1.5"):
        real_option("top_p", 1.5, "(0, 1]")
    with pytest.raises(ConfigError, match=r"optim.lr must be a finite number > 0, got 0.0"):
        check_range("optim.lr", 0.0, "> 0", error=ConfigError)
    # the server's flags: the same check and wording
    for flags, message in ((["--port", "70000"], r"--port must be in \[0, 65535\], got 70000"),
                           (["--timeout-s", "nan"], r"--timeout-s must be a finite number > 0, got nan"),
                           (["--max-queue", "0"], r"--max-queue must be >= 1, got 0")):
        with pytest.raises(ValueError, match=message):
            _check_args(build_parser("mmgpt serve").parse_args(flags))
