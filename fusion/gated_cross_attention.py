"""Gated cross-attention: Flamingo's tanh-gated cross-attention dense blocks (Alayrac et al., "Flamingo: a Visual
Language Model for Few-Shot Learning", NeurIPS 2022)."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import ConfigError, FusionConfig
from mmgpt.fusion.base import Fusion, ImageLayout, register_fusion
from mmgpt.fusion.cross_attention import CrossAttentionLayer
from mmgpt.fusion.layers import check_heads


class GatedCrossAttentionLayer(CrossAttentionLayer):
    """x + tanh(a) * CrossAttn(x, image), then x + tanh(b) * MLP(x); a = b = 0 at initialisation."""

    def __init__(self, dim: int, num_heads: int, dropout: float, null_token: bool = False) -> None:
        super().__init__(dim, num_heads, dropout, null_token)
        self.attention_gate = nn.Parameter(torch.zeros(()))
        self.mlp_gate = nn.Parameter(torch.zeros(()))

    def forward(self, text: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """(B, Lt, dim), (B, Li, dim), I_mask (B, Li) -> (B, Lt, dim); padded image tokens are never attended to."""
        image = self.norm_image(image)
        padding = None if image_mask is None else ~image_mask.bool()
        attended, _ = self.attention(self.norm_query(text), image, image, key_padding_mask=padding,
                                     need_weights=False)
        text = text + torch.tanh(self.attention_gate) * attended
        return text + torch.tanh(self.mlp_gate) * self.mlp(self.norm_mlp(text))


@register_fusion("gated_cross_attention")
class GatedCrossAttention(Fusion):
    """F = LayerNorm(text tokens after `num_layers` tanh-gated rounds of attending to the image tokens).

    With every gate at 0, F is LayerNorm(T) whatever the image: a generator trained on text starts from its
    text-only input, and the gates open as training finds the image useful (Flamingo's reason for them).
    While a gate is exactly 0 only the gates themselves get a gradient. Alignment: queries are the text
    tokens, keys/values the image tokens, so F has the text length and the text mask. Several images: the
    text attends over all images' tokens at once, each carrying its image's index embedding.
    """

    reads_all_images = True

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        if cfg.num_layers < 1:
            raise ConfigError(f"model.fusion.num_layers must be >= 1, got {cfg.num_layers}")
        check_heads(cfg)
        super().__init__(cfg, text_dim, image_dim)
        self.layers = nn.ModuleList(
            GatedCrossAttentionLayer(cfg.dim, cfg.num_heads, cfg.dropout, cfg.null_token)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)

    def combine(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                images: ImageLayout | None = None) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt), (B, Li, dim) -> (B, Lt, dim)."""
        image_mask = None if images is None else images.token_mask()
        for layer in self.layers:
            text = layer(text, image, image_mask)
        return self.norm(text)

    def fused_mask(self, text_mask: torch.Tensor, image: torch.Tensor, images: ImageLayout | None = None
                   ) -> torch.Tensor:
        """F follows the text: T_mask (B, Lt)."""
        return text_mask
