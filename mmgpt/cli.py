"""The `mmgpt` command: one subcommand per entry of COMMANDS, the table `mmgpt --help` is printed from."""
from __future__ import annotations

import argparse
import logging
import sys

from mmgpt.decoding import add_decoding_args, decoding_from_args
from mmgpt.errors import run_reporting_errors
from mmgpt.logging_setup import configure_logging


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


def _answer(argv: list[str]) -> int:
    """answer a question about an image"""
    parser = argparse.ArgumentParser(prog="mmgpt answer", description="Answer a question about an image.")
    parser.add_argument("question", help="the question; an empty string asks for a caption")
    parser.add_argument("--image", required=True, help="image file (png, jpg, ...)")
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
    if args.stream:
        for piece in stream_answer(args.question, args.image, model=args.model, device=args.device, **decoding):
            print(piece, end="", flush=True)
        print()
    else:
        print(answer(args.question, args.image, model=args.model, device=args.device, **decoding))
    return 0


def _caption(argv: list[str]) -> int:
    """caption one or more images"""
    parser = argparse.ArgumentParser(prog="mmgpt caption", description="Caption images, one line per image.")
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


def _train(argv: list[str]) -> int:
    """train a model (one process; use `accelerate launch train.py` for several)"""
    from mmgpt.training.loop import main

    # prog: each command's --help and errors name it as typed, not as the bare `mmgpt`
    main(argv, prog="mmgpt train")
    return 0


def _eval_vqa(argv: list[str]) -> int:
    """VQA accuracy of a model, or of a results file"""
    from mmgpt.eval.vqa import main

    return 0 if main(argv, prog="mmgpt eval-vqa") is not None else 1


def _eval_caption(argv: list[str]) -> int:
    """COCO caption metrics of a model, or of a results file"""
    from mmgpt.eval.caption import main

    return 0 if main(argv, prog="mmgpt eval-caption") is not None else 1


def _validate(argv: list[str]) -> int:
    """check a dataset before training"""
    from mmgpt.data.validate import main
    from mmgpt.training.config import prompt_templates

    return main(argv, prog="mmgpt validate", config_templates=prompt_templates)


def _compare_fusions(argv: list[str]) -> int:
    """train every fusion alike and report them side by side"""
    from mmgpt.compare import main

    main(argv, prog="mmgpt compare-fusions")
    return 0


def _explain(argv: list[str]) -> int:
    """answer with a map over the image for each answer token"""
    from mmgpt.explain import main

    return main(argv, prog="mmgpt explain")


def _serve(argv: list[str], prog: str = "mmgpt serve") -> int:
    """serve a model on the OpenAI Chat Completions API"""
    from mmgpt.serve.command import build_parser, serve

    args = build_parser(prog).parse_args(argv)
    check_device(args.device)
    configure_logging(logging.INFO)  # the server's log is its output
    return serve(args)


def _export(argv: list[str]) -> int:
    """export a model to ONNX for torch-free runtimes (mmgpt.runtime)"""
    from mmgpt.export import main

    return main(argv, prog="mmgpt export")


def _quantize(argv: list[str]) -> int:
    """quantise a model for the CPU (int8 by default, bf16)"""
    from mmgpt.compress.quantize import main

    return main(argv, prog="mmgpt quantize")


def _prune(argv: list[str]) -> int:
    """remove MLP channels of a model's generator (structured pruning)"""
    from mmgpt.compress.prune import main

    return main(argv, prog="mmgpt prune")


# the command table: `mmgpt --help` lists it in this order, each command's summary its function's docstring
COMMANDS = {
    "answer": _answer,
    "caption": _caption,
    "train": _train,
    "eval-vqa": _eval_vqa,
    "eval-caption": _eval_caption,
    "validate": _validate,
    "export": _export,
    "quantize": _quantize,
    "prune": _prune,
    "serve": _serve,
    "compare-fusions": _compare_fusions,
    "explain": _explain,
}


def usage() -> str:
    """`mmgpt --help`: the commands and their summaries, in aligned columns."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {(handler.__doc__ or '').strip()}" for name, handler in COMMANDS.items()]
    return "\n".join(["mmgpt <command> [options]", "", "commands:", *lines, "",
                      "`mmgpt <command> --help` explains each command's options."])


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
    return run_reporting_errors(f"mmgpt {command}", lambda: COMMANDS[command](rest))


if __name__ == "__main__":
    sys.exit(main())
