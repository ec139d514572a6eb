"""Cross-attention: every text token attends to all image tokens (and, optionally, to the other text tokens)."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import ConfigError, FusionConfig
from mmgpt.fusion.base import Fusion, ImageLayout, register_fusion
from mmgpt.fusion.concat import image_prefix, image_prefix_mask, image_prefix_positions


class CrossAttentionLayer(nn.Module):
    """Pre-norm block: [x + SelfAttn(x) when text_self_attention], x + CrossAttn(x, image), then x + MLP(x)."""

    def __init__(self, dim: int, num_heads: int, dropout: float, null_token: bool = False,
                 text_self_attention: bool = False) -> None:
        super().__init__()
        self.self_attention = (nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
                               if text_self_attention else None)
        self.norm_self = nn.LayerNorm(dim) if text_self_attention else None
        self.norm_query = nn.LayerNorm(dim)
        self.norm_image = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(
            dim, num_heads, dropout=dropout, batch_first=True, add_bias_kv=null_token
        )
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Lt, dim), (B, Li, dim), T_mask (B, Lt), I_mask (B, Li) -> (B, Lt, dim).

        Padded text tokens and padded image tokens (I_mask 0: a prompt with fewer images) are never attended to.
        """
        if self.self_attention is not None:
            query = self.norm_self(text)
            padding = None if text_mask is None else ~text_mask.bool()
            attended, _ = self.self_attention(query, query, query, key_padding_mask=padding, need_weights=False)
            text = text + attended
        image = self.norm_image(image)
        padding = None if image_mask is None else ~image_mask.bool()
        attended, _ = self.attention(self.norm_query(text), image, image, key_padding_mask=padding,
                                     need_weights=False)
        text = text + attended
        return text + self.mlp(self.norm_mlp(text))


@register_fusion("cross_attention")
class CrossAttention(Fusion):
    """F = text tokens after `num_layers` rounds of attending to the image tokens.

    Alignment: queries are the text tokens, keys/values the image tokens, so F has the
    text length and the text mask. Without `text_self_attention` each text token reads the image
    independently of the others, so a fixed prompt's tokens shared with other prompts (a caption
    prompt's "the", "image") read it as they do there; with it, each token first attends to the
    prompt's other (unpadded) tokens, so every query knows the whole prompt. Either way the result
    does not depend on how the batch is padded.

    Several images: every text token attends over all images' tokens at once, each token carrying its
    image's index embedding, so a question can compare images ("which image shows a circle?").

    With `image_prefix`, F = [I, those text tokens] laid out as concat lays them out (each image at its slot):
    the image tokens keep their grid order in the generator's positions, which a set of keys does not.
    """

    reads_all_images = True

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__(cfg, text_dim, image_dim)
        if cfg.num_layers < 1:
            raise ConfigError(f"model.fusion.num_layers must be >= 1, got {cfg.num_layers}")
        if cfg.num_heads < 1 or cfg.dim % cfg.num_heads:
            raise ConfigError(
                f"model.fusion.dim ({cfg.dim}) must be divisible by model.fusion.num_heads ({cfg.num_heads})"
            )
        self.layers = nn.ModuleList(
            CrossAttentionLayer(cfg.dim, cfg.num_heads, cfg.dropout, cfg.null_token, cfg.text_self_attention)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.image_norm = nn.LayerNorm(cfg.dim) if cfg.image_prefix else None

    def combine(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                images: ImageLayout | None = None) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt), (B, Li, dim) -> (B, Lt, dim)."""
        image_mask = None if images is None else images.token_mask()
        for layer in self.layers:
            text = layer(text, image, text_mask, image_mask)
        text = self.norm(text)
        if self.image_norm is None:
            return text
        return image_prefix(text, text_mask, self.image_norm(image), images)

    def fused_mask(self, text_mask: torch.Tensor, image: torch.Tensor, images: ImageLayout | None = None
                   ) -> torch.Tensor:
        """F follows the text: T_mask (B, Lt); with `image_prefix`, concat's mask (B, Li + Lt)."""
        if self.image_norm is None:
            return text_mask
        return image_prefix_mask(text_mask, image, images)

    def image_token_positions(self, text_mask: torch.Tensor, images: ImageLayout) -> torch.Tensor:
        """(B, K * Li): with `image_prefix`, the position in F of each image token of I, in I's order."""
        return image_prefix_positions(text_mask, images)
