"""Config tree: nested dataclasses, loaded from YAML, overridden by `key=value`.

Every field is checked when the config is built, so a typo or a wrong type fails
before any model is created, with the dotted name of the offending key.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it."""


@dataclass
class TextEncoderConfig:
    """Which text encoder turns the prompt into T of shape (batch, text_len, d_text)."""

    # registry key in mmgpt.encoders.TEXT_ENCODERS
    type: str = "lm_embeddings"
    # hub name or local folder of a Hugging Face encoder (type "hf"); empty = build from hf_config
    name: str = ""
    # transformers config for a from-scratch encoder, e.g. {"model_type": "bert", "hidden_size": 64}
    hf_config: dict = field(default_factory=dict)
    max_length: int = 64
    freeze: bool = False


@dataclass
class ImageEncoderConfig:
    """Which image encoder turns pixels into I of shape (batch, image_len, d_image)."""

    # registry key in mmgpt.encoders.IMAGE_ENCODERS: "timm" or "hf"
    type: str = "timm"
    # timm model name, or hub name / local folder of a CLIP/SigLIP vision tower (type "hf")
    name: str = "mmgpt_tiny_cnn"
    # timm: load hub weights; ignored for type "hf" (a name means pretrained there)
    pretrained: bool = False
    # timm: local weights file (.safetensors) instead of the hub
    weights: str = ""
    # timm create_model overrides, or a from-scratch transformers vision config (type "hf")
    kwargs: dict = field(default_factory=dict)
    # keep ViT class/register tokens in I (dropped by default: they are not patches)
    keep_prefix_tokens: bool = False
    freeze: bool = False


@dataclass
class FusionConfig:
    """Which fusion g combines T and I into F = g(T, I)."""

    name: str = "cross_attention"
    dim: int = 128
    num_layers: int = 1
    num_heads: int = 4
    dropout: float = 0.0
    # add fixed 2-D sin-cos positions to the image tokens (a square grid; 1-D otherwise), so a fusion
    # that treats them as a set (cross-attention, pooling) can still tell where things are
    image_positions: bool = False
    # cross-attention: a learned key/value every text token can attend to. Softmax weights always sum
    # to one, so without it a query cannot say "nothing in the image matches me" (yes/no questions)
    null_token: bool = False
    freeze: bool = False


@dataclass
class GeneratorConfig:
    """The causal transformer that decodes the answer from the prefix F."""

    # hub name or local folder of any AutoModelForCausalLM; empty = build from hf_config
    name: str = ""
    hf_config: dict = field(
        default_factory=lambda: {
            "model_type": "llama",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 256,
            "tie_word_embeddings": True,
            # transformers' 0.02 is tuned for widths in the thousands; at width 128 it shrinks every
            # layer's output so much that the prefix barely reaches the answer (see configs/default.yaml)
            "initializer_range": 0.12,
        }
    )
    attn_implementation: str = "sdpa"
    freeze: bool = False
    # the projector that maps F to the generator's width
    freeze_projector: bool = False


@dataclass
class TokenizerConfig:
    """The tokenizer trained from scratch when the generator has none of its own."""

    vocab_size: int = 512
    min_frequency: int = 1
    lowercase: bool = False


@dataclass
class ModelConfig:
    """The whole model: text encoder, image encoder, fusion, generator."""

    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    max_answer_length: int = 48
    # prompt used when answer() is given an empty prompt (captioning)
    caption_prompt: str = "Describe the image."
    vqa_template: str = "{question}"

    def __post_init__(self) -> None:
        if self.max_answer_length < 2:
            raise ConfigError(f"model.max_answer_length must be >= 2, got {self.max_answer_length}")
        if "{question}" not in self.vqa_template:
            raise ConfigError(f"model.vqa_template must contain '{{question}}', got {self.vqa_template!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


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
    if tp in (int, float, bool, str):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or cls.__name__}' must be a mapping, got {data!r}")
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


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b.c=value' into (['a','b','c'], parsed value); values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=3e-4)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML, e.g. "a: b: c": plain text
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


def apply_overrides(data: dict, overrides: list[str], defaults: dict | None = None) -> dict:
    """Apply `key=value` overrides to a nested dict (keys are validated later by from_dict).

    A section missing from `data` starts as its copy in `defaults` (e.g. `to_dict(cls())`), so
    `generator.hf_config.hidden_size=48` changes one key of the default mapping instead of replacing it.
    """
    for text in overrides:
        path, value = parse_override(text)
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


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict, with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from an optional YAML file plus `key=value` overrides."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []), defaults=to_dict(cls()))
    return from_dict(cls, data)

