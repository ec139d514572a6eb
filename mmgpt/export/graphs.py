"""The modules that become the exported graphs: each wraps parts of an eager MMGPT with plain tensors in and out.

    prefix:        input_ids (B, Lt), attention_mask (B, Lt), pixel_values (B, 3, H, W)
                   (several images or tiles: pixel_values (B, K, 3, H, W), image_mask (B, K), image_slots (B, K))
                   -> prefix_embeds (B, Lf, width), prefix_mask (B, Lf)
    embed_tokens:  input_ids (B, L) -> inputs_embeds (B, L, width)
    decoder:       inputs_embeds (B, L, width), attention_mask (B, P + L), position_ids (B, L),
                   past_key_i / past_value_i (B, kv_heads, P, head_dim) for each layer i
                   -> logits (B, 1, vocab) of the last position,
                      present_key_i / present_value_i (B, kv_heads, P + L, head_dim)
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache

from mmgpt.model import MMGPT


class PrefixGraph(nn.Module):
    """MMGPT.prefix_embeds without its shortcut that graphs cannot hold (encoding equal images once)."""

    def __init__(self, model: MMGPT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
        image_mask: torch.Tensor | None = None, image_slots: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lt), (B, Lt), (B, 3, H, W) -> prefix_embeds (B, Lf, width), prefix_mask (B, Lf), left-padded.

        Several images (or tiles): pixel_values (B, K, 3, H, W), image_mask (B, K), image_slots (B, K).
        """
        # encoding each image once is only a saving: the eager result is the same per row
        prefix, fused_mask = self.model.fused_prefix(input_ids, attention_mask, pixel_values, share_images=False,
                                                     image_mask=image_mask, image_slots=image_slots)
        # mmgpt.model.pad_left sorts stably; distinct keys make any sort (ONNX TopK is not stable) give that order
        length = fused_mask.shape[1]
        keys = fused_mask.to(torch.int64) * length + torch.arange(length, device=fused_mask.device)
        order = torch.argsort(keys, dim=1)
        prefix = prefix.gather(1, order.unsqueeze(-1).expand_as(prefix))
        return prefix, fused_mask.gather(1, order)


class EmbedGraph(nn.Module):
    """The generator's input embeddings: input_ids (B, L) -> (B, L, width)."""

    def __init__(self, model: MMGPT) -> None:
        super().__init__()
        self.embeddings = model.generator.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, width)."""
        return self.embeddings(input_ids)


class DecoderGraph(nn.Module):
    """One generator step with the KV cache as explicit tensors; an empty past (P = 0) is the first step."""

    def __init__(self, model: MMGPT) -> None:
        super().__init__()
        self.generator = model.generator
        self.num_layers = model.generator.config.get_text_config().num_hidden_layers
        # transformers 5.x renamed past_key_values to cache
        parameters = inspect.signature(model.generator.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        past: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, ...]:
        """(B, L, width), (B, P + L), (B, L), 2 * layers x (B, kv, P, hd) -> logits (B, 1, V), 2 * layers presents."""
        cache = DynamicCache(config=self.generator.config)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        # only the last position's logits are used: the next token
        out = self.generator(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, logits_to_keep=1, **{self.cache_argument: cache})
        presents: list[torch.Tensor] = []
        for layer in getattr(out, self.cache_argument).layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)
