"""Check a dataset before training: missing/corrupt images, empty fields, over-long examples, duplicate ids.

CLI::

    mmgpt validate --format jsonl --path data.jsonl [--images DIR] [--annotations F] [--split S] [--limit N]
        [--subset NAME] [--column KEY=COLUMN ...] [--streaming]   (format hf)
        [--model PATH | --tokenizer NAME_OR_PATH [--config PRESET_OR_YAML]] [--max-tokens N]
        [--max-prompt-tokens N] [--max-answer-tokens N] [--no-images]

prints a table of problems and exits 1 when any is found (2 when the dataset cannot be read at all).
Lengths are the tokens training feeds the model (with --model or --tokenizer), else whitespace words.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from mmgpt.config import PromptTemplates
from mmgpt.data.example import Example
from mmgpt.logging_setup import configure_logging

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mmgpt.processor import Processor

logger = logging.getLogger(__name__)

# reads `--config` (a training preset or YAML) -> its prompt templates; reading a training config is the training
# layer's job, so the command that runs validation passes one in
ConfigTemplates = Callable[[str], PromptTemplates]

PROBLEMS = {
    "bad_record": "record that is not a valid example (JSON, fields)",
    "missing_image": "image file does not exist",
    "corrupt_image": "image cannot be read",
    "empty_prompt": "empty prompt (non-caption task)",
    "empty_answer": "empty answer",
    "prompt_too_long": "prompt over its token budget",
    "answer_too_long": "answer over its token budget",
    "sequence_too_long": "prompt + answer over the token budget",
    "duplicate_id": "id repeated within a source",
}


@dataclass
class ValidationReport:
    """Problem counts per kind plus a few sample messages of each."""

    num_examples: int = 0
    num_images: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROBLEMS, 0))
    samples: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in PROBLEMS})
    max_samples: int = 5
    # what lengths are counted in, said in the report so a word count is never read as a token count
    unit_note: str = ""

    def add(self, kind: str, message: str) -> None:
        """Record one problem of `kind`, keeping its message if fewer than max_samples are kept."""
        self.counts[kind] += 1
        if len(self.samples[kind]) < self.max_samples:
            self.samples[kind].append(message)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not any(self.counts.values())

    @property
    def num_problems(self) -> int:
        """Total problems over all kinds."""
        return sum(self.counts.values())

    def format(self) -> str:
        """Human-readable table of counts followed by sample messages."""
        lines = [f"checked {self.num_examples} examples, {self.num_images} distinct image files"]
        if self.unit_note:
            lines.append(self.unit_note)
        lines += [f"{'problem':<18} {'count':>7}  meaning", "-" * 60]
        lines += [f"{kind:<18} {self.counts[kind]:>7}  {PROBLEMS[kind]}" for kind in PROBLEMS]
        for kind in PROBLEMS:
            if self.samples[kind]:
                more = self.counts[kind] - len(self.samples[kind])
                lines.append(f"\n{kind}:")
                lines += [f"  {m}" for m in self.samples[kind]]
                if more:
                    lines.append(f"  ... and {more} more")
        lines.append("\nOK: no problems found" if self.ok else f"\nFAILED: {self.num_problems} problems found")
        return "\n".join(lines)


def _check_image(image: object) -> tuple[str, str] | None:
    """(problem kind, reason) for one image, or None when it loads."""
    from mmgpt.images import ImageError, load_image

    if isinstance(image, (str, Path)) and Path(image).expanduser().is_dir():
        return "corrupt_image", f"{image} is a folder, not an image file"
    if isinstance(image, (str, Path)) and not Path(image).expanduser().is_file():
        return "missing_image", f"{image} does not exist"
    try:
        load_image(image)
    except (ImageError, OSError, ValueError) as e:
        return "corrupt_image", str(e)
    return None


def _is_blank(text: object) -> bool:
    """True for non-strings and whitespace-only strings."""
    return not isinstance(text, str) or not text.strip()


def validate_examples(examples: Iterable[Example], max_prompt_tokens: int | None = None,
                      max_answer_tokens: int | None = None, tokenize: Callable[[str], Sequence] | None = None,
                      check_images: bool = True, progress: bool = True, max_total_tokens: int | None = None,
                      max_samples: int = 5, processor: Processor | None = None,
                      bad_records: Sequence[str] = ()) -> ValidationReport:
    """Check every example; lengths are the tokens `processor` feeds the model, `tokenize` tokens, or words.

    `bad_records`: the reader's messages for records it could not make examples of, reported as bad_record.
    """
    def count_words(text: str) -> int:
        return len(tokenize(text)) if tokenize else len(text.split())

    count_prompt = processor.prompt_length if processor is not None else count_words
    count_answer = processor.answer_length if processor is not None else count_words
    unit = "tokens" if processor is not None or tokenize else "words"
    report = ValidationReport(max_samples=max_samples)
    for message in bad_records:
        report.add("bad_record", message)
    if processor is not None:
        report.unit_note = ("lengths in tokens as training feeds them: prompt with its special tokens, "
                            "bos + answer + eos")
    elif tokenize is None:
        report.unit_note = ("lengths in whitespace words, an estimate: pass --model or --tokenizer "
                            "to count tokens")
    image_cache: dict[str, tuple[str, str] | None] = {}
    seen_ids: set[tuple[str, object]] = set()
    show = progress and sys.stderr.isatty()
    for ex in tqdm(examples, desc="validating", unit="ex", disable=not show):
        report.num_examples += 1
        who = f"[{ex.source or '?'}] id={ex.id!r}"
        if check_images:
            # many questions share one image: decode each file once (in-memory images are checked each time)
            for image in ex.image if isinstance(ex.image, (list, tuple)) else [ex.image]:
                if isinstance(image, (str, Path)):
                    key = str(image)
                    if key not in image_cache:
                        image_cache[key] = _check_image(image)
                    problem = image_cache[key]
                else:
                    problem = _check_image(image)
                if problem:
                    report.add(problem[0], f"{who}: {problem[1]}")
        if ex.task != "caption" and _is_blank(ex.prompt):
            report.add("empty_prompt", f"{who}: task {ex.task!r} has an empty prompt")
        if _is_blank(ex.answer):
            report.add("empty_answer", f"{who}: empty answer")
        prompt_len = count_prompt(ex.prompt) if isinstance(ex.prompt, str) else 0
        answer_len = count_answer(ex.answer) if isinstance(ex.answer, str) else 0
        for kind, length, budget in (("prompt_too_long", prompt_len, max_prompt_tokens),
                                     ("answer_too_long", answer_len, max_answer_tokens),
                                     ("sequence_too_long", prompt_len + answer_len, max_total_tokens)):
            if budget is not None and length > budget:
                report.add(kind, f"{who}: {length} {unit} > {budget}")
        if ex.id is not None:
            key_id = (ex.source, ex.id)
            if key_id in seen_ids:
                report.add("duplicate_id", f"{who}: duplicate id")
            seen_ids.add(key_id)
    report.num_images = len(image_cache)
    return report


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a local folder, or from the hub when named hf://org/name (nothing else goes to the hub)."""
    from mmgpt.hf_models import HUB_PREFIX, load_hf_tokenizer
    from mmgpt.processor import load_saved_tokenizer

    if name.startswith(HUB_PREFIX):
        try:
            return load_hf_tokenizer(name[len(HUB_PREFIX):])
        # the tokenizers library raises a bare Exception for a damaged tokenizer.json
        except Exception as e:
            raise ValueError(f"cannot load tokenizer {name}: {' '.join(str(e).split())}") from e
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder} (a hub tokenizer is named {HUB_PREFIX}org/name)")
    return load_saved_tokenizer(folder)


