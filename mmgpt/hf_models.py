"""One place where Hugging Face parts are read: configs, models, tokenizers and image processors.

A part is named by a hub name or a local folder (`name`), whose config the part's `kwargs` may change, or built
from scratch from a config mapping with a `model_type`. A local folder is read with local_files_only, so a saved
model never reaches the hub; a hub name is used only when the config asks for it. A model folder is data, never
code: every loader passes trust_remote_code=False (so transformers never asks on stdin either), and a folder whose
configs name Python code to import (`auto_map`) or an architecture transformers lacks is refused first, naming the
file.
"""
from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


# the file each loader reads first: the one named when a hub model can be neither fetched nor found in the cache
FIRST_FILES = {AutoTokenizer: "tokenizer_config.json", AutoImageProcessor: "preprocessor_config.json"}


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


def load_pretrained(loader: Any, name: str | Path, key: str = "", **kwargs: Any) -> Any:
    """`loader.from_pretrained(name)` for a transformers Auto* class: remote code refused, a folder read offline.

    A hub name is read from the cache while the hub is out of reach, and fails at once, naming `key` (the config
    key that names it) and the file, when it is not cached there (hub_files_only).
    """
    local = Path(name).is_dir()
    if local:
        refuse_model_code(name)
    if "local_files_only" not in kwargs:
        kwargs["local_files_only"] = local or hub_files_only(str(name), key, FIRST_FILES.get(loader, "config.json"))
    try:
        return loader.from_pretrained(name, trust_remote_code=False, **kwargs)
    except ValueError as e:
        # a hub repo's files are checked by transformers itself once downloaded
        if "trust_remote_code" not in str(e):
            raise
        raise ConfigError(f"{name}: its configs name Python code shipped with the model (auto_map); mmgpt never "
                          "runs a model's own code: use a model whose architecture transformers provides") from None


def load_hf_config(name: str | Path, sub_config: str = "", key: str = "") -> transformers.PretrainedConfig:
    """The config of a hub name or folder; `sub_config` takes one part of a composite one (CLIP's vision_config)."""
    config = load_pretrained(AutoConfig, name, key)
    return getattr(config, sub_config, config) if sub_config else config


# how a tokenizer was read, which transformers keeps among its init arguments and would write into every saved copy
LOAD_ONLY_KWARGS = ("local_files_only", "is_local")


def load_hf_tokenizer(name: str | Path, **kwargs: Any) -> Any:
    """The tokenizer of a hub name or folder; a copy it saves holds what it was saved from, not how it was read."""
    tokenizer = load_pretrained(AutoTokenizer, name, **kwargs)
    for key in LOAD_ONLY_KWARGS:
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


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
        # a folder (a saved model's part, a local checkpoint) is read from its own files only; a hub name
        # without a reachable hub, from the cache (load_pretrained)
        config = load_hf_config(name, sub_config, key=f"{key.rsplit('.', 1)[0]}.name")
        change_config(config, scratch_config, key, name)
        where = Path(name) / "config.json" if Path(name).is_dir() else f"{name}'s config.json"
        check_transformer_config(config, f"{where}: ", what)
        if load_weights:
            try:
                return load_pretrained(auto_class, name, config=config, key=f"{key.rsplit('.', 1)[0]}.name",
                                       **model_kwargs)
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


@functools.cache
def _hub_unreachable() -> str:
    """Why the Hugging Face hub cannot be reached ('' when it can): offline mode, or no connection within seconds.

    The libraries' own downloads retry for half a minute before a generic error; one quick connection says it
    at once. Behind a proxy the connection goes through it, so nothing is tried here.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    endpoint = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
    except OSError as e:
        return f"{endpoint.hostname} unreachable: {e}"
    return ""


def hub_files_only(name: str, key: str, filename: str = "config.json") -> bool:
    """Whether to read `name` with local_files_only: a local folder, or a hub model cached while offline.

    A hub name that is neither reachable nor cached fails here, in one line naming the file and the fix.
    """
    if Path(name).expanduser().is_dir():
        return True
    reason = _hub_unreachable()
    if not reason:
        return False
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, filename), str):
        return True
    fix = f"set {key} to that folder" if key else "use that folder instead"
    raise OSError(f"{key + ' ' if key else ''}'{name}': cannot fetch {filename} from the Hugging Face hub ({reason}) "
                  f"and it is not in the local cache; download the model where there is a network (hf download "
                  f"{name} --local-dir DIR) and {fix}")
