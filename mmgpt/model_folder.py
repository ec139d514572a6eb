"""The saved model folder: the one writer of model folders and their loader.

A folder holds config.json ({"model": the model config, "compression"?: how the weights were made smaller}),
model.safetensors, the processor (tokenizer(s), image transform), generation_config.json, each pretrained part's
config and a model card. The loader dispatches on what the folder holds: quantised layers (the "compression"
record, mmgpt.compress), LoRA adapters over their base models (adapter_config.json), or plain weights. The model
composition (mmgpt.model) calls in here for MMGPT.save_pretrained and MMGPT.from_pretrained and imports no
compression code itself.
"""
from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from transformers import GenerationConfig

from mmgpt import lora
from mmgpt.compress import COMPRESSION_KEY, is_quantized, runs_on_cpu_only
from mmgpt.compress.int8 import load_quantized_weights, quantized_state
from mmgpt.config import ConfigError, ModelConfig, from_dict, load_json, model_dict
from mmgpt.decoding import resolve_generation_config
from mmgpt.encoders import build_image_encoder, build_text_encoder
from mmgpt.generator import build_generator
from mmgpt.hf_models import HUB_PREFIX
from mmgpt.model_card import write_model_card
from mmgpt.outputs import writing_output_folder
from mmgpt.processor import Processor
from mmgpt.runtime.manifest import is_export_folder
from mmgpt.saving import existing_copy, write_json

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
# what a saved model holds (configs, weights, tokenizer files); a hub repo's pickles are never fetched
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


class ModelLoadError(ValueError):
    """A model folder is incomplete, damaged or not an mmgpt model; the message names the folder and the problem."""


def is_model_folder(folder: Path) -> bool:
    """Whether `folder` holds a saved model's config and weights."""
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def saved_model_folder(folder: Path) -> Path:
    """`folder`, or its aside copy `.NAME.old` when a save was killed between its two renames (mmgpt.saving)."""
    return existing_copy(folder, is_model_folder) or folder


