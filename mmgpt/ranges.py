"""The one check of numeric options: configs, command lines, the server and the Python API state ranges alike.

A range is text: '>= 1', '> 0', '[0, 1)', '[0, 65535]', optionally followed by a note in parentheses
('>= 0 (0 = all)') that the error message repeats.
"""
from __future__ import annotations

import math
import re
from typing import Any

_BOUND = re.compile(r"(>=|>)\s*(\S+)")
_INTERVAL = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])")


def _number(text: str) -> int | float:
    # an int bound stays exact: float(2**64 - 1) rounds up to 2**64
    try:
        return int(text)
    except ValueError:
        return float(text)


def within(value: float, allowed: str) -> bool:
    """Whether `value` lies in `allowed`: '>= 1', '> 0', '[0, 1)' or '[0, 1]' (a note in parentheses may follow)."""
    if bound := _BOUND.fullmatch(allowed.split(" (")[0]):
        low = _number(bound.group(2))
        return value >= low if bound.group(1) == ">=" else value > low
    interval = _INTERVAL.fullmatch(allowed.split(" (")[0])
    if interval is None:
        raise ValueError(f"unreadable range {allowed!r}")
    low, high = _number(interval.group(2)), _number(interval.group(3))
    above = value >= low if interval.group(1) == "[" else value > low
    below = value <= high if interval.group(4) == "]" else value < high
    return above and below


def check_range(key: str, value: Any, allowed: str, integer: bool = False,
                error: type[ValueError] = ValueError) -> None:
    """Raise `error` naming `key`, `value` and `allowed` unless value is a finite number (an int) in range."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer and not isinstance(value, int):
        is_number = False
    if is_number and math.isfinite(value) and within(value, allowed):
        return
    if integer:
        kind = "" if isinstance(value, int) and not isinstance(value, bool) else "an integer "
    else:
        kind = "a finite number "
    where = f"in {allowed}" if allowed.startswith(("[", "(")) else allowed
    raise error(f"{key} must be {kind}{where}, got {value!r}")
