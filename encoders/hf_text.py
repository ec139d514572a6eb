"""Any Hugging Face encoder model (BERT, RoBERTa, ...) as the text encoder."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModel

from mmgpt.config import TextEncoderConfig
from mmgpt.encoders.base import TextEncoder, register_text_encoder
from mmgpt.hf_models import build_hf_model, load_hf_tokenizer


@register_text_encoder("hf")
class HFTextEncoder(TextEncoder):
    """T = last_hidden_state of an AutoModel; by name/path it brings its own tokenizer.

    Built from `kwargs` (from scratch) it reads the generator's tokenizer, whose size
    sets its vocabulary.
    """

    def __init__(self, cfg: TextEncoderConfig, generator: nn.Module, tokenizer: Any, load_weights: bool = True) -> None:
        super().__init__()
        self.model = build_hf_model(
            AutoModel,
            cfg.name,
            cfg.kwargs,
            key="model.text_encoder.kwargs",
            missing_model_type="model.text_encoder needs a 'name' (hub name or local folder) or kwargs with "
            "'model_type' (e.g. bert) to build from scratch",
            load_weights=load_weights,
            tokenizer=tokenizer,
            defaults={"pad_token_id": tokenizer.pad_token_id},
        )
        if cfg.name and load_weights:
            # rebuilding a saved model (no load_weights): its processor already holds the tokenizer
            self.tokenizer = load_hf_tokenizer(cfg.name)
        if getattr(self.model, "pooler", None) is not None:
            # only last_hidden_state is used: a pooler would get no gradient, which DDP rejects
            self.model.pooler = None

    @property
    def output_dim(self) -> int:
        """d_text: the model's hidden size."""
        return int(self.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lt), (B, Lt) -> T (B, Lt, d_text), T_mask (B, Lt)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask
