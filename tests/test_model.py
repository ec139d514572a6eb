"""MMGPT end to end on tiny configs: every component combination trains, padding and loss masking are exact."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import (
    FUSION_NAMES,
    GENERATORS,
    IMAGE_ENCODERS,
    NUM_PATCHES,
    TEXT_ENCODERS,
    TEXTS,
    build,
    generator_config,
    make_batch,
    one_thread,  # noqa: F401 (autouse fixture)
    random_images,
    select,
    tiny_config,
)

from mmgpt.config import ConfigError, ModelConfig
from mmgpt.decoding import position_ids
from mmgpt.model import MMGPT, MMGPTOutput, length_groups, pad_left

PROMPTS = ["what color?", "is there a small green triangle on the left?", "Describe the image."]
ANSWERS = ["a big red circle next to a blue square", "no", "a small green triangle"]
# the full cross product: each model builds and trains in a few ten milliseconds
COMBINATIONS = list(itertools.product(TEXT_ENCODERS, IMAGE_ENCODERS, FUSION_NAMES, GENERATORS))


def test_every_component_is_in_the_grid() -> None:
    assert {"weighted_sum", "product", "cross_attention"} <= set(FUSION_NAMES)
    assert {"gpt2", "llama", "qwen2"} == set(GENERATORS)
    assert {"cnn", "vit", "clip", "siglip"} == set(IMAGE_ENCODERS)
    assert {"lm_embeddings", "bert"} == set(TEXT_ENCODERS)
    assert len(COMBINATIONS) == 2 * 4 * len(FUSION_NAMES) * 3


@pytest.mark.parametrize("text, image, fusion, generator", COMBINATIONS)
def test_forward_backward_reaches_every_trainable_parameter(text: str, image: str, fusion: str, generator: str) -> None:
    model = build(tiny_config(text, image, fusion, generator))
    with torch.no_grad():  # Flamingo-style gates start at 0, which leaves what they gate without a gradient
        for name, parameter in model.fusion.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.5)
    model.train()
    batch = make_batch(model, PROMPTS[:2], ANSWERS[:2])
    out = model(**batch)
    vocab = model.generator.get_input_embeddings().num_embeddings
    assert out.logits.shape == (2, batch["answer_ids"].shape[1] - 1, vocab)
    assert out.per_example_loss.shape == (2,)
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    nonfinite = [n for n, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not nonfinite, f"non-finite gradients: {nonfinite}"
    dead = [n for n, p in trainable if p.grad is None or not p.grad.any()]
    assert not dead, f"{len(dead)} trainable parameters get no gradient: {dead}"
    # every component holds parameters of its own (lm_embeddings shares the generator's)
    owners = {n.split(".", 1)[0] for n, _ in trainable}
    expected = {"image_encoder", "fusion", "projector", "generator"} | ({"text_encoder"} if text == "bert" else set())
    assert owners == expected


def greedy(model: MMGPT, batch: dict[str, torch.Tensor], steps: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy tokens of each row up to and including its eos, and the raw logits of those steps."""
    out = model.generate(
        batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=steps,
        return_dict_in_generate=True, output_logits=True,
    )
    eos = model.processor.tokenizer.eos_token_id
    tokens, logits = [], []
    for i, row in enumerate(out.sequences.tolist()):
        if eos in row:
            row = row[: row.index(eos) + 1]
        tokens.append(row)
        logits.append(torch.stack([step[i] for step in out.logits[: len(row)]]))
    return tokens, logits


PADDING_CASES = [("lm_embeddings", f, g) for f in FUSION_NAMES for g in ("gpt2", "llama")] + [
    ("bert", f, "llama") for f in FUSION_NAMES
] + [("bert", "cross_attention", "gpt2")]


@pytest.mark.parametrize("text, fusion, generator", PADDING_CASES)
def test_padded_batch_matches_each_example_alone(text: str, fusion: str, generator: str) -> None:
    model = build(tiny_config(text, "cnn", fusion, generator)).eval()
    batch = make_batch(model, PROMPTS, ANSWERS)
    # the batch really is padded, in the prompts and in the answers
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3
    assert len(set(batch["answer_mask"].sum(1).tolist())) == 3
    together = model(**batch).per_example_loss
    tokens, logits = greedy(model, batch, steps=6)
    for i in range(3):
        alone = select(batch, i)
        assert alone["input_ids"].shape[1] < batch["input_ids"].shape[1] or alone["answer_ids"].shape[1] < batch[
            "answer_ids"].shape[1]
        torch.testing.assert_close(model(**alone).per_example_loss[0], together[i], atol=1e-5, rtol=0)
        single_tokens, single_logits = greedy(model, alone, steps=6)
        assert single_tokens[0] == tokens[i], f"example {i}"
        torch.testing.assert_close(single_logits[0], logits[i], atol=1e-4, rtol=0)


