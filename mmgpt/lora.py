"""LoRA adapters (peft) on the Hugging Face parts: inject, merge for saving, adapter-only folders.

Adapters are injected in place (peft.inject_adapter_in_model), so parameter names keep their component
prefix (`generator.model.layers.0.self_attn.q_proj.lora_A.default.weight`) and freezing, optimizer groups,
DDP and checkpoints treat them like any other parameter.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import _remove_duplicate_names, load_file, save_file
from torch import nn

from mmgpt.config import ConfigError, LoraConfig, ModelConfig

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


def save_adapter_folder(model: nn.Module, config: ModelConfig, folder: Path, weights_name: str) -> None:
    """Adapters to adapter_model.safetensors, the trained rest to `weights_name`; the adapted parts' base weights
    are not written: adapter_config.json names the base models they come from."""
    bases = base_names(model, config)
    state = model.state_dict()
    adapters = {k: v.detach().contiguous() for k, v in state.items() if is_adapter(k)}
    rest = {k: v for k, v in state.items() if not is_adapter(k) and k.split(".", 1)[0] not in bases}
    save_file(adapters, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    save_file(_without_shared_copies(rest), str(folder / weights_name), metadata={"format": "pt"})
    lora = {part: {"r": getattr(config, part).lora.r, "alpha": getattr(config, part).lora.alpha,
                   "target_modules": getattr(config, part).lora.target_modules} for part in bases}
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"base_models": bases, "lora": lora}, indent=2))


def is_adapter_folder(folder: Path) -> bool:
    """Whether a model folder holds adapters only (its adapted parts' base weights come from their base models)."""
    return (folder / ADAPTER_CONFIG).is_file()


def load_adapter_folder(model: nn.Module, folder: Path, config: ModelConfig, weights_name: str,
                        build_part: Any) -> None:
    """Fill `model` from an adapter-only folder: base weights of each adapted part from its base model
    (`build_part(part)` builds it with pretrained weights), then the folder's trained weights and adapters."""
    from mmgpt.config import load_json

    bases = load_json(folder / ADAPTER_CONFIG).get("base_models", {})
    if not isinstance(bases, dict) or set(bases) != set(adapted_parts(config)):
        raise ValueError(f"{folder / ADAPTER_CONFIG}: base_models {bases!r} do not match the adapted parts "
                         f"{adapted_parts(config)} of {folder / 'config.json'}")
    filled: set[str] = set()
    state = model.state_dict()
    for part in bases:
        base_state = build_part(part).state_dict()
        own = {k: v for k, v in state.items() if k.split(".", 1)[0] == part and not is_adapter(k)}
        for key in own:
            # the part's own names: without the component prefix and peft's base_layer
            plain = key.split(".", 1)[1].replace(".base_layer.", ".")
            if plain in base_state:
                own[key].copy_(base_state[plain])
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
                         f"models {bases} hold them)")
