"""A prompt over the text encoder's limit keeps its leading special token and its end (the last question)."""
from __future__ import annotations

import logging

import pytest
from tiny import build, tiny_config

from mmgpt.processor import char_budget, tail_token_ids


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_tail_token_ids_keeps_leading_token_and_end() -> None:
    def encode(text: str) -> list[str]:
        return ["<s>"] + text.split()

    ids, total, exact = tail_token_ids(encode, _words(10), 4)
    assert ids == ["<s>", "w7", "w8", "w9"] and total == 11 and exact
    assert tail_token_ids(encode, "a b", 4) == (["<s>", "a", "b"], 3, True)


def test_long_text_is_cut_from_the_front_before_tokenizing() -> None:
    seen: list[str] = []

    def encode(text: str) -> list[str]:
        seen.append(text)
        return ["<s>"] + text.split()

    text = _words(200_000)
    ids, total, exact = tail_token_ids(encode, text, 8)
    assert ids == ["<s>"] + text.split()[-7:] and not exact and total > 8
    assert max(len(t) for t in seen if t) <= char_budget(8)


@pytest.mark.parametrize("text_encoder", ["lm_embeddings", "bert"])
def test_multi_turn_prompt_keeps_the_last_question(text_encoder: str, caplog: pytest.LogCaptureFixture) -> None:
    processor = build(tiny_config(text=text_encoder)).processor
    limit = processor.max_prompt_length
    dialogue = "\n".join(["User: is there a circle?\nAssistant: yes"] * limit) + "\nUser: what color is the shape?"
    with caplog.at_level(logging.WARNING, logger="mmgpt.processor"):
        ids = processor.prompt_ids(dialogue)
    encoder = processor.text_tokenizer or processor.tokenizer
    full = (encoder(dialogue, add_special_tokens=True)["input_ids"] if processor.text_tokenizer is not None
            else [processor.tokenizer.bos_token_id] + processor.tokenizer.encode(dialogue, add_special_tokens=False))
    assert len(ids) == limit and ids[0] == full[0] and ids[1:] == full[len(full) - limit + 1:]
    assert "what color is the shape?" in encoder.decode(ids, skip_special_tokens=True)
    assert f"kept the last {limit} of {len(full)} tokens" in caplog.text
    assert processor.prompt_length(dialogue) == len(full)
