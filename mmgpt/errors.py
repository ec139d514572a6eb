"""How every entry point reports bad input: one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable

# What bad input raises (arguments, files, folders, devices): reported in one line with exit status 2.
# Anything else is a bug in mmgpt and keeps its traceback.
# FloatingPointError: training that turned non-finite stops with one (NonFiniteTraining)
try:
    from safetensors import SafetensorError

    SAFETENSORS_ERRORS: tuple[type[BaseException], ...] = (SafetensorError,)
except ImportError:  # the torch-free runtime install: an exported folder holds no safetensors file
    SAFETENSORS_ERRORS = ()
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, TypeError, RecursionError,
                                                    FloatingPointError, *SAFETENSORS_ERRORS)


def describe_error(error: BaseException) -> str:
    """One line saying what went wrong; library messages without a hint of their kind get one."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, RecursionError):
        return f"input nested too deeply to read ({message})"
    if isinstance(error, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({message})"
    if isinstance(error, SAFETENSORS_ERRORS):
        return f"damaged safetensors file ({message})"
    return message


def run_reporting_errors(prog: str, run: Callable[[], int]) -> int:
    """run() -> its status; an expected error becomes 'prog: error: ...' on stderr and status 2, Ctrl-C 130."""
    try:
        return run()
    except EXPECTED_ERRORS as e:
        print(f"{prog}: error: {describe_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
