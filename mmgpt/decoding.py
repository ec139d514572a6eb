"""Decoding options as one `transformers.GenerationConfig`: mmgpt's checks, the merge onto a model's own, CLI flags.

A model carries its `generation_config` (saved as generation_config.json). A call's `generation_config` and
keyword overrides are merged onto it: what the call's config sets replaces the model's, the keywords replace
both, and a keyword given as None leaves the value as it was. Each option in DECODING_OPTIONS is checked
here with a message naming it and its allowed values; transformers' `GenerationConfig.validate()` checks
the combination.
"""
from __future__ import annotations

import argparse
import copy
import functools
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmgpt.ranges import within

if TYPE_CHECKING:  # transformers is imported when a config is built, so `mmgpt --help` stays quick
    from transformers import GenerationConfig, PreTrainedTokenizerBase

    from mmgpt.config import ModelConfig

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p")
# sampling below this temperature is greedy decoding: softmax(logits / T) overflows to inf/nan as T -> 0
GREEDY_TEMPERATURE = 1e-5


def position_ids(attention_mask: Any) -> Any:
    """Each position's index among the real tokens of a mask (B, L) -> (B, L); left padding gets 0.

    The same for a torch tensor and a numpy array (mmgpt.runtime has no torch); masked positions are never
    attended to, so their value only has to be a valid index.
    """
    positions = attention_mask.cumsum(1) - 1
    return positions * (positions > 0)


def int_option(name: str, value: Any, minimum: int, maximum: int | None = None, none: str = "") -> int | None:
    """`value` as an int in [minimum, maximum], None when `none` says what None means, else TypeError/ValueError."""
    bounds = f">= {minimum}" if maximum is None else f"[{minimum}, {maximum}]"
    allowed = f"an int {bounds}" if maximum is None else f"an int in {bounds}"
    allowed = f"None ({none}) or {allowed}" if none else allowed
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    if not within(value, bounds):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return int(value)


def real_option(name: str, value: Any, bounds: str, none: str = "") -> float | None:
    """`value` as a finite float within `bounds` (a mmgpt.ranges range), None when `none` says what None means."""
    if value is None and none:
        return None
    allowed = f"a number in {bounds}" if bounds.startswith(("[", "(")) else f"a finite number {bounds}"
    allowed = f"None ({none}) or {allowed}" if none else allowed
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or not within(value, bounds):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return float(value)


def _bool_option(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be None (sample when temperature/top_k/top_p is given) or a bool, "
                        f"got {type(value).__name__} {value!r}")
    return value


def check_seed(seed: Any) -> int | None:
    """None or an int a torch.Generator accepts, else TypeError/ValueError naming `seed`."""
    return int_option("seed", seed, 0, MAX_SEED, none="unseeded")


@dataclass(frozen=True)
class DecodingOption:
    """How one GenerationConfig field is checked and, when `flag_type` is set, offered as a command-line flag."""

    check: Callable[[str, Any], Any]
    flag_type: type | None = None
    help: str = ""


DECODING_OPTIONS: dict[str, DecodingOption] = {
    "max_new_tokens": DecodingOption(lambda n, v: int_option(n, v, 0, none="the model's max_answer_length"), int,
                                     "answer length limit (0 answers ''; default: the model's)"),
    "num_beams": DecodingOption(lambda n, v: int_option(n, v, 1), int, "beam search width (1 = greedy)"),
    "do_sample": DecodingOption(_bool_option),
    "temperature": DecodingOption(lambda n, v: real_option(n, v, "> 0", none="1.0"),
                                  float, "sample with this temperature"),
    "top_k": DecodingOption(lambda n, v: int_option(n, v, 0, none="no top-k filter"), int,
                            "sample from the k most likely tokens"),
    "top_p": DecodingOption(lambda n, v: real_option(n, v, "(0, 1]", none="no top-p filter"),
                            float, "sample from the smallest set with this mass"),
    "no_repeat_ngram_size": DecodingOption(lambda n, v: int_option(n, v, 0), int,
                                           "forbid repeating n-grams of this size"),
    "repetition_penalty": DecodingOption(lambda n, v: real_option(n, v, "> 0"),
                                         float, ">1 discourages repeated tokens"),
    # mmgpt's own field (mmgpt.constrained): GenerationConfig keeps it as an attribute and saves it
    "answer_choices": DecodingOption(lambda n, v: _answer_choices(n, v)),
}


def _answer_choices(name: str, value: Any) -> list[str]:
    try:
        from mmgpt.constrained import check_answer_choices  # imports transformers and torch: only when used
    except ImportError:  # the torch-free runtime install: what runs an export there refuses the option by name
        return list(value)
    return list(check_answer_choices(name, value))


@functools.cache
def generation_fields() -> frozenset[str]:
    """The names of transformers.GenerationConfig's fields, and mmgpt's own decoding options (answer_choices);
    without transformers (the runtime install), mmgpt's own only."""
    try:
        from transformers import GenerationConfig
    except ImportError:
        return frozenset(DECODING_OPTIONS)
    return frozenset(GenerationConfig().to_dict()) | frozenset(DECODING_OPTIONS)


