"""One builder for every Hugging Face part (generator, text encoder, vision tower).

A part is named by a hub name or a local folder (`name`), or built from scratch from a config mapping
with a `model_type`. A local folder is read with local_files_only, so a saved model never reaches the hub;
a hub name is used only when the config asks for it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mmgpt.config import ConfigError


def build_hf_model(
    auto_class: Any,
    name: str,
    scratch_config: Mapping[str, Any],
    key: str,
    missing_model_type: str,
    load_weights: bool = True,
    tokenizer: Any = None,
    defaults: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    sub_config: str = "",
    **model_kwargs: Any,
) -> PreTrainedModel:
    """`auto_class` model for `name` (weights only if `load_weights`), else from `scratch_config`.

    `key` is the dotted config key of `scratch_config` (for error messages); `missing_model_type` is the
    error when there is neither a name nor a model_type. With a `tokenizer`, the vocabulary defaults to its
    size and may not be smaller. `defaults` fill keys the scratch config lacks, `overrides` replace them.
    `sub_config` takes one part of a composite checkpoint's config (e.g. CLIP's `vision_config`).
    """
    if name:
        # a folder (a saved model's part, a local checkpoint) is read from its own files only
        local = Path(name).is_dir()
        config = AutoConfig.from_pretrained(name, local_files_only=local)
        config = getattr(config, sub_config, config) if sub_config else config
        if load_weights:
            return auto_class.from_pretrained(name, config=config, local_files_only=local, **model_kwargs)
        # rebuilding a saved model: its weights come from the model's own file afterwards
        return auto_class.from_config(config, **model_kwargs)
    kwargs = dict(scratch_config)
    if "model_type" not in kwargs:
        raise ConfigError(missing_model_type)
    kwargs = {**(defaults or {}), **kwargs}
    if tokenizer is not None:
        kwargs.setdefault("vocab_size", len(tokenizer))
        if kwargs["vocab_size"] < len(tokenizer):
            raise ConfigError(
                f"{key}.vocab_size ({kwargs['vocab_size']}) is smaller than the tokenizer ({len(tokenizer)} tokens)"
            )
    kwargs.update(overrides or {})
    model_type = kwargs.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except ValueError as e:
        where = key if model_type in CONFIG_MAPPING else f"{key}.model_type '{model_type}'"
        raise ConfigError(f"{where}: {e}") from e
    return auto_class.from_config(config, **model_kwargs)

