"""The `mmgpt` command: one subcommand per entry of COMMANDS, the table `mmgpt --help` is printed from.

Every command's main(argv, prog) returns its exit status: 0 done, 1 problems found (validate), 2 bad input.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from typing import NamedTuple

from mmgpt.decoding import add_decoding_args, decoding_from_args
from mmgpt.errors import run_reporting_errors
from mmgpt.logging_setup import configure_logging
from mmgpt.startup import imports_without_gc


def check_device(device: str | None) -> None:
    """Refuse a --device this machine does not have, before any model is loaded."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device}: not a device name (cpu, cuda, cuda:1, mps, ...)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device available")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"--device {device}: only {count} CUDA device(s) available (cuda:0 to cuda:{count - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: no MPS device available")


def answer_main(argv: list[str] | None = None, prog: str = "mmgpt answer") -> int:
    """`mmgpt answer`: print the answer to a question about an image."""
    parser = argparse.ArgumentParser(prog=prog, description="Answer a question about an image.")
    parser.add_argument("question", help="the question; an empty string asks for a caption")
    parser.add_argument("--image", required=True, action="append",
                        help="image file (png, jpg, ...); repeat it to ask about several images, which come before "
                        "the question in order (a model trained with model.max_images > 1)")
    parser.add_argument("--model", default=None,
                        help="model folder, a folder written by `mmgpt export` (run without torch), or hf://org/name "
                        "for a hub model (default: $MMGPT_MODEL or the main job's)")
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_decoding_args(parser)
    args = parser.parse_args(argv)
    check_device(args.device)
    from mmgpt.inference import answer, stream_answer

    decoding = decoding_from_args(args)
    # one image keeps the one-image call, so a one-image model answers exactly as it always did
    images = {"image": args.image[0]} if len(args.image) == 1 else {"images": args.image}
    if args.stream:
        for piece in stream_answer(args.question, model=args.model, device=args.device, **images, **decoding):
            print(piece, end="", flush=True)
        print()
    else:
        print(answer(args.question, model=args.model, device=args.device, **images, **decoding))
    return 0


def caption_main(argv: list[str] | None = None, prog: str = "mmgpt caption") -> int:
    """`mmgpt caption`: print a caption for each image, one line per image."""
    parser = argparse.ArgumentParser(prog=prog, description="Caption images, one line per image.")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default=None,
                        help="model folder, or hf://org/name for a hub model (default: $MMGPT_MODEL or the main job's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    add_decoding_args(parser)
    args = parser.parse_args(argv)
    check_device(args.device)
    from mmgpt.inference import answer

    captions = answer([""] * len(args.images), list(args.images), model=args.model, device=args.device,
                      batch_size=args.batch_size, **decoding_from_args(args))
    for path, caption in zip(args.images, captions):
        print(f"{path}\t{caption}")
    return 0


def validate_main(argv: list[str] | None = None, prog: str = "mmgpt validate") -> int:
    """`mmgpt validate`: mmgpt.data.validate, reading --config through the training layer's reader."""
    from mmgpt.data.validate import main
    from mmgpt.training.config import prompt_templates

    return main(argv, prog=prog, config_templates=prompt_templates)


def serve_main(argv: list[str] | None = None, prog: str = "mmgpt serve") -> int:
    """`mmgpt serve`: serve a model until stopped."""
    from mmgpt.serve.command import build_parser, serve

    args = build_parser(prog).parse_args(argv)
    check_device(args.device)
    configure_logging(logging.INFO)  # the server's log is its output
    return serve(args)


class Command(NamedTuple):
    """One `mmgpt` subcommand: where its `main(argv, prog) -> exit status` lives, and its line in `mmgpt --help`."""

    run: str | Callable[[list[str], str], int]  # a module with a main(), imported when the command runs, or main
    summary: str


# the command table: `mmgpt --help` lists it in this order
COMMANDS: dict[str, Command] = {
    "answer": Command(answer_main, "answer a question about an image"),
    "caption": Command(caption_main, "caption one or more images"),
    "train": Command("mmgpt.training.loop",
                     "train a model (one process; use `accelerate launch train.py` for several)"),
    "eval-vqa": Command("mmgpt.eval.vqa", "VQA accuracy of a model, or of a results file"),
    "eval-caption": Command("mmgpt.eval.caption", "COCO caption metrics of a model, or of a results file"),
    "validate": Command(validate_main, "check a dataset before training"),
    "export": Command("mmgpt.export", "export a model to ONNX for torch-free runtimes (mmgpt.runtime)"),
    "quantize": Command("mmgpt.compress.quantize", "quantise a model for the CPU (int8 by default, bf16)"),
    "prune": Command("mmgpt.compress.prune", "remove MLP channels of a model's generator (structured pruning)"),
    "serve": Command(serve_main, "serve a model on the OpenAI Chat Completions API"),
    "compare-fusions": Command("mmgpt.compare", "train every fusion alike and report them side by side"),
    "explain": Command("mmgpt.explain", "answer with a map over the image for each answer token"),
}


def usage() -> str:
    """`mmgpt --help`: the commands and their summaries, in aligned columns."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(["mmgpt <command> [options]", "", "commands:", *lines, "",
                      "`mmgpt <command> --help` explains each command's options."])


def _run(name: str, argv: list[str]) -> int:
    """Run command `name` on `argv`; its --help and errors name it as typed (`mmgpt train`), not the bare `mmgpt`."""
    run = COMMANDS[name].run
    if isinstance(run, str):
        with imports_without_gc():  # torch, transformers and timm: about 1 CPU second less (mmgpt.startup)
            main = importlib.import_module(run).main
    else:
        main = run
    return main(argv, prog=f"mmgpt {name}")


def main(argv: list[str] | None = None) -> int:
    """Dispatch `mmgpt <command> ...`; errors in the user's input exit with status 2 and a message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mmgpt: unknown command '{command}'; available: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # quiet for answer/caption; train, eval and validate raise it to INFO themselves
    configure_logging(logging.WARNING)
    return run_reporting_errors(f"mmgpt {command}", lambda: _run(command, rest))


if __name__ == "__main__":
    sys.exit(main())
