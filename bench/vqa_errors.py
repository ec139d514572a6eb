"""Where easy-VQA answers go wrong: exact match by question kind and by the size of the shape in the image.

Reads official-format results files (``mmgpt eval-vqa --predictions FILE``) for the easy-VQA test split
and prints one markdown table per file: exact match and error count by question kind (what colour,
what shape, yes/no naming a colour, yes/no naming only a shape) and by the shape's size in pixels (the
larger side of the bounding box of pixels that differ from the background, read at a corner).

    mmgpt eval-vqa --predictions /tmp/pred.json        # the main job's model
    python -m bench.vqa_errors /tmp/pred.json [more.json ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SIZE_BINS = ((0, 12, "<= 12 px"), (13, 20, "13-20 px"), (21, 32, "21-32 px"), (33, 64, "> 32 px"))


def question_kind(question: str, answer: str) -> str:
    """The easy-VQA question kind, from the question's words and the true answer."""
    words = set(question.lower().rstrip("?").split())
    if answer in ("yes", "no"):
        return "yes/no, names a colour" if words & set(COLOURS) else "yes/no, names only a shape"
    return "what colour" if answer in COLOURS else "what shape"


def shape_size(path: str | Path) -> int:
    """The larger side, in pixels, of the box around the pixels that differ from the corner's colour."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    mask = np.abs(pixels - pixels[0, 0]).sum(-1) > 30
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0
    return int(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)


def size_bin(size: int) -> str:
    """The SIZE_BINS label a shape size falls in."""
    return next(label for low, high, label in SIZE_BINS if low <= size <= high)


def error_table(results: list[dict]) -> str:
    """Markdown table of exact match by question kind and by shape size, for easy-VQA test results."""
    import easy_vqa

    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    predicted = {int(r["question_id"]): str(r["answer"]).strip().lower() for r in results}
    if len(predicted) != len(questions):
        raise ValueError(f"results cover {len(predicted)} questions; the easy-VQA test split has {len(questions)}")
    sizes = {img: shape_size(paths[img]) for img in set(image_ids)}
    total, wrong = Counter(), Counter()
    for qid, (question, answer, img) in enumerate(zip(questions, answers, image_ids)):
        ok = predicted[qid] == answer
        for group in ("all", question_kind(question, answer), size_bin(sizes[img])):
            total[group] += 1
            wrong[group] += not ok
    order = ["all", "what colour", "what shape", "yes/no, names a colour", "yes/no, names only a shape",
             *(label for _, _, label in SIZE_BINS)]
    rows = ["| group | questions | exact match % | errors |", "|---|---:|---:|---:|"]
    rows += [f"| {g} | {total[g]} | {100 * (1 - wrong[g] / total[g]):.2f} | {wrong[g]} |" for g in order if total[g]]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Print the error table of each results file -> exit status 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="official-format results JSON files")
    args = parser.parse_args(argv)
    for path in args.results:
        print(f"## {path}\n\n{error_table(json.loads(path.read_text()))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
