"""One place where Hugging Face parts are read: configs, models, tokenizers and image processors.

A part is named by a hub name or a local folder (`name`), whose config the part's `kwargs` may change, or built
from scratch from a config mapping with a `model_type`. A local folder is read with local_files_only, so a saved
model never reaches the hub; a hub name is used only when the config asks for it. A model folder is data, never
code: every loader passes trust_remote_code=False (so transformers never asks on stdin either), and a folder whose
configs name Python code to import (`auto_map`) or an architecture transformers lacks is refused first, naming the
file.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mmgpt.config import ConfigError, load_json
from mmgpt.model_size import check_transformer_config

# the only way to ask for a hub model: a mistyped local path must never reach the network
HUB_PREFIX = "hf://"
# the files through which transformers imports Python code shipped beside a model (their `auto_map`)
CODE_ENTRY_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                    "video_preprocessor_config.json")


def refuse_model_code(folder: str | Path) -> None:
    """Raise ConfigError, naming the file, if `folder` would make transformers run code shipped in it."""
    folder = Path(folder)
    for file_name in CODE_ENTRY_FILES:
        path = folder / file_name
        if not path.is_file():
            continue
        data = load_json(path)
        if "auto_map" in data:
            raise ConfigError(
                f"{path}: 'auto_map' names Python code shipped with the model ({_code_names(data['auto_map'])}); "
                "mmgpt reads model folders as data and never runs their code: use a model whose architecture "
                "transformers provides"
            )
        model_type = data.get("model_type")
        if file_name == "config.json" and model_type is not None and model_type not in CONFIG_MAPPING:
            raise ConfigError(
                f"{path}: model_type {model_type!r} is not an architecture transformers {transformers.__version__} "
                "provides, and mmgpt never runs code shipped with a model; use a supported model_type "
                "(llama, qwen2, gpt2, bert, siglip_vision_model, ...) or upgrade transformers"
            )


def _code_names(auto_map: Any) -> str:
    """What an auto_map points at, briefly: 'modeling_x.XModel, ...'."""
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    names = [", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for v in values]
    return ", ".join(names)[:200]


def load_pretrained(loader: Any, name: str | Path, **kwargs: Any) -> Any:
    """`loader.from_pretrained(name)` for a transformers Auto* class: remote code refused, a folder read offline."""
    local = Path(name).is_dir()
    if local:
        refuse_model_code(name)
    kwargs.setdefault("local_files_only", local)
    try:
        return loader.from_pretrained(name, trust_remote_code=False, **kwargs)
    except ValueError as e:
        # a hub repo's files are checked by transformers itself once downloaded
        if "trust_remote_code" not in str(e):
            raise
        raise ConfigError(f"{name}: its configs name Python code shipped with the model (auto_map); mmgpt never "
                          "runs a model's own code: use a model whose architecture transformers provides") from None


def load_hf_config(name: str | Path, sub_config: str = "") -> transformers.PretrainedConfig:
    """The config of a hub name or folder; `sub_config` takes one part of a composite one (CLIP's vision_config)."""
    config = load_pretrained(AutoConfig, name)
    return getattr(config, sub_config, config) if sub_config else config


def load_hf_tokenizer(name: str | Path, **kwargs: Any) -> Any:
    """The tokenizer of a hub name or folder."""
    return load_pretrained(AutoTokenizer, name, **kwargs)


def load_hf_image_processor(name: str | Path) -> Any:
    """The image processor of a hub name or folder."""
    return load_pretrained(AutoImageProcessor, name)


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
    """`auto_class` model for `name` (weights only if `load_weights`) changed by `scratch_config`, else built from it.

    `key` is the dotted config key of `scratch_config` (for error messages); `missing_model_type` is the
    error when there is neither a name nor a model_type. With a `tokenizer`, the vocabulary defaults to its
    size and may not be smaller. `defaults` fill keys the scratch config lacks, `overrides` replace them.
    `sub_config` takes one part of a composite checkpoint's config (e.g. CLIP's `vision_config`).
    """
    what = key.split(".")[1].replace("_", " ")  # model.text_encoder.kwargs -> text encoder
    if name:
        # a folder (a saved model's part, a local checkpoint) is read from its own files only
        config = load_hf_config(name, sub_config)
        change_config(config, scratch_config, key, name)
        where = Path(name) / "config.json" if Path(name).is_dir() else f"{name}'s config.json"
        check_transformer_config(config, f"{where}: ", what)
        if load_weights:
            try:
                return load_pretrained(auto_class, name, config=config, **model_kwargs)
            except RuntimeError as e:
                if not scratch_config:
                    raise
                # transformers refuses weights whose shapes the changed config no longer has
                raise ConfigError(f"{key} ({', '.join(sorted(scratch_config))}) changes the shapes of the weights of "
                                  f"'{name}', which then do not load: change only settings that keep them") from e
        # rebuilding a saved model: its weights come from the model's own file afterwards
        return auto_class.from_config(config, trust_remote_code=False, **model_kwargs)
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
    check_transformer_config(config, f"{key}.", what)
    return auto_class.from_config(config, trust_remote_code=False, **model_kwargs)


def change_config(config: transformers.PretrainedConfig, changes: Mapping[str, Any], key: str, name: str) -> None:
    """Apply a part's `kwargs` to the config of the model it names, refusing keys that config does not have."""
    changes = dict(changes)
    model_type = changes.pop("model_type", config.model_type)
    if model_type != config.model_type:
        raise ConfigError(
            f"{key}.model_type '{model_type}' is not the type of '{name}' ({config.model_type}): with a name, {key} "
            f"only changes that model's config (here: {', '.join(sorted(changes)) or 'nothing else'}); set {key} to "
            "{} to load the model as it is, or leave the name empty to build a model from scratch from it")
    unknown = sorted(k for k in changes if not hasattr(config, k))
    if unknown:
        raise ConfigError(f"{key}: {', '.join(unknown)} not in the {config.model_type} config of '{name}', "
                          "so it cannot be changed")
    for k, v in changes.items():
        setattr(config, k, v)
