"""mmgpt.static_decoding: the same scores and tokens as Hugging Face generate, and only where it applies."""
from __future__ import annotations

import pytest
import torch
from tiny import build, make_batch, one_thread, random_images, tiny_config  # noqa: F401 (autouse fixture)
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from mmgpt import static_decoding
from mmgpt.decoding import resolve_generation_config
from mmgpt.inference import answer, stream_answer

PROMPTS = ["what color is the shape?", "is there a circle?", "how many shapes are there in this image?", "hi"]


class Recorder(LogitsProcessor):
    """Keeps every step's scores, makes row 0 end (eos) at step 3 and spreads the others' tokens."""

    def __init__(self, eos: int) -> None:
        self.scores: list[torch.Tensor] = []
        self.eos = eos

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.scores.append(scores.clone())
        scores = scores.clone()
        step = input_ids.shape[1]
        if step == 3:
            scores[0, self.eos] = 1e9
        # a random-weight model repeats one token; a per-step bonus makes the answers differ step to step
        scores[1:, (7 * step + 3) % scores.shape[1]] += 1e3
        return scores


def _prompt_embeds(model, batch):
    inputs = model.generator_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    return inputs.inputs_embeds, inputs.attention_mask


@pytest.mark.parametrize("generator", ["llama", "qwen2"])
@torch.no_grad()
def test_scores_and_tokens_equal_hugging_face_generate(generator: str) -> None:
    model = build(tiny_config(generator=generator)).eval()
    embeds, mask = _prompt_embeds(model, make_batch(model, PROMPTS))
    assert not mask.all()  # left padding is exercised
    config, _ = resolve_generation_config(model.generation_config, max_new_tokens=10)
    eos = model.processor.tokenizer.eos_token_id
    hf, static = Recorder(eos), Recorder(eos)
    expected = model.generator.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config,
                                        logits_processor=LogitsProcessorList([hf]))
    assert static_decoding.supports(model.generator, config, {"logits_processor": LogitsProcessorList()})
    tokens = static_decoding.generate(model.generator, embeds, mask, config,
                                      logits_processor=LogitsProcessorList([static]))
    assert torch.equal(tokens, expected)
    assert tokens[0, 3] == eos and (tokens[0, 4:] == config.pad_token_id).all()  # an ended row is padded
    assert len(static.scores) == len(hf.scores) == 10
    for ours, theirs in zip(static.scores, hf.scores):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_seeded_sampling_and_streaming_give_hugging_face_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(tiny_config()).eval()
    image = random_images(model, 1)[0]
    calls = []
    static_generate = static_decoding.generate
    monkeypatch.setattr(static_decoding, "generate", lambda *a, **k: calls.append(1) or static_generate(*a, **k))
    sampled = answer(PROMPTS[0], image, model=model, temperature=1.5, seed=3, max_new_tokens=8)
    streamed = "".join(stream_answer(PROMPTS[0], image, model=model, temperature=1.5, seed=3, max_new_tokens=8))
    assert len(calls) == 2 and sampled
    monkeypatch.setattr(static_decoding, "supports", lambda *a: False)  # Hugging Face generate from here on
    assert answer(PROMPTS[0], image, model=model, temperature=1.5, seed=3, max_new_tokens=8) == sampled == streamed
    assert len(calls) == 2


def test_settings_it_does_not_implement_go_to_hugging_face() -> None:
    model = build(tiny_config()).eval()

    def supported(**options) -> bool:
        config, rest = resolve_generation_config(model.generation_config, **options)
        return static_decoding.supports(model.generator, config, rest)

    assert supported()
    assert supported(max_new_tokens=3)
    assert not supported(num_beams=2)
    assert not supported(repetition_penalty=1.3)
    assert not supported(no_repeat_ngram_size=2)
    assert supported(use_cache=False)
    assert not supported(output_scores=True)
    assert not supported(prefix_allowed_tokens_fn=lambda batch, ids: [0])
    config, _ = resolve_generation_config(model.generation_config, temperature=0.7)
    assert not static_decoding.supports(model.generator, config, {})  # sampling inside HF's loop
    gpt2 = build(tiny_config(generator="gpt2")).eval()
    assert not static_decoding.supports(gpt2.generator, gpt2.generation_config, {})
    assert not static_decoding.supports(model.train().generator, model.generation_config, {})  # dropout
    model.eval().generator.generation_config.repetition_penalty = 1.2  # merged in by Hugging Face generate
    assert not static_decoding.supports(model.generator, GenerationConfig(max_new_tokens=5), {})


