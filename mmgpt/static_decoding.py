"""Greedy (and seeded-sampling) decoding of Llama-family generators with a preallocated KV cache, few ops a step.

Hugging Face `generate` runs the model's module tree each step: on a CPU at batch 1, a ~135M-parameter
Llama spends about as long in its ~55 small ops and module calls per layer as in reading its weights.
This loop computes the same step with ~20 ops per layer: the layers' own weights and linear modules
(fp32, bf16 or mmgpt's int8) called as bare functions, fused RMSNorm, rotary tables computed once per answer,
keys and values written into a
cache allocated once for the whole answer, one SDPA call. The prompt (prefill) still runs through the
generator's own forward, whose cache is then copied in, so every prefix sees Hugging Face's code.

It takes what `MMGPT.generate` would otherwise hand to Hugging Face `generate` and returns the same tokens:
greedy search (`logits_processor`, e.g. mmgpt.sampling's seeded sampler, may reshape the scores),
`max_new_tokens`, `min_new_tokens`, eos ending a row (later tokens padded), a `streamer`, `stopping_criteria`
(called after each step with the tokens so far, as Hugging Face calls them; a row they end is padded after), and
`use_cache=False`
(every step re-runs the whole sequence: Hugging Face `generate` turns the cache back on for a prompt given as
embeddings). Anything else (beams, penalties, another architecture) goes to Hugging Face `generate` (`supports`).
"""
from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as functional
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from mmgpt.decoding import position_ids

# architectures whose decoder layer is exactly: RMSNorm, q/k/v projections, rotary embedding, attention,
# o projection, residual, RMSNorm, gated MLP, residual (Qwen2's q/k/v biases live in its linear layers)
ARCHITECTURES = ("llama", "qwen2")
# GenerationConfig fields this loop implements; sampling fields are ignored by greedy search as by Hugging Face
HANDLED_FIELDS = {"max_new_tokens", "min_new_tokens", "max_length", "bos_token_id", "eos_token_id", "pad_token_id",
                  "do_sample", "num_beams", "temperature", "top_k", "top_p", "use_cache", "transformers_version",
                  "_from_model_config", "decoder_start_token_id"}
HANDLED_KWARGS = {"streamer", "logits_processor", "stopping_criteria"}


def _set_fields(config: GenerationConfig) -> set[str]:
    """The fields `config` sets to other values than a bare GenerationConfig (False, 0 and None set nothing)."""
    return {name for name, value in config.to_diff_dict().items() if value not in (None, False, 0)}


def llama_family(generator: nn.Module) -> bool:
    """Whether the generator's decoder layers are exactly those of ARCHITECTURES (what a hand-written step
    computes: silu MLP, full attention, rotary embedding, one tensor-parallel slice)."""
    model_config = generator.config
    body = getattr(generator, "model", None)
    return (model_config.model_type in ARCHITECTURES and body is not None and hasattr(body, "rotary_emb")
            and getattr(model_config, "hidden_act", "silu") == "silu"
            and not getattr(model_config, "use_sliding_window", False)
            and (getattr(model_config, "pretraining_tp", 1) or 1) == 1)


def supports(generator: nn.Module, config: GenerationConfig, generate_kwargs: dict[str, Any]) -> bool:
    """Whether `generate` here decodes like Hugging Face `generate` would with these settings."""
    if generator.training or not llama_family(generator):
        return False
    if config.do_sample or (config.num_beams or 1) != 1 or not config.max_new_tokens:
        return False
    if set(generate_kwargs) - HANDLED_KWARGS:
        return False
    logits_processor = generate_kwargs.get("logits_processor")
    if logits_processor is not None and not isinstance(logits_processor, LogitsProcessorList):
        return False
    # the generator's own generation_config is merged in by Hugging Face generate: it must add nothing either
    return not (_set_fields(config) | _set_fields(generator.generation_config)) - HANDLED_FIELDS


