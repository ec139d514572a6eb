"""Reuse the generator's own input embeddings as the text encoder (LLaVA-style)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmgpt.config import TextEncoderConfig
from mmgpt.encoders.base import TextEncoder, register_text_encoder


@register_text_encoder("lm_embeddings")
class LMEmbeddings(TextEncoder):
    """T = generator.get_input_embeddings()(input_ids): no weights of its own."""

    def __init__(self, cfg: TextEncoderConfig, generator: nn.Module, tokenizer: Any, load_weights: bool = True) -> None:
        super().__init__()
        # held in a tuple so the shared embedding is not registered (and saved) twice
        self._generator = (generator,)

    @property
    def output_dim(self) -> int:
        """d_text: the generator's embedding width."""
        return int(self._generator[0].get_input_embeddings().embedding_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lt), (B, Lt) -> T (B, Lt, d_generator), T_mask (B, Lt)."""
        return self._generator[0].get_input_embeddings()(input_ids), attention_mask
