"""VQA evaluation: `python eval_vqa.py --help` (the script lives in mmgpt/eval/vqa.py)."""
import sys

from mmgpt.eval.vqa import main

if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
