"""VQA evaluation: `python eval_vqa.py --help` (the script lives in mmgpt/eval/vqa.py)."""
import sys

from mmgpt.errors import run_reporting_errors
from mmgpt.eval.vqa import main

if __name__ == "__main__":
    sys.exit(run_reporting_errors("eval_vqa.py", main))
