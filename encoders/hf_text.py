"""Any Hugging Face encoder model (BERT, RoBERTa, ...) as the text encoder."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from mmgpt.config import ConfigError, TextEncoderConfig
from mmgpt.encoders.base import TextEncoder, register_text_encoder


@register_text_encoder("hf")
class HFTextEncoder(TextEncoder):
    """T = last_hidden_state of an AutoModel; by name/path it brings its own tokenizer.

    Built from `hf_config` (from scratch) it reads the generator's tokenizer, whose size
    sets its vocabulary.
    """

    def __init__(self, cfg: TextEncoderConfig, generator: nn.Module, tokenizer: Any, load_weights: bool = True) -> None:
        super().__init__()
        if cfg.name:
            if load_weights:
                self.model = AutoModel.from_pretrained(cfg.name)
                self.tokenizer = AutoTokenizer.from_pretrained(cfg.name)
            else:
                # rebuilding a saved model: its processor already holds the tokenizer
                self.model = AutoModel.from_config(AutoConfig.from_pretrained(cfg.name))
        else:
            kwargs = dict(cfg.hf_config)
            if "model_type" not in kwargs:
                raise ConfigError(
                    "model.text_encoder needs a 'name' (hub name or local folder) or an hf_config with "
                    "'model_type' (e.g. bert) to build from scratch"
                )
            kwargs.setdefault("vocab_size", len(tokenizer))
            kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
            if kwargs["vocab_size"] < len(tokenizer):
                raise ConfigError(
                    f"model.text_encoder.hf_config.vocab_size ({kwargs['vocab_size']}) is smaller than the "
                    f"tokenizer ({len(tokenizer)} tokens)"
                )
            model_type = kwargs.pop("model_type")
            try:
                config = AutoConfig.for_model(model_type, **kwargs)
            except ValueError as e:
                raise ConfigError(f"model.text_encoder.hf_config.model_type '{model_type}': {e}") from e
            self.model = AutoModel.from_config(config)
        if getattr(self.model, "pooler", None) is not None:
            # only last_hidden_state is used: a pooler would get no gradient, which DDP rejects
            self.model.pooler = None
        self.output_dim = int(self.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lt), (B, Lt) -> T (B, Lt, d_text), T_mask (B, Lt)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask
