"""The `mmgpt` command: answer, caption, train, eval-vqa, eval-caption, validate."""
from __future__ import annotations

import argparse
import logging
import sys

from mmgpt.eval.common import add_decoding_args, decoding_from_args

USAGE = """mmgpt <command> [options]

commands:
  answer        answer a question about an image
  caption       caption one or more images
  train         train a model (one process; use `accelerate launch train.py` for several)
  eval-vqa      VQA accuracy of a model, or of a results file
  eval-caption  COCO caption metrics of a model, or of a results file
  validate      check a dataset before training

`mmgpt <command> --help` explains each command's options."""


def _answer(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mmgpt answer", description="Answer a question about an image.")
    parser.add_argument("question", help="the question; an empty string asks for a caption")
    parser.add_argument("--image", required=True, help="image file (png, jpg, ...)")
    parser.add_argument("--model", default=None,
                        help="model folder, or hf://org/name for a hub model (default: $MMGPT_MODEL or the main job's)")
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_decoding_args(parser)
    args = parser.parse_args(argv)
    from mmgpt.inference import answer, stream_answer

    decoding = decoding_from_args(args)
    if args.stream:
        for piece in stream_answer(args.question, args.image, model=args.model, device=args.device, **decoding):
            print(piece, end="", flush=True)
        print()
    else:
        print(answer(args.question, args.image, model=args.model, device=args.device, **decoding))
    return 0


def _caption(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mmgpt caption", description="Caption images, one line per image.")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default=None,
                        help="model folder, or hf://org/name for a hub model (default: $MMGPT_MODEL or the main job's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    add_decoding_args(parser)
    args = parser.parse_args(argv)
    from mmgpt.inference import answer

    captions = answer([""] * len(args.images), list(args.images), model=args.model, device=args.device,
                      batch_size=args.batch_size, **decoding_from_args(args))
    for path, caption in zip(args.images, captions):
        print(f"{path}\t{caption}")
    return 0


def _train(argv: list[str]) -> int:
    from mmgpt.train import main

    main(argv)
    return 0


def _eval_vqa(argv: list[str]) -> int:
    from mmgpt.eval.vqa import main

    return 0 if main(argv) is not None else 1


def _eval_caption(argv: list[str]) -> int:
    from mmgpt.eval.caption import main

    return 0 if main(argv) is not None else 1


def _validate(argv: list[str]) -> int:
    from mmgpt.data.validate import main

    return main(argv)


COMMANDS = {
    "answer": _answer,
    "caption": _caption,
    "train": _train,
    "eval-vqa": _eval_vqa,
    "eval-caption": _eval_caption,
    "validate": _validate,
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch `mmgpt <command> ...`; errors in the user's input exit with status 2 and a message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mmgpt: unknown command '{command}'; available: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[command](rest)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"mmgpt {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
