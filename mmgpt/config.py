"""Config tree: nested dataclasses, loaded from YAML, overridden by `key=value`.

Every field is checked when the config is built, so a typo or a wrong type fails
before any model is created, with the dotted name of the offending key.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

import yaml

from mmgpt.ranges import check_range

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it."""


def check_fields(section: Any, prefix: str, **allowed: str) -> None:
    """check_range on each named field of a config dataclass; int-annotated fields must hold ints."""
    hints = typing.get_type_hints(type(section))
    for name, spec in allowed.items():
        check_range(f"{prefix}{name}", getattr(section, name), spec, integer=hints[name] is int, error=ConfigError)


def check_finite_values(key: str, data: Any) -> None:
    """Raise ConfigError for a NaN or infinite float anywhere in a (nested) mapping or list, naming its key."""
    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{key} must be a finite number, got {data!r}")
    if isinstance(data, dict):
        for name, value in data.items():
            check_finite_values(f"{key}.{name}", value)
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            check_finite_values(f"{key}[{i}]", value)


@dataclass
class LoraConfig:
    """LoRA adapters (through peft) on one Hugging Face part; r = 0 means none (the part trains fully or is frozen)."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    # module names to adapt, or "auto": the attention projections of the part's architecture (mmgpt.lora)
    target_modules: Any = "auto"

    def check(self, prefix: str) -> None:
        """Raise ConfigError naming `prefix` + the field (the section is shared by three parts) for a bad value."""
        check_fields(self, prefix, r=">= 0 (0 = no adapters)", alpha="> 0", dropout="[0, 1)")
        names = self.target_modules
        if not (isinstance(names, str) and names) and not (
            isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)
        ):
            raise ConfigError(f"{prefix}target_modules must be 'auto' or a list of module names, got {names!r}")


@dataclass
class TextEncoderConfig:
    """Which text encoder turns the prompt into T of shape (batch, text_len, d_text)."""

    # registry key in mmgpt.encoders.TEXT_ENCODERS
    type: str = "lm_embeddings"
    # hub name or local folder of a Hugging Face encoder (type "hf"); empty = build from kwargs
    name: str = ""
    # transformers config values: a from-scratch encoder, e.g. {"model_type": "bert", "hidden_size": 64},
    # or changes to a named one's config
    kwargs: dict = field(default_factory=dict)
    max_length: int = 32
    freeze: bool = False
    # type "hf" only
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        check_fields(self, "model.text_encoder.", max_length=">= 1")
        self.lora.check("model.text_encoder.lora.")
        check_finite_values("model.text_encoder.kwargs", self.kwargs)


@dataclass
class TilingConfig:
    """Splitting a large image into tiles of the encoder's input size, plus a downscaled view of the whole.

    rows x cols > 0: each image is resized to rows x cols tiles and gives 1 + rows * cols views (the whole
    image first), each encoded on its own, each view's tokens marked with a learned tile-position embedding.
    """

    rows: int = 0  # 0: off, one view of the whole image
    cols: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "model.image_encoder.tiling.", rows=">= 0", cols=">= 0")
        if (self.rows == 0) != (self.cols == 0):
            raise ConfigError(f"model.image_encoder.tiling: rows and cols must both be 0 (off) or both be >= 1, "
                              f"got rows={self.rows}, cols={self.cols}")

    @property
    def views(self) -> int:
        """Views per image: 1 without tiling, else the whole image and every tile."""
        return 1 + self.rows * self.cols


@dataclass
class ImageEncoderConfig:
    """Which image encoder turns pixels into I of shape (batch, image_len, d_image)."""

    # registry key in mmgpt.encoders.IMAGE_ENCODERS: "timm" or "hf"
    type: str = "timm"
    # timm model name, or hub name / local folder of a CLIP/SigLIP vision tower (type "hf")
    name: str = "mmgpt_tiny_cnn_s2d"
    # timm: load hub weights; ignored for type "hf" (a name means pretrained there)
    pretrained: bool = False
    # timm: local weights file (.safetensors) instead of the hub, or a saved mmgpt model folder whose image
    # encoder (the same timm model) to start from
    weights: str = ""
    # timm create_model overrides, or a from-scratch transformers vision config (type "hf")
    kwargs: dict = field(default_factory=dict)
    # keep ViT class/register tokens in I (dropped by default: they are not patches)
    keep_prefix_tokens: bool = False
    freeze: bool = False
    # type "hf" only
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    # f > 1: each f x f block of a square token grid becomes one token of f * f times the width (nanoVLM's
    # pixel shuffle), so a view costs f * f times fewer tokens
    pixel_shuffle: int = 1

    def __post_init__(self) -> None:
        check_fields(self, "model.image_encoder.", pixel_shuffle=">= 1")
        check_finite_values("model.image_encoder.kwargs", self.kwargs)
        self.lora.check("model.image_encoder.lora.")


@dataclass
class FusionConfig:
    """Which fusion g combines T and I into F = g(T, I)."""

    # registry key in mmgpt.fusion.FUSIONS
    type: str = "cross_attention"
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.0
    # add fixed 2-D sin-cos positions to the image tokens (a square grid; 1-D otherwise), so a fusion
    # that treats them as a set (cross-attention, pooling) can still tell where things are
    image_positions: bool = False
    # cross-attention: a learned key/value every text token can attend to. Softmax weights always sum
    # to one, so without it a query cannot say "nothing in the image matches me" (yes/no questions;
    # +4 points there on the default run)
    null_token: bool = True
    # cross-attention: the text tokens also attend to each other before reading the image. Without it each
    # token reads the image alone, so a fixed caption prompt has only its own words' queries to describe a scene
    text_self_attention: bool = False
    # cross-attention: F also keeps the image tokens, in grid order before the text (as concat does), so the
    # generator reads where each thing is from its own positions, not only what the text tokens gathered
    image_prefix: bool = False
    freeze: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "model.fusion.", dim=">= 1", num_layers=">= 1", num_heads=">= 1", dropout="[0, 1)")


# the default generator, built from scratch (configs/default.yaml lists the same values)
SCRATCH_GENERATOR: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    # transformers' 0.02 is tuned for widths in the thousands; at width 128 it shrinks every
    # layer's output so much that the image barely reaches the answer and shape questions stay
    # at chance (38% after 1,000 steps; 98.6% with 0.12)
    "initializer_range": 0.12,
}


@dataclass
class GeneratorConfig:
    """The causal transformer that decodes the answer from the prefix F."""

    # hub name or local folder of any AutoModelForCausalLM; empty = build from kwargs
    name: str = ""
    # transformers config values: a from-scratch model (with model_type), or changes to a named one's config
    kwargs: dict = field(default_factory=lambda: copy.deepcopy(SCRATCH_GENERATOR))
    attn_implementation: str = "sdpa"
    freeze: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        check_finite_values("model.generator.kwargs", self.kwargs)
        if self.name and self.kwargs == SCRATCH_GENERATOR:
            # inherited with the defaults by a config that only names a model: they describe the default
            # from-scratch generator, not changes to the named one, and must not be recorded as built
            self.kwargs = {}
        self.lora.check("model.generator.lora.")


PROJECTORS = ("mlp", "linear")


@dataclass
class ProjectorConfig:
    """The projector that maps F (B, Lf, fusion.dim) to the generator's width: the prefix (B, Lf, width)."""

    # "mlp": LLaVA-1.5's Linear-GELU-Linear; "linear": one Linear
    type: str = "mlp"
    # width of the mlp's hidden layer; 0 = the generator's width
    hidden_size: int = 0
    freeze: bool = False

    def __post_init__(self) -> None:
        if self.type not in PROJECTORS:
            raise ConfigError(f"unknown model.projector.type '{self.type}'; available: {', '.join(PROJECTORS)}")
        check_fields(self, "model.projector.", hidden_size=">= 0 (0 = the generator's width)")