def _rotary_tables(generator: nn.Module, embeds: torch.Tensor, positions: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin (B, N, 1, 1, head_dim) of positions (B, N), computed once for every step of an answer.

    The sin table's first half is negated, so that rotating is x * cos + roll(x, head_dim / 2) * sin: the same
    numbers as Hugging Face's x * cos + cat(-x2, x1) * sin, in two ops fewer.
    """
    cos, sin = generator.model.rotary_emb(embeds, positions)
    half = sin.shape[-1] // 2
    sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos[:, :, None, None], sin[:, :, None, None]


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (B, H, 1, head_dim) with one step's tables (`_rotary_tables`)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def _layer_cache(cache: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (B, H_kv, L, head_dim) of one layer of a Hugging Face DynamicCache (4.x or 5.x)."""
    if hasattr(cache, "layers"):
        return cache.layers[index].keys, cache.layers[index].values
    return cache.key_cache[index], cache.value_cache[index]


class _StaticCache:
    """Keys and values of every layer, allocated for the prompt plus every new token."""

    def __init__(self, prefill: Any, num_layers: int, length: int) -> None:
        self.keys, self.values = [], []
        for index in range(num_layers):
            keys, values = _layer_cache(prefill, index)
            batch, heads, used, dim = keys.shape
            self.keys.append(keys.new_empty(batch, heads, length, dim))
            self.values.append(values.new_empty(batch, heads, length, dim))
            self.keys[-1][:, :, :used] = keys
            self.values[-1][:, :, :used] = values


class _Int8Fused:
    """Per layer, the int8 q/k/v projections packed as one weight and gate/up as another (None where a layer's
    are not all mmgpt int8 layers): two int8 kernels a layer instead of five, each input quantised once.

    Built on first use and kept while the layers' packed weights are the same objects (pack() replaces them).
    """

    _built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, generator: nn.Module) -> list[tuple[object | None, object | None]]:
        from mmgpt.compress.int8_layers import Int8Linear, pack_side_by_side

        groups = [((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                   (layer.mlp.gate_proj, layer.mlp.up_proj)) for layer in generator.model.layers]
        key = tuple(id(getattr(m, "_packed", m)) for group in groups for part in group for m in part)
        built = cls._built.get(generator)
        if built is None or built[0] != key:
            fused = [tuple(pack_side_by_side(part) if all(type(m) is Int8Linear for m in part) else None
                           for part in group) for group in groups]
            built = cls._built[generator] = (key, fused)
        return built[1]


class _OutputLayer:
    """The fp32 output layer with its weight (V, D) also stored transposed, (D, V) in memory: at one position
    x @ W.T reads a (D, V) matrix row after row about twice as fast on a CPU as the dot products of the (V, D)
    one (MKL, one thread: 5 against 10 ms for SmolLM2's 49152 x 576), and the output layer is fp32 decoding's
    largest matrix. The copy (as large as the weight) is made on first use and kept while the weight is unchanged.
    """

    _built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, generator: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        head = generator.lm_head
        weight = getattr(head, "weight", None)
        if (type(head) is not nn.Linear or head._forward_hooks or head._forward_pre_hooks
                or weight.dtype != torch.float32 or weight.device.type != "cpu"
                or weight.shape[0] < 2 * weight.shape[1]):
            return _linear(head)
        key = (id(weight), weight.data_ptr(), weight._version)  # in-place updates (training) bump the version
        built = cls._built.get(generator)
        if built is None or built[0] != key:
            built = cls._built[generator] = (key, weight.detach().t().contiguous())
        return functools.partial(functional.linear, weight=built[1].t(), bias=head.bias)


def _linear(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """module's forward as a bare function call where it is a plain nn.Linear or an mmgpt int8 layer without hooks.

    nn.Module's call machinery costs about as much as a small op; a step makes ~200 linear calls.
    """
    from mmgpt.compress.int8_layers import Int8Linear, linear_dynamic

    if module._forward_hooks or module._forward_pre_hooks:
        return module
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        # positional: a tensor subclass's weight (torchao's int8) dispatches on the arguments' positions
        return lambda x: functional.linear(x, weight, bias)
    if type(module) is Int8Linear and module._packed is not None:
        return functools.partial(linear_dynamic, packed=module._packed)
    return module


def _fused(packed: object | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The int8 kernel of a packed weight from `_Int8Fused` (None: the layer has none)."""
    from mmgpt.compress.int8_layers import linear_dynamic

    return None if packed is None else functools.partial(linear_dynamic, packed=packed)


class _Norm(NamedTuple):
    """An RMSNorm module's weight and epsilon, as one step reads them."""

    weight: torch.Tensor
    eps: float
    eps_tensor: torch.Tensor  # (1, 1, 1) fp32: a Python number in a tensor op is wrapped in a tensor at every call
    size: torch.Tensor  # D, as a (1, 1, 1) fp32 tensor


def _norm(norm: nn.Module) -> _Norm:
    """An RMSNorm module as `_rms_norm` applies it."""
    weight = norm.weight
    return _Norm(weight, norm.variance_epsilon, torch.full((1, 1, 1), norm.variance_epsilon, device=weight.device),
                 torch.full((1, 1, 1), float(weight.shape[-1]), device=weight.device))


def _rms_norm(x: torch.Tensor, norm: _Norm) -> torch.Tensor:
    """RMSNorm of x (B, 1, D): for fp32, eps + the mean square as one batched dot product, four ops in all
    (functional.rms_norm runs ~10 on a CPU, each a few us at one position); other dtypes as Hugging Face does."""
    if x.dtype != torch.float32 or norm.weight.dtype != torch.float32:
        return functional.rms_norm(x, list(norm.weight.shape), norm.weight, norm.eps)
    return x * x.square().sum(-1, keepdim=True).div_(norm.size).add_(norm.eps_tensor).rsqrt_() * norm.weight


class _Layer(NamedTuple):
    """One decoder layer as the calls and tensors of a step (`qkv`, `gate_up`: fused int8 kernels, else None)."""

    input_norm: _Norm
    qkv: Callable[[torch.Tensor], torch.Tensor] | None
    q: Callable[[torch.Tensor], torch.Tensor]
    k: Callable[[torch.Tensor], torch.Tensor]
    v: Callable[[torch.Tensor], torch.Tensor]
    o: Callable[[torch.Tensor], torch.Tensor]
    scaling: float
    post_norm: _Norm
    gate_up: Callable[[torch.Tensor], torch.Tensor] | None
    gate: Callable[[torch.Tensor], torch.Tensor]
    up: Callable[[torch.Tensor], torch.Tensor]
    down: Callable[[torch.Tensor], torch.Tensor]


class _Plan:
    """The generator's decoder as the calls one step makes, looked up once per answer rather than once per step."""

    def __init__(self, generator: nn.Module) -> None:
        config, body = generator.config, generator.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = body.layers[0].self_attn.head_dim
        self.layers = []
        for layer, (qkv, gate_up) in zip(body.layers, _Int8Fused.of(generator)):
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                _norm(layer.input_layernorm), _fused(qkv),
                _linear(attention.q_proj), _linear(attention.k_proj), _linear(attention.v_proj),
                _linear(attention.o_proj), attention.scaling, _norm(layer.post_attention_layernorm),
                _fused(gate_up),
                _linear(mlp.gate_proj), _linear(mlp.up_proj), _linear(mlp.down_proj)))
        self.norm = _norm(body.norm)
        self.lm_head = _OutputLayer.of(generator)


def _step(plan: _Plan, embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: _StaticCache,
          length: int, mask: torch.Tensor | None) -> torch.Tensor:
    """One token per row: embeds (B, 1, D) (this step's own: the residual stream adds to it in place), its rotary
    tables (B, 1, 1, head_dim), `length` cache slots in use with it -> logits (B, V).

    Slices are taken with narrow: Python indexing costs about as much again as the view it makes.
    """
    batch = embeds.shape[0]
    heads, kv_heads, head_dim = plan.heads, plan.kv_heads, plan.head_dim
    rotated_heads, gqa = heads + kv_heads, heads != kv_heads
    x = embeds
    for index, layer in enumerate(plan.layers):
        h = _rms_norm(x, layer.input_norm)
        # one position: (B, 1, H * head_dim) read as (B, H, 1, head_dim) is the usual view-and-transpose
        if layer.qkv is not None:
            projected = layer.qkv(h).view(batch, -1, 1, head_dim)
            rotated = _rotate(projected.narrow(1, 0, rotated_heads), cos, sin)  # queries and keys rotate as one
            q, k = rotated.narrow(1, 0, heads), rotated.narrow(1, heads, kv_heads)
            v = projected.narrow(1, rotated_heads, kv_heads)
        else:
            q = _rotate(layer.q(h).view(batch, -1, 1, head_dim), cos, sin)
            k = _rotate(layer.k(h).view(batch, -1, 1, head_dim), cos, sin)
            v = layer.v(h).view(batch, -1, 1, head_dim)
        keys, values = cache.keys[index], cache.values[index]
        keys.narrow(2, length - 1, 1).copy_(k)
        values.narrow(2, length - 1, 1).copy_(v)
        out = functional.scaled_dot_product_attention(q, keys.narrow(2, 0, length), values.narrow(2, 0, length),
                                                      attn_mask=mask, scale=layer.scaling, enable_gqa=gqa)
        x = x.add_(layer.o(out.reshape(batch, 1, -1)))  # x is this step's own tensor: added to in place
        h = _rms_norm(x, layer.post_norm)
        if layer.gate_up is not None:
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
        else:
            gate, up = layer.gate(h), layer.up(h)
        x = x.add_(layer.down(functional.silu(gate).mul_(up)))
    return plan.lm_head(_rms_norm(x, plan.norm))[:, -1]


def _eos_ids(eos: int | list[int] | None, device: torch.device) -> torch.Tensor | None:
    if eos is None:
        return None
    return torch.tensor([eos] if isinstance(eos, int) else list(eos), device=device)


@torch.no_grad()
def generate(generator: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
             config: GenerationConfig, streamer: Any = None,
             logits_processor: LogitsProcessorList | None = None,
             stopping_criteria: StoppingCriteriaList | None = None) -> torch.Tensor:
    """Decode up to config.max_new_tokens tokens after the prompt embeddings (B, L, D), mask (B, L) -> (B, N).

    Call it only where `supports(generator, config, kwargs)`; rows that end (eos) are padded with pad_token_id.
    """
    batch, prompt_length = attention_mask.shape
    device = inputs_embeds.device
    max_new = int(config.max_new_tokens)
    # as Hugging Face generate does, ids the call leaves unset come from the generator's own generation_config
    own = generator.generation_config
    eos = _eos_ids(config.eos_token_id if config.eos_token_id is not None else own.eos_token_id, device)
    pad = next((p for p in (config.pad_token_id, own.pad_token_id) if p is not None), 0)
    min_new = config.min_new_tokens or own.min_new_tokens or 0
    if config.use_cache is False:
        return _generate_without_cache(generator, inputs_embeds, attention_mask, max_new, min_new, eos, pad,
                                       streamer, logits_processor, stopping_criteria)
    positions = position_ids(attention_mask)
    out = generator(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=positions,
                    use_cache=True, logits_to_keep=1)
    prefill = next(value for key, value in out.items() if key in ("cache", "past_key_values"))  # 5.x, 4.x
    cache = _StaticCache(prefill, len(generator.model.layers), prompt_length + max_new)
    padded = not bool(attention_mask.all())
    mask = torch.cat([attention_mask.bool(), attention_mask.new_ones(batch, max_new, dtype=torch.bool)], dim=1)
    plan = _Plan(generator)
    # step s (from 1) decodes position last + s: every step's rotary tables at once
    cos, sin = _rotary_tables(generator, inputs_embeds,
                              positions[:, -1:] + torch.arange(1, max_new, device=device))
    tokens = torch.empty(batch, 0, dtype=torch.long, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    logits = out.logits[:, -1]
    embedding = generator.get_input_embeddings()
    if streamer is not None:
        streamer.put(tokens.cpu())
    for step in range(max_new):
        tokens = _choose(logits, tokens, unfinished, step, min_new, eos, pad, streamer, logits_processor)
        _stop(stopping_criteria, tokens, logits, unfinished)
        if step == max_new - 1 or not bool(unfinished.any()):
            break
        length = prompt_length + step + 1
        logits = _step(plan, embedding(tokens[:, -1:]), cos[:, step], sin[:, step], cache, length,
                       mask[:, None, None, :length] if padded else None)
    if streamer is not None:
        streamer.end()
    return tokens


def _choose(logits: torch.Tensor, tokens: torch.Tensor, unfinished: torch.Tensor, step: int, min_new: int,
            eos: torch.Tensor | None, pad: int, streamer: Any, logits_processor: LogitsProcessorList | None
            ) -> torch.Tensor:
    """Append each row's next token (greedy over the processed scores; pad once a row ended) -> tokens (B, t + 1).

    `unfinished` (B,) is updated in place when a row produces eos.
    """
    scores = logits.float()
    if step < min_new and eos is not None:  # Hugging Face's MinNewTokensLengthLogitsProcessor, which runs first
        scores = scores.index_fill(1, eos, float("-inf"))
    if logits_processor is not None:
        scores = logits_processor(tokens, scores)
    next_tokens = scores.argmax(dim=-1).masked_fill(~unfinished, pad)
    if streamer is not None:
        streamer.put(next_tokens.cpu())
    if eos is not None:
        unfinished &= ~torch.isin(next_tokens, eos)
    return torch.cat([tokens, next_tokens[:, None]], dim=1)


def _stop(stopping_criteria: StoppingCriteriaList | None, tokens: torch.Tensor, logits: torch.Tensor,
          unfinished: torch.Tensor) -> None:
    """End (in `unfinished`, in place) the rows `stopping_criteria` says are done after this step's tokens (B, t)."""
    if stopping_criteria is not None:
        unfinished &= ~stopping_criteria(tokens, logits).to(unfinished.device)


def _generate_without_cache(generator: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                            max_new: int, min_new: int, eos: torch.Tensor | None, pad: int, streamer: Any,
                            logits_processor: LogitsProcessorList | None,
                            stopping_criteria: StoppingCriteriaList | None = None) -> torch.Tensor:
    """The same decoding, each step running the generator over the prompt and every token so far (no KV cache)."""
    batch = inputs_embeds.shape[0]
    embedding = generator.get_input_embeddings()
    tokens = torch.empty(batch, 0, dtype=torch.long, device=inputs_embeds.device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=inputs_embeds.device)
    if streamer is not None:
        streamer.put(tokens.cpu())
    embeds, mask = inputs_embeds, attention_mask
    for step in range(max_new):
        logits = generator(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids(mask), use_cache=False,
                           logits_to_keep=1).logits[:, -1]
        tokens = _choose(logits, tokens, unfinished, step, min_new, eos, pad, streamer, logits_processor)
        _stop(stopping_criteria, tokens, logits, unfinished)
        if step == max_new - 1 or not bool(unfinished.any()):
            break
        embeds = torch.cat([embeds, embedding(tokens[:, -1:]).to(embeds.dtype)], dim=1)
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
    if streamer is not None:
        streamer.end()
    return tokens
