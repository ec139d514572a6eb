"""Train an mmgpt model: `accelerate launch train.py [--config FILE] [--resume latest | --overwrite] [key=value ...]`.

The loop lives in mmgpt/training/loop.py (so `mmgpt train` works from any install); this file is the
entry point `accelerate launch` runs.
"""
import sys

from mmgpt.errors import run_reporting_errors
from mmgpt.startup import imports_without_gc

with imports_without_gc():
    from mmgpt.training.loop import main

if __name__ == "__main__":
    sys.exit(run_reporting_errors("train.py", main))