def save_model_folder(model: Any, folder: str | Path, merge_lora: bool = True, metrics: dict | None = None,
                      datasets: list[str] | None = None, overwrite: bool = True,
                      compression: dict | None = None) -> None:
    """Write `model` (an MMGPT) as a model folder: config.json, model.safetensors, processor, part configs, card.

    LoRA adapters are merged into their layers (a plain model, loadable without peft), or with
    `merge_lora=False` written alone to adapter_model.safetensors, their base weights named by
    adapter_config.json. `metrics` (the final evaluation) and `datasets` go into the model card.

    `compression` (how the weights were made smaller: mmgpt quantize, mmgpt prune) is recorded in config.json
    under "compression"; a quantisation's record also chooses how the weights are written (mmgpt.compress.int8)
    and is said in the card.

    Everything goes to a temp folder that then replaces `folder` by renames (mmgpt.outputs): a kill at
    any instant leaves the previous model or the new one loadable, and the next save cleans up after it.
    An earlier mmgpt model folder is replaced only with `overwrite` (as transformers does, by default); a
    file or a non-empty folder mmgpt did not write is refused (OutputExists) and never touched.
    """
    folder = Path(folder)
    quantized = is_quantized({COMPRESSION_KEY: compression})
    # quantised layers are written as they are: no LoRA merge, no adapter-only split
    adapters = lora.has_adapters(model) and not quantized
    config = lora.merged_config(model.config) if adapters and merge_lora else model.config
    if adapters and not merge_lora:
        lora.base_names(model, config)  # refused before anything is written
    record = {"model": model_dict(config), **({COMPRESSION_KEY: compression} if compression else {})}
    with writing_output_folder(folder, "model", overwrite=overwrite) as tmp:
        write_json(tmp / CONFIG_NAME, record, indent=2)
        if quantized:
            tensors, metadata = quantized_state(model, compression)
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        elif not adapters:
            save_model(model, str(tmp / WEIGHTS_NAME))
        elif merge_lora:
            save_file(lora.merged_state_dict(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            lora.save_adapter_folder(model, config, tmp, folder, WEIGHTS_NAME)
        model.processor.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        # component configs let the loader rebuild every part offline
        model.generator.config.save_pretrained(tmp / "generator")
        for part in ("text_encoder", "image_encoder"):
            module = getattr(model, part)
            if getattr(module, "model", None) is not None and hasattr(module.model, "config"):
                module.model.config.save_pretrained(tmp / part)
        # the card of a quantised model says so (its fp32 source's figures do not apply)
        write_model_card(tmp, config, model, metrics=metrics, datasets=datasets,
                         compression=compression if quantized else None)


def load_model_folder(cls: type, folder: str | Path, device: str | torch.device | None = None) -> Any:
    """Load a model folder (save_model_folder's) into a new `cls` (MMGPT); `hf://org/name` downloads one first."""
    folder = resolve_model_path(folder)
    try:
        data = load_json(folder / CONFIG_NAME)
        if "model" not in data:
            keys = ", ".join(map(repr, list(data)[:5])) or "none"
            raise ConfigError(
                f"{folder / CONFIG_NAME} has no 'model' key (it has {keys}), so it is not an mmgpt model "
                "config; save models with MMGPT.save_pretrained"
            )
        config = from_dict(ModelConfig, data["model"], prefix="model")
        saved_config = from_dict(ModelConfig, data["model"], prefix="model")
        _use_saved_parts(config, folder)
    except (OSError, ConfigError) as e:
        raise _load_error(folder, e) from e
    try:
        processor = Processor.from_pretrained(folder)
        model = cls(config, processor, load_weights=False)
    # the parts raise what their libraries raise; each becomes one message naming the folder
    except (OSError, ValueError, TypeError, RecursionError) as e:
        raise _load_error(folder, e) from e
    compression = data.get(COMPRESSION_KEY) or {}
    if device is not None and torch.device(device).type != "cpu" and runs_on_cpu_only(data):
        raise ModelLoadError(f"cannot load the model in {folder} on {device}: its int8 layers run on the cpu "
                             "only (load it with device='cpu', or quantise with --method bf16 for a GPU)")
    if is_quantized(data):
        # mmgpt quantize: the same quantised layers are built first, then the weights load into them
        try:
            load_quantized_weights(model, folder / WEIGHTS_NAME, compression)
        except (OSError, ValueError, RuntimeError) as e:
            raise _load_error(folder, e) from e
    elif lora.is_adapter_folder(folder):
        try:
            lora.load_adapter_folder(model, folder, saved_config, WEIGHTS_NAME,
                                     lambda part, where: _pretrained_part(model, saved_config, part, where))
        except (OSError, ValueError, SafetensorError) as e:
            raise _load_error(folder, e) from e
    else:
        _load_weights(model, folder / WEIGHTS_NAME, folder / CONFIG_NAME)
    for file in (folder / WEIGHTS_NAME, folder / lora.ADAPTER_WEIGHTS):
        if file.is_file():
            check_finite_weights(file)
    model.config = saved_config
    # a folder saved before generation_config.json existed keeps the defaults it was saved with
    if (folder / GENERATION_CONFIG_NAME).is_file():
        try:
            model.generation_config = GenerationConfig.from_dict(load_json(folder / GENERATION_CONFIG_NAME))
            resolve_generation_config(model.generation_config)  # mmgpt's checks and transformers' validate()
        except (OSError, ValueError, TypeError) as e:
            raise _load_error(folder, e) from e
    model.eval()
    return model.to(device) if device is not None else model


def _pretrained_part(model: Any, config: ModelConfig, part: str, location: str) -> nn.Module:
    """One part built with the pretrained weights at `location`, a folder or hf://org/name (an adapter-only
    folder's base)."""
    cfg = copy.deepcopy(getattr(config, part))
    cfg.name = str(_download(location[len(HUB_PREFIX):])) if location.startswith(HUB_PREFIX) else location
    if part == "generator":
        return build_generator(cfg, model.processor.tokenizer)
    if part == "text_encoder":
        return build_text_encoder(cfg, model.generator, model.processor.tokenizer)
    return build_image_encoder(cfg)


def _load_error(folder: Path, error: BaseException) -> ModelLoadError:
    """One line naming the folder and what is wrong with it (library messages span several lines)."""
    if isinstance(error, ModelLoadError):
        return error
    return ModelLoadError(f"cannot load the model in {folder}: {' '.join(str(error).split())}")


def _use_saved_parts(config: ModelConfig, folder: Path) -> None:
    """Point every part that has a name at the config saved for it in `folder`, so nothing comes from the hub."""
    for part in ("generator", "text_encoder", "image_encoder"):
        saved = folder / part / CONFIG_NAME
        cfg = getattr(config, part)
        if saved.is_file():
            # read here first: this check refuses damaged or huge files that transformers would choke on
            load_json(saved)
            cfg.name = str(saved.parent)
            # the saved config is the part as built, its kwargs already applied: applying them again to the
            # folder's config would let them override what the folder says
            cfg.kwargs = {}
        elif part == "generator" or (cfg.type == "hf" and cfg.name):
            # type "hf" parts read their name as a hub repo or folder; a timm name is only an architecture
            what = f"model.{part} names '{cfg.name}', but its saved config" if cfg.name else f"model.{part}'s config"
            raise ModelLoadError(
                f"cannot load the model in {folder}: {what} {saved} is missing; a saved model loads only from "
                "its own folder, so save it again with save_pretrained"
            )
    if "/" in config.generator.attn_implementation:
        raise ModelLoadError(
            f"cannot load the model in {folder}: model.generator.attn_implementation "
            f"'{config.generator.attn_implementation}' names a hub kernel, and a saved model loads offline; "
            "set it to sdpa or eager in config.json"
        )
    config.image_encoder.weights = ""
    config.image_encoder.pretrained = False


def _load_weights(model: nn.Module, weights: Path, config_file: Path) -> None:
    """Fill `model` from a safetensors file, refusing a damaged file or one written for another model."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(
            f"{weights} is not a complete safetensors file ({e}): it is truncated, empty or in another format; "
            "copy it again or save the model again with save_pretrained"
        ) from e
    state = model.state_dict()
    wrong = [
        f"'{key}' is {list(shape)} in the file but {list(state[key].shape)} in the model {config_file.name} describes"
        for key, shape in shapes.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise ModelLoadError(
            f"{weights} does not fit {config_file}: {'; '.join(wrong[:3])}{more}; the two files come from "
            "different models"
        )
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, RuntimeError) as e:
        raise ModelLoadError(f"{weights} cannot be read into the model of {config_file}: {e}") from e
    if missing or unexpected:
        raise ModelLoadError(
            f"{weights} does not match the model in {config_file}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def check_finite_weights(weights: Path) -> None:
    """Refuse a weights file with a NaN or an infinity in any float tensor (quantisation scales included), as
    training refuses to save one: such a model answers nothing, or nonsense, without any error."""
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            tensor = f.get_tensor(key)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ModelLoadError(
                    f"{weights}: tensor '{key}' holds {bad} NaN or infinite value(s) of {tensor.numel()}; the "
                    "weights are damaged: save the model again from a good copy (or quantise its fp32 source again)"
                )


def resolve_model_path(name: str | Path) -> Path:
    """A local model folder as is; `hf://org/name` is downloaded from the hub; nothing else goes to the hub."""
    text = str(name)
    if text.startswith(HUB_PREFIX):
        return resolve_model_path(_download(text[len(HUB_PREFIX) :]))
    path = saved_model_folder(Path(text).expanduser())
    if not path.exists():
        raise FileNotFoundError(
            f"model folder not found: {path} (a model on the Hugging Face hub is named {HUB_PREFIX}org/name)"
        )
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        if is_export_folder(path):
            raise FileNotFoundError(
                f"{path} is an ONNX export (mmgpt export), not a torch model folder: answer(model=...), "
                "`mmgpt answer`, `mmgpt caption`, `mmgpt serve` and mmgpt.runtime.OnnxVLM run it; for this, use the "
                "model folder it was exported from (or an `mmgpt quantize` folder of it)"
            )
        raise FileNotFoundError(f"{path} is not an mmgpt model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    return path


def _download(repo_id: str) -> Path:
    """A hub model repo's files (configs, safetensors, tokenizers; no pickles), from the cache or the network."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ModelLoadError(f"hub model '{HUB_PREFIX}{repo_id}' must look like {HUB_PREFIX}org/name")
    from huggingface_hub import snapshot_download

    logger.info("fetching %s%s from the Hugging Face hub", HUB_PREFIX, repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    # hub errors are OSErrors (HTTP, offline cache misses) or ValueErrors (invalid names)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot download {HUB_PREFIX}{repo_id}: {' '.join(str(e).split())}") from e