def load_counting(model: str | None, tokenizer: str | None, config: str | None = None,
                  config_templates: ConfigTemplates | None = None) -> tuple[Processor | None, PromptTemplates]:
    """The processor and prompt templates training would use: a saved model's, a tokenizer's, or none.

    A training `config` (preset or YAML) gives the templates, read by `config_templates`, when no model is named.
    """
    from mmgpt.config import ModelConfig, from_dict, load_json
    from mmgpt.processor import Processor

    templates = PromptTemplates()
    if config and not model:
        if config_templates is None:
            raise ValueError(f"--config {config}: no reader of training configs was given to read its templates")
        templates = config_templates(config)
    if model:
        from mmgpt.model_folder import CONFIG_NAME, resolve_model_path

        folder = resolve_model_path(model)
        config = from_dict(ModelConfig, load_json(folder / CONFIG_NAME).get("model", {}), prefix="model")
        return Processor.from_pretrained(folder), PromptTemplates.from_config(config)
    if tokenizer:
        return Processor(load_tokenizer(tokenizer), None), templates
    return None, templates


def main(argv: list[str] | None = None, prog: str = "mmgpt validate",
         config_templates: ConfigTemplates | None = None) -> int:
    """CLI entry point: read one dataset, validate it, print the report; 0 ok, 1 problems, 2 unreadable.

    `config_templates` reads `--config` (the `mmgpt` command passes the training layer's reader).
    """
    from mmgpt.data.formats import FORMATS, read_dataset
    from mmgpt.data.spec import DatasetSpec

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="dataset format")
    parser.add_argument("--path", default="", help="annotation / questions / JSONL file (or cache root)")
    parser.add_argument("--images", default="", help="image root folder")
    parser.add_argument("--annotations", default="", help="second file, e.g. VQA v2 annotations")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-examples", "--limit", type=int, default=0, dest="max_examples",
                        help="check only the first N examples, a sample of a large or streamed set (0 = all)")
    parser.add_argument("--subset", default="", help="format hf: the dataset's config name on the hub")
    parser.add_argument("--column", action="append", default=[], metavar="KEY=COLUMN",
                        help="format hf: which column holds what (image, question, answer, texts, messages, "
                             "conversations, id); repeat for several")
    parser.add_argument("--streaming", action="store_true", help="format hf: stream the rows instead of loading")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--model", default=None,
                       help="count tokens with this saved model's tokenizer(s) and prompt templates "
                            "(a folder, or hf://org/name); its length limits are the default budgets")
    count.add_argument("--tokenizer", default=None,
                       help="count tokens with this tokenizer (a local folder, or hf://org/name) and the prompt "
                            "templates of --config")
    parser.add_argument("--config", default=None,
                        help="training preset or YAML whose prompt templates build the prompts (default: the "
                             "defaults; --model uses its own)")
    parser.add_argument("--max-tokens", type=int, default=None, help="budget for prompt + answer")
    parser.add_argument("--max-prompt-tokens", type=int, default=None)
    parser.add_argument("--max-answer-tokens", type=int, default=None)
    parser.add_argument("--no-images", action="store_true", help="skip opening images")
    parser.add_argument("--samples", type=int, default=5, help="sample messages shown per problem kind")
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    try:
        if args.model and args.config:
            parser.error("--model carries its own prompt templates: pass --model or --config, not both")
        processor, templates = load_counting(args.model, args.tokenizer, args.config, config_templates)
        columns = dict(pair.split("=", 1) for pair in args.column if "=" in pair)
        if len(columns) != len(args.column):
            parser.error(f"--column takes KEY=COLUMN, got {args.column}")
        spec = DatasetSpec(format=args.format, path=args.path, images=args.images, annotations=args.annotations,
                           split=args.split, max_examples=args.max_examples, subset=args.subset, columns=columns,
                           # --limit checks the first N rows as stored, not a shuffle buffer's draw
                           streaming=args.streaming, shuffle_buffer=0)
        bad_records: list[str] = []
        examples = read_dataset(spec, templates, problems=bad_records)
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    max_prompt, max_answer = args.max_prompt_tokens, args.max_answer_tokens
    if args.model:
        # what the model would truncate is a problem even when no budget is named
        max_prompt = processor.max_prompt_length if max_prompt is None else max_prompt
        max_answer = processor.max_answer_length if max_answer is None else max_answer
    try:
        # lazy and streamed sets read their rows here, so a malformed row is found here too
        report = validate_examples(examples, max_prompt_tokens=max_prompt, max_answer_tokens=max_answer,
                                   max_total_tokens=args.max_tokens, check_images=not args.no_images,
                                   max_samples=args.samples, processor=processor, bad_records=bad_records)
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    from mmgpt.training.config import prompt_templates

    sys.exit(main(prog="python -m mmgpt.data.validate", config_templates=prompt_templates))
