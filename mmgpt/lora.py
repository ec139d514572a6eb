"""LoRA adapters (peft) on the Hugging Face parts: inject, merge for saving, adapter-only folders.

Adapters are injected in place (peft.inject_adapter_in_model), so parameter names keep their component
prefix (`generator.model.layers.0.self_attn.q_proj.lora_A.default.weight`) and freezing, optimizer groups,
DDP and checkpoints treat them like any other parameter.
"""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import _remove_duplicate_names, load_file, save_file
from torch import nn

from mmgpt.config import ConfigError, LoraConfig, ModelConfig
from mmgpt.hf_models import HUB_PREFIX
from mmgpt.model_size import check_lora_rank
from mmgpt.saving import write_json

PARTS = ("generator", "text_encoder", "image_encoder")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# the projections LoRA adapts per architecture (config.model_type); others fall back to peft's own table
AUTO_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "siglip_vision_model": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "clip_vision_model": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
}


def hf_module(model: nn.Module, part: str) -> nn.Module | None:
    """The transformers model of a part (the generator, an hf encoder's .model), or None (timm, lm_embeddings)."""
    module = getattr(model, part)
    if part == "generator":
        return module
    inner = getattr(module, "model", None)
    return inner if inner is not None and hasattr(inner, "config") else None


def target_modules(module: nn.Module, cfg: LoraConfig, key: str) -> list[str]:
    """The module names to adapt: cfg.target_modules, or the architecture's projections for 'auto'."""
    if cfg.target_modules != "auto":
        return [cfg.target_modules] if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    model_type = module.config.model_type
    if model_type in AUTO_TARGETS:
        return AUTO_TARGETS[model_type]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    if model_type in PEFT_TARGETS:
        return list(PEFT_TARGETS[model_type])
    raise ConfigError(f"{key}.target_modules: 'auto' knows no projections for model_type '{model_type}' (known: "
                      f"{', '.join(sorted(AUTO_TARGETS))}); list the module names to adapt")


def add_adapters(model: nn.Module, config: ModelConfig) -> None:
    """Inject LoRA adapters into every part whose config has lora.r > 0."""
    for part in PARTS:
        cfg: LoraConfig = getattr(config, part).lora
        if cfg.r == 0:
            continue
        key = f"model.{part}.lora"
        module = hf_module(model, part)
        if module is None:
            raise ConfigError(f"{key}: LoRA needs a Hugging Face model as model.{part} (type 'hf' or the generator), "
                              f"not type '{getattr(config, part).type}'; set {key}.r=0")
        try:
            import peft
        except ImportError as e:
            raise ConfigError(f"{key}.r={cfg.r} needs peft: pip install 'mmgpt[finetune]'") from e

        check_lora_rank(module.config, cfg.r, f"{key}.r", f"{part.replace('_', ' ')}'s LoRA adapters")
        # GPT-2's Conv1D stores its weight transposed
        peft_config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                      target_modules=target_modules(module, cfg, key),
                                      fan_in_fan_out=module.config.model_type == "gpt2")
        try:
            peft.inject_adapter_in_model(peft_config, module)
        except ValueError as e:
            raise ConfigError(f"{key}.target_modules: {' '.join(str(e).split())}") from e


def is_adapter(name: str) -> bool:
    """Whether a parameter or state-dict name belongs to a LoRA adapter."""
    return ".lora_" in name


def has_adapters(model: nn.Module) -> bool:
    """Whether any part carries LoRA adapters."""
    return any(is_adapter(name) for name, _ in model.named_parameters())


def adapted_parts(config: ModelConfig) -> list[str]:
    """The parts whose config asks for adapters."""
    return [part for part in PARTS if getattr(config, part).lora.r > 0]


def merged_config(config: ModelConfig) -> ModelConfig:
    """A copy of `config` without adapters: what a merged model is rebuilt from."""
    merged = copy.deepcopy(config)
    for part in PARTS:
        getattr(merged, part).lora = LoraConfig()
    return merged


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights with every adapter folded into its base layer, named as in the model without adapters.

    The delta is added to a copy, so the model keeps training unchanged; tied tensors are kept once, under the
    name the plain model saves them as.
    """
    from peft.tuners.lora import LoraLayer

    deltas = {name: layer.get_delta_weight(layer.active_adapters[0]) for name, layer in model.named_modules()
              if isinstance(layer, LoraLayer)}
    merged = {}
    for key, value in model.state_dict().items():
        if is_adapter(key):
            continue
        owner, _, rest = key.partition(".base_layer.")
        if rest:
            key = f"{owner}.{rest}"
            if rest == "weight":
                value = value + deltas[owner].to(value.dtype)
        merged[key] = value
    return _without_shared_copies(merged)


def _without_shared_copies(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One name per shared tensor (tied embeddings), as safetensors' save_model keeps them; contiguous copies."""
    drop = {name for names in _remove_duplicate_names(state).values() for name in names}
    return {key: value.detach().contiguous() for key, value in state.items() if key not in drop}


def base_names(model: nn.Module, config: ModelConfig) -> dict[str, str]:
    """{part: hub name or folder} of every adapted part: where an adapter-only folder finds its base weights."""
    names = {}
    for part in adapted_parts(config):
        name = getattr(config, part).name
        if not name:
            raise ValueError(f"save_pretrained(merge_lora=False): model.{part} is built from kwargs, so there is no "
                             "base model its adapters could be loaded onto; save it merged (merge_lora=True)")
        names[part] = name
    return names


def _plain_name(key: str) -> str:
    """A model's state-dict name as its part's own model names it: no component prefix, no peft base_layer."""
    return key.split(".", 1)[1].replace(".base_layer.", ".")