@torch.no_grad()
def test_min_new_tokens_holds_eos_back_as_hugging_face_does() -> None:
    model = build(tiny_config()).eval()
    embeds, mask = _prompt_embeds(model, make_batch(model, PROMPTS))
    eos = model.processor.tokenizer.eos_token_id

    class EosFirst(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            scores = scores.clone()
            scores[:, eos] += 1e3  # -inf (held back) stays -inf
            return scores

    # eos wins every step once min_new_tokens allow it
    config, _ = resolve_generation_config(model.generation_config, max_new_tokens=8, min_new_tokens=5)
    processors = LogitsProcessorList([EosFirst()])
    assert static_decoding.supports(model.generator, config, {"logits_processor": processors})
    tokens = static_decoding.generate(model.generator, embeds, mask, config, logits_processor=processors)
    expected = model.generator.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config,
                                        logits_processor=processors)
    assert torch.equal(tokens, expected) and tokens.shape[1] == 6 and (tokens[:, 5] == eos).all()


@torch.no_grad()
def test_use_cache_false_reruns_the_whole_sequence_and_gives_the_cached_tokens() -> None:
    # Hugging Face generate turns the cache back on for a prompt given as embeddings: use_cache=False was a no-op
    model = build(tiny_config()).eval()
    batch = make_batch(model, PROMPTS)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    lengths = []
    forward = model.generator.forward
    model.generator.forward = lambda *a, **k: lengths.append(k["inputs_embeds"].shape[1]) or forward(*a, **k)
    uncached = model.generate(*inputs, max_new_tokens=5, min_new_tokens=5, use_cache=False)
    prompt = lengths[0]
    assert lengths == [prompt + step for step in range(5)]
    del model.generator.forward
    assert torch.equal(uncached, model.generate(*inputs, max_new_tokens=5, min_new_tokens=5))


class StopRow1At(StoppingCriteria):
    """Ends row 1 once it has `length` tokens; keeps what it was called with."""

    def __init__(self, length: int) -> None:
        self.length, self.seen = length, []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.seen.append(input_ids.clone())
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[1] = input_ids.shape[1] >= self.length
        return done


@pytest.mark.parametrize("use_cache", [True, False])
@torch.no_grad()
def test_stopping_criteria_end_rows_as_in_hugging_face_generate(use_cache: bool) -> None:
    """A stopping criterion (the server's stop strings, cancellations) sees the same tokens, ends the same rows."""
    model = build(tiny_config()).eval()
    embeds, mask = _prompt_embeds(model, make_batch(model, PROMPTS))
    config, _ = resolve_generation_config(model.generation_config, max_new_tokens=8, use_cache=use_cache)
    eos = model.processor.tokenizer.eos_token_id
    hf, static = StopRow1At(3), StopRow1At(3)
    expected = model.generator.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config,
                                        logits_processor=LogitsProcessorList([Recorder(eos)]),
                                        stopping_criteria=StoppingCriteriaList([hf]))
    kwargs = {"logits_processor": LogitsProcessorList([Recorder(eos)]),
              "stopping_criteria": StoppingCriteriaList([static])}
    assert static_decoding.supports(model.generator, config, kwargs)
    tokens = static_decoding.generate(model.generator, embeds, mask, config, **kwargs)
    assert torch.equal(tokens, expected)
    assert (tokens[1, 3:] == config.pad_token_id).all() and (tokens[2:, 3:] != config.pad_token_id).any()
    assert len(static.seen) == len(hf.seen) and all(torch.equal(a, b) for a, b in zip(static.seen, hf.seen))