@dataclass
class TokenizerConfig:
    """The tokenizer trained from scratch when the generator has none of its own."""

    vocab_size: int = 512
    min_frequency: int = 1
    # easy-VQA's questions are all lowercase: a case-sensitive tokenizer gives "What" tokens the model never
    # saw (the default model answered "What color is the shape?" with "yes"); generated text is lowercase
    lowercase: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "model.tokenizer.", vocab_size=">= 1", min_frequency=">= 0")


@dataclass
class PromptTemplates:
    """Task templates turning raw questions into model prompts; its defaults are ModelConfig's.

    Built from a model's config with `from_config` (ModelConfig.vqa_template and caption_prompt).
    """

    vqa: str = "{question}"
    caption: str = "Describe the image."

    @classmethod
    def from_config(cls, config: ModelConfig | Mapping[str, str]) -> PromptTemplates:
        """The templates of a ModelConfig, or of a mapping with its vqa_template and caption_prompt (an export's)."""
        fields = config if isinstance(config, Mapping) else vars(config)
        return cls(vqa=fields["vqa_template"], caption=fields["caption_prompt"])

    def __post_init__(self) -> None:
        if "{question}" not in self.vqa:
            raise ValueError(f"prompt template field 'vqa' must contain '{{question}}', got {self.vqa!r}")
        try:
            self.vqa.format(question="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"prompt template field 'vqa' is not a valid format string ({e!r}): {self.vqa!r}"
            ) from None
        if not self.caption.strip():
            raise ValueError("prompt template field 'caption' must not be empty")