def check_decoding_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that are set (not None), checked; a name that is no GenerationConfig field is a TypeError."""
    checked = {}
    for name, value in options.items():
        if name not in generation_fields():
            raise TypeError(f"unknown decoding option '{name}': decoding options are transformers.GenerationConfig "
                            f"fields ({', '.join(DECODING_OPTIONS)}, ...)")
        if value is not None:
            checked[name] = DECODING_OPTIONS[name].check(name, value) if name in DECODING_OPTIONS else value
    return checked


def set_values(config: GenerationConfig) -> dict[str, Any]:
    """The fields `config` sets (differing from a bare GenerationConfig): what it changes when merged, and records."""
    return {k: v for k, v in config.to_diff_dict().items() if k != "transformers_version"}


def resolve_generation_config(base: GenerationConfig, generation_config: GenerationConfig | None = None,
                              **overrides: Any) -> tuple[GenerationConfig, dict[str, Any]]:
    """Merge `generation_config` and keyword overrides onto `base`, checked -> (config, the other generate kwargs).

    Keywords that are no GenerationConfig field (`streamer`, `logits_processor`) come back for `generate`.
    As in answer() before GenerationConfig: temperature/top_k/top_p given as keywords sample unless
    do_sample=False is given, and sampling with no top_k set has no top-k filter (transformers would use 50).
    """
    from transformers import GenerationConfig

    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise TypeError(f"generation_config must be None or a transformers.GenerationConfig, "
                        f"got {type(generation_config).__name__}")
    options = check_decoding_options({k: v for k, v in overrides.items() if k in generation_fields()})
    generate_kwargs = {k: v for k, v in overrides.items() if k not in generation_fields()}
    if "do_sample" not in options and any(name in options for name in SAMPLING_OPTIONS):
        options["do_sample"] = True
    config = copy.deepcopy(base)
    # setattr rather than update(): update() validates at once, and would refuse max_new_tokens=0
    for name, value in {**(set_values(generation_config) if generation_config is not None else {}), **options}.items():
        setattr(config, name, value)
    if config.do_sample and config.top_k is None:
        config.top_k = 0
    for name, option in DECODING_OPTIONS.items():  # a config object's values get the same checks as keywords
        if getattr(config, name, None) is not None:
            setattr(config, name, option.check(name, getattr(config, name)))
    if config.do_sample and config.temperature is not None and config.temperature < GREEDY_TEMPERATURE:
        config.do_sample = False
        for name in SAMPLING_OPTIONS:  # unused when greedy (and validate() warns about them)
            setattr(config, name, None)
    probe = config
    if config.max_new_tokens == 0:  # mmgpt answers "" there; transformers refuses 0 before any generation
        probe = copy.deepcopy(config)
        probe.max_new_tokens = None
    probe.validate()
    return config, generate_kwargs


def position_limit(generator_config: Any) -> int | None:
    """How many positions a transformers generator reads (max_position_embeddings / n_positions); None: no limit."""
    limit = getattr(generator_config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def check_answer_length(max_new_tokens: int | None, prefix_length: int, max_positions: int | None,
                        name: str = "max_new_tokens", cap: tuple[int, str] | None = None) -> None:
    """ValueError unless `max_new_tokens` fits the generator's positions after a prefix of `prefix_length`.

    The prefix, bos and every new token but the last take a position each, so a prefix of P leaves
    max_positions - P new tokens. `cap` is a further limit and where it is set: (256, "the server's --max-tokens").
    """
    if max_new_tokens is None:
        return
    model_limit = None if max_positions is None else max(0, max_positions - prefix_length)
    if (model_limit is None or max_new_tokens <= model_limit) and (cap is None or max_new_tokens <= cap[0]):
        return
    parts = []
    if model_limit is not None:
        parts.append(f"over this model's limit of {model_limit} (its generator reads {max_positions} positions "
                     f"and the prompt and image take {prefix_length})" if max_new_tokens > model_limit else
                     f"within this model's limit of {model_limit} (its generator reads {max_positions} positions and "
                     f"the prompt and image take {prefix_length})")
    if cap is not None:
        parts.append(f"{'over' if max_new_tokens > cap[0] else 'within'} {cap[1]} of {cap[0]}")
    raise ValueError(f"{name}={max_new_tokens} is {' and '.join(parts)}; ask for fewer new tokens")


def default_generation_config(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """What a model decodes with unless told otherwise: greedy, up to its trained answer length, its special tokens."""
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=config.max_answer_length, do_sample=False, num_beams=1,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)


def add_decoding_args(parser: argparse.ArgumentParser) -> None:
    """The decoding flags (--max-new-tokens, --num-beams, ...: one per flagged option) and --seed."""
    group = parser.add_argument_group("decoding (default: the model's generation_config.json)")
    for name, option in DECODING_OPTIONS.items():
        if option.flag_type is not None:
            group.add_argument(f"--{name.replace('_', '-')}", type=option.flag_type, default=None, help=option.help)
    group.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    group.add_argument("--choices", default=None, metavar="A,B,...",
                       help="answer only with one of these comma-separated answers (greedy: the most probable one)")


def decoding_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding flags given on the command line, as answer() keyword arguments (seed included)."""
    given = {name: getattr(args, name) for name, option in DECODING_OPTIONS.items() if option.flag_type is not None}
    if args.choices is not None:
        given["answer_choices"] = [choice for choice in args.choices.split(",") if choice.strip()] or [""]
    return {**{k: v for k, v in given.items() if v is not None}, "seed": args.seed}