@pytest.mark.parametrize("generator", ["llama", "qwen2"])
@torch.no_grad()
def test_int8_layers_fused_per_step_give_hugging_face_scores(generator: str) -> None:
    from mmgpt.compress.int8 import quantize_model

    model = build(tiny_config(generator=generator)).eval()
    quantize_model(model, "int8")
    embeds, mask = _prompt_embeds(model, make_batch(model, PROMPTS))
    config, _ = resolve_generation_config(model.generation_config, max_new_tokens=8)
    eos = model.processor.tokenizer.eos_token_id
    hf, static = Recorder(eos), Recorder(eos)
    expected = model.generator.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config,
                                        logits_processor=LogitsProcessorList([hf]))
    tokens = static_decoding.generate(model.generator, embeds, mask, config,
                                      logits_processor=LogitsProcessorList([static]))
    # q/k/v and gate/up each ran as one int8 kernel (qwen2's q/k/v biases included)
    fused = static_decoding._Int8Fused.of(model.generator)
    assert len(fused) == 1 and all(part is not None for part in fused[0])
    assert torch.equal(tokens, expected)
    for ours, theirs in zip(static.scores, hf.scores, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # packing a layer again (new weights) builds the fused weights again
    layer = model.generator.model.layers[0].self_attn.q_proj
    layer.weight.zero_()
    layer.pack()
    assert static_decoding._Int8Fused.of(model.generator)[0][0] is not fused[0][0]


@torch.no_grad()
def test_rotary_tables_computed_once_rotate_exactly_as_hugging_face_each_step() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    generator = build(tiny_config()).eval().generator
    rotary = generator.model.rotary_emb
    heads, head_dim = generator.config.num_attention_heads, generator.model.layers[0].self_attn.head_dim
    positions = torch.tensor([[5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6]])  # a left-padded row starts lower
    embeds = torch.randn(2, 1, generator.config.hidden_size)
    cos, sin = static_decoding._rotary_tables(generator, embeds, positions)
    for step in range(positions.shape[1]):
        x = torch.randn(2, heads, 1, head_dim)
        step_cos, step_sin = rotary(embeds, positions[:, step : step + 1])
        expected, _ = apply_rotary_pos_emb(x, x, step_cos, step_sin)
        assert torch.equal(static_decoding._rotate(x, cos[:, step], sin[:, step]), expected)


@torch.no_grad()
def test_a_steps_rms_norm_is_hugging_faces_to_the_bit() -> None:
    norm = build(tiny_config()).eval().generator.model.layers[0].input_layernorm
    norm.weight.normal_()
    x = torch.randn(3, 1, norm.weight.shape[0]) * 10
    assert torch.equal(static_decoding._rms_norm(x, static_decoding._norm(norm)), norm(x))


@torch.no_grad()
def test_the_output_layers_transposed_copy_follows_in_place_weight_updates() -> None:
    model = build(tiny_config()).eval()
    embeds, mask = _prompt_embeds(model, make_batch(model, PROMPTS))
    config, _ = resolve_generation_config(model.generation_config, max_new_tokens=6)
    static_decoding.generate(model.generator, embeds, mask, config)  # the copy is made
    model.generator.lm_head.weight.mul_(-1)  # in place, as an optimizer step updates it
    expected = model.generator.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
    assert torch.equal(static_decoding.generate(model.generator, embeds, mask, config), expected)


@torch.no_grad()
def test_forward_hooks_on_linear_layers_run_in_the_static_loop() -> None:
    """Linear layers are called as bare functions for speed, except those someone hooked: their hooks still run."""
    model = build(tiny_config()).eval()
    embeds, mask = _prompt_embeds(model, make_batch(model, PROMPTS))
    config, _ = resolve_generation_config(model.generation_config, max_new_tokens=6)
    layer = model.generator.model.layers[0]
    calls = []
    for module in (layer.self_attn.o_proj, layer.mlp.down_proj):
        module.register_forward_hook(lambda module, args, out: calls.append(1) or out * 5)
    eos = model.processor.tokenizer.eos_token_id
    hf, static = Recorder(eos), Recorder(eos)
    expected = model.generator.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config,
                                        logits_processor=LogitsProcessorList([hf]))
    hf_calls, calls[:] = len(calls), []
    tokens = static_decoding.generate(model.generator, embeds, mask, config,
                                      logits_processor=LogitsProcessorList([static]))
    assert len(calls) == hf_calls == 2 * 6  # prefill and 5 steps, two hooked layers
    assert torch.equal(tokens, expected)
    for ours, theirs in zip(static.scores, hf.scores, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