@dataclass
class ModelConfig:
    """The whole model: text encoder, image encoder, fusion, projector, generator."""

    # old spellings, still read (with a FutureWarning) so configs and model folders written before keep loading
    RENAMED: ClassVar[dict[str, str]] = {
        "fusion.name": "fusion.type",
        "text_encoder.hf_config": "text_encoder.kwargs",
        "generator.hf_config": "generator.kwargs",
        "generator.freeze_projector": "projector.freeze",
    }
    # settings a saved config.json leaves out at these values, so one-image model folders stay readable by
    # versions of mmgpt that predate them (model_dict)
    UNWRITTEN_DEFAULTS: ClassVar[dict[str, Any]] = {
        "max_images": 1, "image_encoder.tiling": {"rows": 0, "cols": 0}, "image_encoder.pixel_shuffle": 1,
        "fusion.image_prefix": False,
    }

    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    max_answer_length: int = 32
    # images one prompt may hold; above 1, image tokens carry a learned embedding of which image they are
    max_images: int = 1
    # prompt used when answer() is given an empty prompt (captioning)
    caption_prompt: str = PromptTemplates.caption
    vqa_template: str = PromptTemplates.vqa
    # prompts go through the generator tokenizer's chat template when it has one (instruct models)
    chat_template: bool = True
    # the system message of chat-template prompts; empty = the template's own default, if any
    system_prompt: str = ""

    def __post_init__(self) -> None:
        check_fields(self, "model.", max_answer_length=">= 2", max_images=">= 1")
        if "{question}" not in self.vqa_template:
            raise ConfigError(f"model.vqa_template must contain '{{question}}', got {self.vqa_template!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true/false; yes/no/on/off stay text (`mixed_precision: no` is "no").

    A key given twice in one mapping is an error (YAML 1.2 forbids it; PyYAML keeps the last silently, so a
    setting typed twice would quietly lose one of them).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """A mapping node -> dict, refusing a key it holds twice."""
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges a mapping its own keys may override
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the base constructor reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML follows YAML 1.1, where an unquoted no/off/yes/on is a boolean: `mixed_precision=no` became False
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
# a bool field still takes the YAML 1.1 words, so `freeze: yes` keeps working
_BOOL_WORDS = {"yes": True, "on": True, "no": False, "off": False}


def parse_yaml(text: str) -> Any:
    """Parse YAML text as configs do: safe, and with only true/false as booleans."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp`, converting where it is lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp is bool and isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    if tp in (int, float, bool, str):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def _renamed_keys(cls: type, data: dict, prefix: str) -> dict:
    """`data` with the old spellings in `cls.RENAMED` moved to their new keys, each with a FutureWarning."""
    for old, new in getattr(cls, "RENAMED", {}).items():
        *old_sections, old_key = old.split(".")
        node = data
        for section in old_sections:
            node = node.get(section) if isinstance(node, dict) else None
        if not isinstance(node, dict) or old_key not in node:
            continue
        where = f"{prefix}." if prefix else ""
        *new_sections, new_key = new.split(".")
        # copies along both paths, so the caller's dicts stay as they were
        data = copy.copy(data)
        parent = data
        for section in old_sections:
            parent[section] = parent = dict(parent[section])
        value = parent.pop(old_key)
        target = data
        for section in new_sections:
            child = target.get(section)
            target[section] = target = dict(child) if isinstance(child, dict) else {}
        if new_key in target:
            raise ConfigError(
                f"config keys '{where}{old}' and '{where}{new}' are the same setting: keep only '{where}{new}'"
            )
        target[new_key] = value
        warnings.warn(f"config key '{where}{old}' is now '{where}{new}'; the old spelling will stop working",
                      FutureWarning, stacklevel=3)
    return data


def upgrade_keys(cls: type, data: dict, prefix: str = "") -> dict:
    """`data` for dataclass `cls` with the old spellings of every section (their RENAMED) moved to the new keys."""
    data = _renamed_keys(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    for section in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[section.name]) and isinstance(data.get(section.name), dict):
            dotted = f"{prefix}.{section.name}" if prefix else section.name
            upgraded = upgrade_keys(hints[section.name], data[section.name], dotted)
            if upgraded is not data[section.name]:
                data = {**data, section.name: upgraded}
    return data


def _renamed_path(cls: type, path: list[str]) -> list[str]:
    """An override's key path with an old spelling (RENAMED by a section on the way) replaced by the new one."""
    section, depth = cls, 0
    while dataclasses.is_dataclass(section) and depth < len(path):
        rest = path[depth:]
        for old, new in getattr(section, "RENAMED", {}).items():
            old_path = old.split(".")
            if rest[: len(old_path)] == old_path:
                where = ".".join(path[:depth] + [""])
                warnings.warn(f"config key '{where}{old}' is now '{where}{new}'; the old spelling will stop working",
                              FutureWarning, stacklevel=4)
                return path[:depth] + new.split(".") + rest[len(old_path):]
        section = typing.get_type_hints(section).get(path[depth])
        depth += 1
    return path


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or cls.__name__}' must be a mapping, got {data!r}")
    data = _renamed_keys(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'; available: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config section '{prefix or cls.__name__}': {e}") from e


def to_dict(cfg: Any) -> dict:
    """Turn a config dataclass into plain dicts and lists (for YAML/JSON)."""
    return dataclasses.asdict(cfg)


def model_dict(config: ModelConfig) -> dict:
    """A ModelConfig as a saved model's config.json holds it: `to_dict`, less ModelConfig.UNWRITTEN_DEFAULTS."""
    data = to_dict(config)
    for dotted, value in ModelConfig.UNWRITTEN_DEFAULTS.items():
        *parents, name = dotted.split(".")
        section = data
        for parent in parents:
            section = section[parent]
        if section.get(name) == value:
            del section[name]
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b.c=value' into (['a','b','c'], parsed value); values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=3e-4)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML, e.g. "a: b: c": plain text
    except RecursionError as e:
        raise ConfigError(f"override '{key.strip()}' nests too deeply to parse") from e
    check_config_size(value, f"override '{key.strip()}'")
    # only [...] and {...} make lists and mappings: "Q: {question}" or "- x" is text, and "#1" is no comment
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("[", "{")):
        value = raw
    elif value is None and raw.strip() not in ("null", "Null", "NULL", "~"):
        value = raw
    # YAML reads 3e-4 as a string; numbers written that way are still numbers
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str], defaults: dict | None = None, cls: type | None = None) -> dict:
    """Apply `key=value` overrides to a nested dict (keys are validated later by from_dict).

    A section missing from `data` starts as its copy in `defaults` (e.g. `to_dict(cls())`), so
    `generator.kwargs.hidden_size=48` changes one key of the default mapping instead of replacing it.
    With the config dataclass `cls`, old key spellings in `data` and in the overrides become the new ones first.
    """
    if cls is not None:
        data = upgrade_keys(cls, data)
    for text in overrides:
        path, value = parse_override(text)
        if cls is not None:
            path = _renamed_path(cls, path)
        node, default = data, defaults
        for i, part in enumerate(path[:-1]):
            default = default.get(part) if isinstance(default, dict) else None
            child = node.get(part)
            if child is None:
                child = node[part] = copy.deepcopy(default) if isinstance(default, dict) else {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(path[: i + 1])}' is not a section")
            node = child
        node[path[-1]] = value
    return data


