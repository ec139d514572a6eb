"""Tiny random stand-ins for hub models, saved to folders and named like hub models are (by path).

A SigLIP or CLIP vision tower with its image processor, and Llama, Qwen2 or GPT-2 causal LMs with a
tokenizer that carries a ChatML chat template: each loads through exactly the code a hub name takes
(AutoConfig / from_pretrained of a name), only from a folder.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tiny import GENERATOR_CONFIGS, TEXTS
from transformers import (
    AutoModelForCausalLM,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mmgpt.config import TokenizerConfig
from mmgpt.tokenizer import train_tokenizer

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
VISION = {"siglip": (SiglipVisionConfig, SiglipVisionModel, SiglipImageProcessor),
          "clip": (CLIPVisionConfig, CLIPVisionModel, CLIPImageProcessor)}


def vision_tower(kind: str, folder: Path, seed: int = 0) -> Path:
    """A one-layer 32-wide SigLIP or CLIP vision tower for 32 px images, with its image processor."""
    config_cls, model_cls, processor_cls = VISION[kind]
    torch.manual_seed(seed)
    model_cls(config_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         image_size=32, patch_size=8)).save_pretrained(folder)
    size = {"height": 32, "width": 32}
    processor_cls(size=size, crop_size=size, do_center_crop=False).save_pretrained(folder)
    return folder


def causal_lm(kind: str, folder: Path, seed: int = 0, chat_template: bool = True) -> Path:
    """A one-layer 32-wide llama, qwen2 or gpt2 with a byte-level BPE tokenizer (ChatML template, if asked)."""
    tokenizer = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300))
    if chat_template:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.chat_template = CHATML
        tokenizer.eos_token = "<|im_end|>"
    tokenizer.save_pretrained(folder)
    kwargs = dict(GENERATOR_CONFIGS[kind])
    # a few spare rows, as real checkpoints have (and an AutoTokenizer of another class may add a token)
    config = CONFIG_MAPPING[kwargs.pop("model_type")](**kwargs, vocab_size=len(tokenizer) + 8,
                                                      pad_token_id=tokenizer.pad_token_id,
                                                      bos_token_id=tokenizer.bos_token_id,
                                                      eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    # the README's CPU miniature of the two-stage recipe: `python tests/standins.py FOLDER`
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "standins")
    print(vision_tower("siglip", out / "siglip"))
    print(causal_lm("llama", out / "llama"))