def test_padding_changes_nothing_with_a_concat_prefix_longer_than_the_text() -> None:
    # concat puts image tokens in front of the text; a very short and a long prompt side by side
    model = build(tiny_config("bert", "vit", "concat", "qwen2")).eval()
    batch = make_batch(model, ["", PROMPTS[1]], ["yes", ANSWERS[0]])
    together = model(**batch).per_example_loss
    for i in range(2):
        torch.testing.assert_close(model(**select(batch, i)).per_example_loss[0], together[i], atol=1e-5, rtol=0)


def hand_loss(model: MMGPT, batch: dict[str, torch.Tensor]) -> tuple[list[float], list[int]]:
    """Per example: mean cross-entropy of answer tokens after bos, computed on an unpadded sequence."""
    prefix, prefix_mask = model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    embed = model.generator.get_input_embeddings()
    losses, counts = [], []
    for i in range(prefix.shape[0]):
        answer = batch["answer_ids"][i][batch["answer_mask"][i] == 1]
        sequence = torch.cat([prefix[i][prefix_mask[i] == 1], embed(answer)])[None]
        logits = model.generator(inputs_embeds=sequence).logits[0]
        start = int(prefix_mask[i].sum())
        nll = [
            -torch.log_softmax(logits[start + j - 1].double(), dim=-1)[answer[j]]
            for j in range(1, len(answer))  # answer[0] is bos: never a target
        ]
        losses.append(float(sum(nll).detach() / len(nll)))
        counts.append(len(nll))
    return losses, counts


@pytest.mark.parametrize("text, fusion", [("lm_embeddings", "cross_attention"), ("bert", "product"),
                                          ("lm_embeddings", "concat")])