# far above any real config (a transformers config with 21k ImageNet labels has ~45k values), far below
# what a few nested YAML aliases can multiply a small file into
MAX_CONFIG_VALUES = 200_000
MAX_CONFIG_DEPTH = 32
MAX_JSON_BYTES = 16 * 2**20
# YAML is parsed in pure Python at ~350 bytes of memory and ~40 us per input byte: 256 KiB is some 100 times the
# largest preset and parses in seconds, while a file of a gigabyte would take gigabytes and hours
MAX_YAML_BYTES = 256 * 2**10


def _key_path(keys: list) -> str:
    """['model', 'kwargs', 3] -> 'model.kwargs[3]'; the top level when empty."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return f"'{text}'" if text else "the top level"


def _children(node: Any) -> list[tuple[Any, Any]]:
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, (list, tuple)):
        return list(enumerate(node))
    return []


def check_config_size(data: Any, source: str) -> None:
    """Refuse loaded config data that nests too deeply, contains itself, or is huge once aliases are expanded.

    YAML aliases make one object appear many times, so a 1 KB file can stand for billions of values
    that copying, printing or saving the config would expand. The count memoises each shared object
    by id, so it costs one visit per distinct object and never expands anything itself.
    """
    if not isinstance(data, (dict, list, tuple)):
        return
    sizes: dict[int, int] = {}
    # each frame: [node, its remaining children, values counted so far, key that led here]
    stack: list[list] = [[data, iter(_children(data)), 1, None]]
    on_path = {id(data)}
    while stack:
        frame = stack[-1]
        for key, child in frame[1]:
            # a mapping key counts as a value of its own
            frame[2] += 1 if isinstance(frame[0], dict) else 0
            if not isinstance(child, (dict, list, tuple)):
                frame[2] += 1
            elif id(child) in sizes:
                frame[2] += sizes[id(child)]
            elif id(child) in on_path:
                keys = [f[3] for f in stack[1:]] + [key]
                raise ConfigError(
                    f"{source}: {_key_path(keys)} contains itself (a YAML alias inside its own anchor); "
                    "write the value out instead"
                )
            elif len(stack) >= MAX_CONFIG_DEPTH:
                keys = [f[3] for f in stack[1:]] + [key]
                shown = _key_path(keys[:6])[:-1] + "...'" if len(keys) > 6 else _key_path(keys)
                raise ConfigError(
                    f"{source}: {shown} nests deeper than {MAX_CONFIG_DEPTH} levels; a config needs a few, "
                    "so this is damaged or not a config"
                )
            else:
                on_path.add(id(child))
                stack.append([child, iter(_children(child)), 1, key])
                break
        else:
            stack.pop()
            on_path.discard(id(frame[0]))
            sizes[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
    if sizes[id(data)] <= MAX_CONFIG_VALUES:
        return
    # name the key that holds the bulk: follow the largest over-limit mapping entry down
    keys: list = []
    node = data
    while isinstance(node, dict):
        over = [(sizes.get(id(v), 1), k, v) for k, v in node.items() if sizes.get(id(v), 1) > MAX_CONFIG_VALUES]
        if not over:
            break
        _, key, node = max(over, key=lambda item: item[0])
        keys.append(key)
    raise ConfigError(
        f"{source}: {_key_path(keys)} holds {sizes[id(node)]:,} values, counting each YAML alias (*name) at every "
        f"use; the limit is {MAX_CONFIG_VALUES:,}. A config needs far fewer: remove the aliases that multiply "
        "each other (or the bulk data)"
    )


def read_capped(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of `path`, refusing (naming the file and the limit) one longer than `max_bytes`.

    The read itself stops after the limit, so a file that grows or lies about its size is never read whole.
    """
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = path.stat().st_size
        shown = f"{size:,} bytes" if size > max_bytes else f"over {max_bytes:,} bytes"
        raise ConfigError(f"{path} is {shown}; {what} is far smaller (the limit is {max_bytes:,})")
    return data


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict, refusing huge ones, with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = read_capped(path, MAX_YAML_BYTES, "a config file").decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = parse_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"config file {path} nests too deeply to parse; a config needs a few levels") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    check_config_size(data, f"config file {path}")
    return data


def load_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """Read a JSON object file (e.g. a model folder's config.json), refusing damaged, huge or deeply nested ones."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    raw = read_capped(path, max_bytes, "a config file")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{path} nests too deeply to parse; a config needs a few levels") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object ({{...}}) at the top level, got {type(data).__name__}")
    check_config_size(data, str(path))
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from an optional YAML file plus `key=value` overrides."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []), defaults=to_dict(cls()), cls=cls)
    return from_dict(cls, data)

