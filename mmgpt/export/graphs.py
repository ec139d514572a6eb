"""The modules that become the exported graphs: each wraps parts of an eager MMGPT with plain tensors in and out.

    prefix:        input_ids (B, Lt), attention_mask (B, Lt), pixel_values (B, 3, H, W)
                   (several images or tiles: pixel_values (B, K, 3, H, W), image_mask (B, K), image_slots (B, K))
                   -> prefix_embeds (B, Lf, width), prefix_mask (B, Lf)
    embed_tokens:  input_ids (B, L) -> inputs_embeds (B, L, width)
    decoder:       inputs_embeds (B, L, width), attention_mask (B, P + L), position_ids (B, L),
                   past_key_i / past_value_i (B, kv_heads, P, head_dim) for each layer i
                   -> logits (B, 1, vocab) of the last position,
                      present_key_i / present_value_i (B, kv_heads, P + L, head_dim)

A Llama-family generator (`fuses`: not for rotary tables over 64 MB) gets FusedDecoderGraph unless the export is
asked for the plain one, at opset 23 or newer: the same inputs, outputs and numbers in ~17 nodes a layer (ONNX
RMSNormalization, RotaryEmbedding and Attention with the cache concatenated inside) instead of the ~80 that tracing
Hugging Face's modules gives; at one token a step those small nodes took as long as the int8 weight reads.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as functional
from torch import nn
from transformers import DynamicCache

from mmgpt.model import MMGPT
from mmgpt.static_decoding import llama_family

# what ONNX RMSNormalization, RotaryEmbedding and Attention arrived in
FUSED_DECODER_OPSET = 23
# rotary types whose tables depend on the position alone (dynamic and longrope rescale by the sequence length)
FIXED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# the fused graph holds cos and sin for every position; a generator with more positions than fit in this keeps
# the plain graph (131,072 positions of 64-wide heads take 32 MB)
MAX_ROTARY_TABLE_BYTES = 64 * 2**20


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


def fuses(generator: nn.Module) -> bool:
    """Whether FusedDecoderGraph computes this generator's step."""
    if not llama_family(generator):
        return False
    rotary, head_dim = generator.model.rotary_emb, generator.model.layers[0].self_attn.head_dim
    # ONNX RotaryEmbedding here rotates whole heads: a partial rotary (a narrower table) keeps the plain graph
    return (getattr(rotary, "rope_type", "default") in FIXED_ROPE_TYPES
            and 2 * getattr(rotary, "inv_freq", torch.empty(0)).numel() == head_dim
            and generator.config.max_position_embeddings * head_dim * 4 <= MAX_ROTARY_TABLE_BYTES)


class FusedDecoderGraph(nn.Module):
    """DecoderGraph of a Llama-family generator (`fuses`) with ONNX's fused ops (opset 23): the same inputs,
    outputs and numbers as DecoderGraph, which the export checks it against.

    The rotary tables are computed once for every position by the generator's own rotary module; the
    attention mask adds float32's lowest value, not -inf, so that a query that sees only padding (left-padded
    rows of a first step) averages instead of giving NaN that its cached keys would carry into later steps.
    """

    def __init__(self, model: MMGPT) -> None:
        super().__init__()
        generator = self.generator = model.generator
        config = generator.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = generator.model.layers[0].self_attn.head_dim
        positions = torch.arange(config.max_position_embeddings)[None]
        weight = generator.get_input_embeddings().weight
        cos, sin = generator.model.rotary_emb(torch.zeros(1, 1, self.head_dim, dtype=weight.dtype), positions)
        half = self.head_dim // 2  # Hugging Face's tables repeat their first half
        self.register_buffer("cos", cos[0, :, :half].contiguous(), persistent=False)
        self.register_buffer("sin", sin[0, :, :half].contiguous(), persistent=False)

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        past: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, ...]:
        """(B, L, width), (B, P + L), (B, L), 2 * layers x (B, kv, P, hd) -> logits (B, 1, V), 2 * layers presents."""
        length, total = inputs_embeds.shape[1], attention_mask.shape[1]
        keys = torch.arange(total, device=inputs_embeds.device)
        queries = torch.arange(length, device=inputs_embeds.device) + (total - length)
        allowed = (keys[None, None, :] <= queries[None, :, None]) & attention_mask.bool()[:, None, :]
        mask = torch.where(allowed, 0.0, torch.finfo(inputs_embeds.dtype).min).to(inputs_embeds.dtype)[:, None]
        x, presents = inputs_embeds, []
        for index, layer in enumerate(self.generator.model.layers):
            attention, mlp = layer.self_attn, layer.mlp
            h = _rms_norm(x, layer.input_layernorm)
            q = torch.onnx.ops.rotary_embedding(attention.q_proj(h), self.cos, self.sin, position_ids,
                                                num_heads=self.heads)
            k = torch.onnx.ops.rotary_embedding(attention.k_proj(h), self.cos, self.sin, position_ids,
                                                num_heads=self.kv_heads)
            out, present_key, present_value, _ = torch.onnx.ops.attention(
                q, k, attention.v_proj(h), mask, past[2 * index], past[2 * index + 1],
                q_num_heads=self.heads, kv_num_heads=self.kv_heads, scale=attention.scaling)
            presents += [present_key, present_value]
            x = x + attention.o_proj(out)
            h = _rms_norm(x, layer.post_attention_layernorm)
            x = x + mlp.down_proj(functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        # only the last position's logits are used: the next token
        return (self.generator.lm_head(_rms_norm(x[:, -1:], self.generator.model.norm)), *presents)


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """A Llama RMSNorm module applied as one op (ONNX RMSNormalization)."""
    return functional.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