def test_loss_is_cross_entropy_over_supervised_answer_tokens_only(text: str, fusion: str) -> None:
    model = build(tiny_config(text, "cnn", fusion, "llama")).eval()
    batch = make_batch(model, PROMPTS, ["blue", "", ANSWERS[0]])
    tokenizer = model.processor.tokenizer
    out = model(**batch)
    expected, counts = hand_loss(model, batch)
    # each example supervises its answer tokens and eos, but not bos; "" supervises eos alone
    assert counts[0] >= 2 and counts[1] == 1 and counts[2] > counts[0]
    for i in range(3):
        answer = batch["answer_ids"][i][batch["answer_mask"][i] == 1].tolist()
        assert answer[0] == tokenizer.bos_token_id and answer[-1] == tokenizer.eos_token_id
    assert int(out.num_tokens) == sum(counts)
    torch.testing.assert_close(out.per_example_loss.double(), torch.tensor(expected, dtype=torch.double),
                               atol=1e-5, rtol=1e-5)
    total = sum(loss * n for loss, n in zip(expected, counts))
    torch.testing.assert_close(float(out.loss_sum.detach()), total, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(float(out.loss.detach()), total / sum(counts), atol=1e-5, rtol=1e-5)
    # the logits are the ones the loss was computed from
    targets = batch["answer_ids"][:, 1:]
    mask = batch["answer_mask"][:, 1:].bool()
    nll = F.cross_entropy(out.logits.transpose(1, 2), targets, reduction="none")
    torch.testing.assert_close(nll[mask].sum(), out.loss_sum)


@pytest.mark.parametrize("text", TEXT_ENCODERS)
def test_padding_content_and_extra_padding_do_not_change_the_loss(text: str) -> None:
    model = build(tiny_config(text, "cnn", "cross_attention", "llama")).eval()
    batch = make_batch(model, PROMPTS, ANSWERS)
    reference = model(**batch)
    g = torch.Generator().manual_seed(1)
    vocab = len(model.processor.text_tokenizer or model.processor.tokenizer)

    def scramble(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Random token ids wherever the mask is 0."""
        noise = torch.randint(0, vocab, ids.shape, generator=g)
        return torch.where(mask == 1, ids, noise)

    # padding content of the prompt
    changed = dict(batch, input_ids=scramble(batch["input_ids"], batch["attention_mask"]))
    assert not torch.equal(changed["input_ids"], batch["input_ids"])
    # more prompt padding, with arbitrary ids in it
    extra = torch.randint(0, vocab, (3, 4), generator=g)
    longer = dict(
        batch,
        input_ids=torch.cat([batch["input_ids"], extra], dim=1),
        attention_mask=torch.cat([batch["attention_mask"], torch.zeros(3, 4, dtype=torch.long)], dim=1),
    )
    # padding content of the answers, and more answer padding
    answers = dict(batch, answer_ids=scramble(batch["answer_ids"], batch["answer_mask"]))
    assert not torch.equal(answers["answer_ids"], batch["answer_ids"])
    longer_answers = dict(
        batch,
        answer_ids=torch.cat([batch["answer_ids"], torch.full((3, 3), 5)], dim=1),
        answer_mask=torch.cat([batch["answer_mask"], torch.zeros(3, 3, dtype=torch.long)], dim=1),
    )
    for name, variant in [("prompt padding content", changed), ("extra prompt padding", longer),
                          ("answer padding content", answers), ("extra answer padding", longer_answers)]:
        out = model(**variant)
        torch.testing.assert_close(out.per_example_loss, reference.per_example_loss, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(out.loss, reference.loss, atol=1e-5, rtol=0, msg=name)
        assert int(out.num_tokens) == int(reference.num_tokens), name
    # while a supervised token does change it
    flipped = batch["answer_ids"].clone()
    flipped[0, 1] = (flipped[0, 1] + 1) % vocab
    assert not torch.allclose(model(**dict(batch, answer_ids=flipped)).per_example_loss[0],
                              reference.per_example_loss[0])


def test_the_prefix_conditions_the_answer() -> None:
    # the image and the prompt both reach the loss (a broken prefix would make them irrelevant)
    model = build(tiny_config("lm_embeddings", "cnn", "cross_attention", "llama")).eval()
    batch = make_batch(model, PROMPTS[:2], ANSWERS[:2])
    reference = model(**batch).per_example_loss
    other_pixels = model(**dict(batch, pixel_values=torch.flip(batch["pixel_values"], dims=[-1]))).per_example_loss
    other_prompt = model(**dict(batch, input_ids=torch.flip(batch["input_ids"], dims=[0]),
                                attention_mask=torch.flip(batch["attention_mask"], dims=[0]))).per_example_loss
    assert (other_pixels - reference).abs().min() > 1e-6
    assert (other_prompt - reference).abs().min() > 1e-6


def test_generate_returns_new_tokens_and_stops_at_max_new_tokens() -> None:
    model = build(tiny_config()).eval()
    batch = make_batch(model, PROMPTS, ANSWERS)
    tokens = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=4)
    assert tokens.shape[0] == 3 and 1 <= tokens.shape[1] <= 4
    assert 0 <= int(tokens.min()) and int(tokens.max()) < model.generator.config.vocab_size
    assert len(model.processor.decode(tokens)) == 3


def test_unknown_generator_model_type_names_the_key_and_the_known_types() -> None:
    config = tiny_config()
    config.generator.kwargs["model_type"] = "not_a_model"
    with pytest.raises(ConfigError) as info:
        build(config)
    message = str(info.value)
    assert "model.generator.kwargs" in message and "not_a_model" in message
    assert "llama" in message and "gpt2" in message and "qwen2" in message


def test_generator_without_name_or_model_type_is_a_config_error() -> None:
    config = tiny_config()
    del config.generator.kwargs["model_type"]
    with pytest.raises(ConfigError, match=r"model\.generator needs a 'name'.*'model_type'"):
        build(config)


def test_generator_vocab_smaller_than_tokenizer_names_the_key_and_sizes() -> None:
    config = ModelConfig(generator=generator_config("gpt2", vocab_size=10))
    with pytest.raises(ConfigError) as info:
        build(config)
    message = str(info.value)
    assert "model.generator.kwargs.vocab_size (10)" in message and "smaller than the tokenizer" in message
    tokenizer_size = len(build(tiny_config(generator="gpt2")).processor.tokenizer)
    assert f"({tokenizer_size} tokens)" in message


def test_scratch_generator_needs_train_texts() -> None:
    with pytest.raises(ConfigError, match="pass train_texts"):
        MMGPT.from_config(tiny_config())


def test_vocab_follows_the_trained_tokenizer() -> None:
    model = build(tiny_config(generator="qwen2"))
    tokenizer = model.processor.tokenizer
    assert model.generator.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.generator.config.eos_token_id == tokenizer.eos_token_id
    assert model.generator.config.pad_token_id == tokenizer.pad_token_id
    # every training text round-trips through the byte-level BPE, up to the default lowercasing
    for text in TEXTS[:5]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text.lower()


def test_cached_token_ids_equal_fresh_ones_and_follow_the_tokenizer() -> None:
    processor = build(tiny_config(text="bert")).processor
    first = processor.encode_prompts(PROMPTS)
    again = processor.encode_prompts(PROMPTS)
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert processor.prompt_ids(PROMPTS[1]) == processor._tokenize_prompt(PROMPTS[1])
    assert processor.answer_ids(ANSWERS[0]) == processor._tokenize_answer(ANSWERS[0])
    # without a text tokenizer prompts are read with the generator's tokens: the cache must not keep the old ids
    processor.text_tokenizer = None
    assert processor.prompt_ids(PROMPTS[1])[0] == processor.tokenizer.bos_token_id
    assert processor.prompt_ids(PROMPTS[1]) == processor._tokenize_prompt(PROMPTS[1])
    processor.max_prompt_length = 3
    assert len(processor.prompt_ids(PROMPTS[1])) == 3


def test_unique_images_encodes_each_distinct_image_once() -> None:
    from mmgpt.model import unique_images

    images = torch.randn(3, 3, 8, 8)
    batch = images[torch.tensor([0, 1, 0, 2, 1])]
    distinct, index = unique_images(batch)
    assert distinct.shape[0] == 3
    assert torch.equal(distinct[index], batch)
    same, none = unique_images(images)
    assert none is None and same is images


def test_unique_images_is_exact_when_two_images_share_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmgpt.model
    from mmgpt.model import unique_images

    a, b = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)
    batch = torch.stack([a, b, a, b, b])
    real_unique = torch.unique

    def colliding_unique(values: torch.Tensor, **kwargs):
        # every key equal, as if the hash had collided
        return real_unique(torch.zeros_like(values), **kwargs) if values.ndim == 1 else real_unique(values, **kwargs)

    monkeypatch.setattr(mmgpt.model.torch, "unique", colliding_unique)
    distinct, index = unique_images(batch)
    assert distinct.shape[0] == 2
    assert torch.equal(distinct[index], batch)


def test_unique_images_finds_equal_images_in_many_batches() -> None:
    from mmgpt.model import unique_images

    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        images = torch.randn(37, 3, 16, 16, generator=generator)
        rows = torch.randint(0, 37, (128,), generator=generator)
        distinct, index = unique_images(images[rows])
        assert distinct.shape[0] == len(set(rows.tolist())), trial
        assert torch.equal(distinct[index], images[rows])


def test_repeated_images_give_the_loss_and_gradients_of_encoding_each_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmgpt.model

    model = build(tiny_config()).eval()
    batch = make_batch(model, (PROMPTS * 2)[:4], (ANSWERS * 2)[:4])
    batch["pixel_values"] = batch["pixel_values"][torch.tensor([0, 1, 0, 1])]

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.image_encoder.parameters() if p.grad is not None]

    shared_loss, shared_grads = loss_and_grads()
    monkeypatch.setattr(mmgpt.model, "unique_images", lambda pixels: (pixels, None))
    separate_loss, separate_grads = loss_and_grads()
    torch.testing.assert_close(shared_loss, separate_loss)
    assert len(shared_grads) == len(separate_grads) > 0
    for a, b in zip(shared_grads, separate_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
def test_prefix_length_is_the_prefix_mask_without_encoding(fusion: str) -> None:
    """MMGPT.prefix_length(text tokens) equals the positions prefix_embeds gives each row, image tokens included."""
    from PIL import Image

    model = build(tiny_config(fusion=fusion)).eval()
    prompts = ["what color is the shape?", "", "is there a small green triangle on the left?"]
    batch = model.processor(prompts, [Image.new("RGB", (32, 32))] * 3)
    with torch.no_grad():
        _, mask = model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    lengths = [model.prefix_length(n) for n in batch["attention_mask"].sum(1).tolist()]
    assert lengths == mask.sum(1).tolist()
    assert len(set(lengths)) == 3 and (min(lengths) > NUM_PATCHES) == (fusion == "concat")


def test_generator_inputs_are_the_left_padded_prefix_then_the_tokens_numbered_from_the_first_real_position() -> None:
    model = build(tiny_config(fusion="cross_attention")).eval()
    batch = make_batch(model, PROMPTS, ANSWERS)
    with torch.no_grad():
        prefix, prefix_mask = model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        inputs = model.generator_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                        batch["answer_ids"], batch["answer_mask"])
        start = model.generator_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    assert not prefix_mask.all()  # left padding is exercised
    width = prefix.shape[1]
    assert torch.equal(inputs.prefix_mask, prefix_mask)
    assert torch.equal(inputs.inputs_embeds[:, :width], prefix)
    embed = model.generator.get_input_embeddings()
    assert torch.equal(inputs.inputs_embeds[:, width:], embed(batch["answer_ids"]))
    assert torch.equal(inputs.attention_mask, torch.cat([prefix_mask, batch["answer_mask"]], dim=1))
    for row, mask in zip(inputs.position_ids.tolist(), inputs.attention_mask.tolist()):
        real = [p for p, m in zip(row, mask) if m]
        first = mask.index(1)
        assert real == list(range(len(real))) and row[:first] == [0] * first  # the left padding
    # generation starts from bos alone
    bos = model.processor.tokenizer.bos_token_id
    assert start.inputs_embeds.shape[1] == width + 1
    assert torch.equal(start.inputs_embeds[:, -1], embed(torch.tensor([bos])).expand(len(PROMPTS), -1))
    # the runtime (numpy, no torch) numbers positions with the same function
    assert np.array_equal(position_ids(inputs.attention_mask.numpy()), inputs.position_ids.numpy())


def test_fused_prefix_without_sharing_images_is_the_prefix_before_padding() -> None:
    model = build(tiny_config(fusion="concat")).eval()
    batch = make_batch(model, PROMPTS[:2] * 2, ANSWERS[:2] * 2)
    batch["pixel_values"][2:] = batch["pixel_values"][:2]  # repeated images take the shared path
    with torch.no_grad():
        shared = model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        each = pad_left(*model.fused_prefix(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                            share_images=False))
    torch.testing.assert_close(each, shared, atol=1e-6, rtol=0)


SHORT_AND_LONG = ["no", "yes", "red", "a big red circle next to a blue square above a small green triangle", "2",
                  "blue", "a small green triangle in the top left corner of the image"]


def _loss_and_grads(model: MMGPT, batch: dict, split: bool) -> tuple[MMGPTOutput, list[torch.Tensor]]:
    model.zero_grad()
    out = model(**batch, split_lengths=split)
    out.loss.backward()
    return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("fusion", ["cross_attention", "concat", "product", "cross_attention+image_prefix"])
@pytest.mark.parametrize("several", [False, True])
def test_a_batch_split_by_answer_length_gives_the_loss_and_gradients_of_one_pass(fusion: str, several: bool) -> None:
    config = tiny_config(fusion=fusion, max_answer_length=24)
    config.max_images = 3 if several else 1
    # training mode: batch norm's statistics must come from the whole batch, as in one pass
    model = build(config).train()
    prompts = [PROMPTS[i % 3] for i in range(len(SHORT_AND_LONG))]
    images = random_images(model, len(prompts))
    if several:
        images = [images[i : i + 1 + i % 3] for i in range(len(images))]
    batch = model.processor(prompts, images, SHORT_AND_LONG)
    assert length_groups(batch["attention_mask"], batch["answer_mask"]) is not None  # the split is taken
    whole, whole_grads = _loss_and_grads(model, batch, split=False)
    split, split_grads = _loss_and_grads(model, batch, split=True)
    assert split.logits is None and int(split.num_tokens) == int(whole.num_tokens)
    torch.testing.assert_close(split.loss_sum, whole.loss_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.per_example_loss, whole.per_example_loss, rtol=1e-5, atol=1e-5)
    assert len(split_grads) == len(whole_grads) > 0
    for a, b in zip(split_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_length_groups_split_only_where_padding_costs() -> None:
    mask = lambda lengths, width: (torch.arange(width) < torch.tensor(lengths)[:, None]).long()  # noqa: E731
    text = mask([5] * 8, 5)
    assert length_groups(text, mask([3, 3, 2, 3, 3, 3, 2, 3], 3)) is None
    assert length_groups(text[:1], mask([30], 30)) is None
    answers = mask([3, 30, 3, 3, 28, 3, 3, 3], 30)
    groups = length_groups(text, answers)
    assert [g.tolist() for g in groups] == [[0, 2, 3, 5, 6, 7], [1, 4]]
    # one long answer among many is worth its own group; one short among long ones is not
    assert length_groups(mask([5] * 16, 5), mask([30] * 15 + [3], 30)) is None
