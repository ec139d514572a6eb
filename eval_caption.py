"""Caption evaluation: `python eval_caption.py --help` (the script lives in mmgpt/eval/caption.py)."""
import sys

from mmgpt.errors import run_reporting_errors
from mmgpt.eval.caption import main

if __name__ == "__main__":
    sys.exit(run_reporting_errors("eval_caption.py", main))