def base_state(model: nn.Module, part: str) -> dict[str, torch.Tensor]:
    """The base (non-adapter) weights of one adapted part, under the part's own names."""
    return {_plain_name(k): v for k, v in model.state_dict().items()
            if k.split(".", 1)[0] == part and not is_adapter(k)}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors, floats as float32 (so a bf16 copy of the same values hashes alike)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _location(name: str, folder: Path) -> str:
    """Where a base model is, as an adapter-only folder at `folder` records it: a path relative to the folder,
    or hf://org/name for a hub model."""
    path = Path(name).expanduser()
    if path.is_dir():
        return os.path.relpath(path.resolve(), folder.resolve())
    return name if name.startswith(HUB_PREFIX) else HUB_PREFIX + name


def save_adapter_folder(model: nn.Module, config: ModelConfig, tmp: Path, folder: Path, weights_name: str) -> None:
    """Adapters to adapter_model.safetensors, the trained rest to `weights_name`, all in `tmp` (which becomes
    `folder`); the adapted parts' base weights are not written: adapter_config.json records each base model's
    name, its location (relative to `folder`, or hf://org/name) and a hash of its weights."""
    bases = base_names(model, config)
    state = model.state_dict()
    adapters = {k: v.detach().contiguous() for k, v in state.items() if is_adapter(k)}
    rest = {k: v for k, v in state.items() if not is_adapter(k) and k.split(".", 1)[0] not in bases}
    save_file(adapters, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    save_file(_without_shared_copies(rest), str(tmp / weights_name), metadata={"format": "pt"})
    records = {part: {"name": name, "location": _location(name, folder),
                      "sha256": weights_digest(base_state(model, part))} for part, name in bases.items()}
    lora = {part: {"r": getattr(config, part).lora.r, "alpha": getattr(config, part).lora.alpha,
                   "target_modules": getattr(config, part).lora.target_modules} for part in bases}
    write_json(tmp / ADAPTER_CONFIG, {"base_models": records, "lora": lora}, indent=2)


def is_adapter_folder(folder: Path) -> bool:
    """Whether a model folder holds adapters only (its adapted parts' base weights come from their base models)."""
    return (folder / ADAPTER_CONFIG).is_file()


def base_records(folder: Path, config: ModelConfig) -> dict[str, dict[str, str]]:
    """adapter_config.json's base models, checked against the adapted parts and names of `config`."""
    from mmgpt.config import load_json

    file = folder / ADAPTER_CONFIG
    records = load_json(file).get("base_models", {})
    parts = adapted_parts(config)
    if not isinstance(records, dict) or set(records) != set(parts):
        raise ValueError(f"{file}: base_models {str(records)[:200]} do not match the adapted parts {parts} of "
                         f"{folder / 'config.json'}")
    for part, record in records.items():
        if not (isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("name", "location",
                                                                                        "sha256"))):
            raise ValueError(f"{file}: base_models.{part} must record the base model's name, location and sha256 "
                             f"(got {str(record)[:200]}); save the model again with save_pretrained")
        if record["name"] != getattr(config, part).name:
            raise ValueError(f"{file}: base_models.{part} is {record['name']!r}, but {folder / 'config.json'} names "
                             f"{getattr(config, part).name!r}: the two files come from different models")
    return records


def base_location(folder: Path, record: dict[str, str], part: str) -> str:
    """hf://org/name as recorded, else the recorded folder resolved against `folder` (never the working directory)."""
    location = record["location"]
    if location.startswith(HUB_PREFIX):
        return location
    path = folder / location
    if not path.is_dir():
        raise ValueError(f"{folder / ADAPTER_CONFIG}: the base model of {part} is not at {path} ('{location}' from "
                         f"the folder); keep it there, or name a hub model as {HUB_PREFIX}org/name")
    return str(path)


def load_adapter_folder(model: nn.Module, folder: Path, config: ModelConfig, weights_name: str,
                        build_part: Any) -> None:
    """Fill `model` from an adapter-only folder: base weights of each adapted part from its base model
    (`build_part(part, location)` builds it with pretrained weights), checked against the recorded hash, then the
    folder's trained weights and adapters."""
    records = base_records(folder, config)
    filled: set[str] = set()
    state = model.state_dict()
    for part, record in records.items():
        location = base_location(folder, record, part)
        built = build_part(part, location).state_dict()
        own = {k: v for k, v in state.items() if k.split(".", 1)[0] == part and not is_adapter(k)}
        base = {_plain_name(k): built[_plain_name(k)] for k in own if _plain_name(k) in built}
        if weights_digest(base) != record["sha256"]:
            raise ValueError(f"{folder / ADAPTER_CONFIG}: the base model of {part} at {location} is not the one its "
                             f"adapters were trained on (its weights' sha256 differs from the recorded "
                             f"{record['sha256'][:12]}...)")
        for key in own:
            if _plain_name(key) in base:
                own[key].copy_(base[_plain_name(key)])
                filled.add(key)
    for file in (folder / weights_name, folder / ADAPTER_WEIGHTS):
        for key, value in load_file(str(file)).items():
            if key not in state:
                raise ValueError(f"{file}: '{key}' is not a weight of the model in {folder / 'config.json'}")
            state[key].copy_(value)
            filled.add(key)
    # tied names share storage with a filled one
    filled_ptrs = {state[k].data_ptr() for k in filled}
    missing = [k for k, v in state.items() if k not in filled and v.data_ptr() not in filled_ptrs]
    if missing:
        raise ValueError(f"the model in {folder} lacks weights for {missing[:5]} (neither its files nor the base "
                         f"models {sorted(records)} hold them)")
