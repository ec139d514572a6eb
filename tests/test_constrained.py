"""Closed-set answers (mmgpt.constrained): every answer is a choice, and greedy picks the most probable one."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from tiny import build, make_batch, one_thread, tiny_config  # noqa: F401 (one_thread: autouse fixture)

from mmgpt.constrained import AnswerChoicesLogitsProcessor
from mmgpt.decoding import add_decoding_args, decoding_from_args, resolve_generation_config
from mmgpt.inference import answer, stream_answer
from mmgpt.model import MMGPT

# shared prefixes ("a small ...", "red" inside longer answers) exercise the trie
CHOICES = ["red", "blue", "yes", "no", "a small green triangle", "a small red circle",
           "a big red circle next to a blue square"]


def sharpened(seed: int) -> MMGPT:
    """An untrained tiny model whose generator weights are widened, so different choices win on different images."""
    model = build(tiny_config(), seed=seed).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.generator.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3, generator=generator)
    return model


def choice_log_probs(model: MMGPT, batch: dict[str, torch.Tensor], row: int, choices: list[str]) -> torch.Tensor:
    """log p(choice, eos | image, question) of each choice for one row, scored by teacher forcing."""
    rows = {k: v[row : row + 1].repeat(len(choices), *[1] * (v.dim() - 1)) for k, v in batch.items()}
    answers = model.processor.encode_answers(choices)
    with torch.no_grad():
        out = model(rows["input_ids"], rows["attention_mask"], rows["pixel_values"], answers["answer_ids"],
                    answers["answer_mask"])
    return -out.per_example_loss * (answers["answer_mask"].sum(1) - 1)


def test_greedy_with_choices_picks_the_most_probable_choice() -> None:
    picked = set()
    for seed in range(3):
        model = sharpened(seed)
        batch = make_batch(model, ["what color is the shape?"] * 5, seed=seed)
        tokens = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                answer_choices=CHOICES)
        for row, text in enumerate(model.processor.decode(tokens)):
            best = CHOICES[int(choice_log_probs(model, batch, row, CHOICES).argmax())]
            assert text == best, f"seed {seed} row {row}: decoded {text!r}, most probable choice {best!r}"
            picked.add(best)
    assert len(picked) >= 2, f"the check needs rows where different choices win, got only {picked}"


@pytest.mark.parametrize("options", [
    {},
    {"do_sample": True, "temperature": 1.5, "top_k": 0},
    {"num_beams": 2},
    {"repetition_penalty": 50.0, "no_repeat_ngram_size": 1},  # penalties must not push an answer off the set
])
def test_every_answer_is_a_choice_even_untrained(options: dict) -> None:
    model = build(tiny_config(generator="gpt2"), seed=1).eval()
    choices = ["a big red circle next to a blue square", "blue", "no"]
    batch = make_batch(model, ["is there a circle?", "what color is the shape?", "", "how many shapes are there?"])
    free = model.processor.decode(model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                                 **options))
    assert not set(free) <= set(choices), "the untrained model must not already answer within the set"
    for seed in range(3):
        torch.manual_seed(seed)
        tokens = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                answer_choices=choices, **options)
        assert set(model.processor.decode(tokens)) <= set(choices)


def test_processor_allows_only_continuations_of_a_choice() -> None:
    eos = 9
    processor = AnswerChoicesLogitsProcessor([[1, 2, eos], [1, 3, eos], [4, eos]], eos_token_id=eos)
    scores = torch.zeros(4, 10)
    out = processor(torch.tensor([[1], [4], [7], [eos]]), scores)
    allowed = [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in out]
    assert allowed[:3] == [{2, 3}, {eos}, set()]  # a row off the trie (a dead beam) gets nothing
    assert allowed[3] == set(range(10)), "a finished row (padding) is left alone"
    first = processor(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 10))
    assert set(torch.nonzero(torch.isfinite(first[0])).flatten().tolist()) == {1, 4}


def test_answer_and_stream_answer_take_choices(tmp_path) -> None:
    folder = tmp_path / "model"
    sharpened(0).save_pretrained(folder)
    image = np.full((32, 32, 3), 90, dtype=np.uint8)
    got = answer(["what color is the shape?", "is there a circle?"], [image, image], model=folder,
                 answer_choices=CHOICES, device="cpu")
    assert set(got) <= set(CHOICES)
    assert "".join(stream_answer("what color is the shape?", image, model=folder, answer_choices=CHOICES,
                                 device="cpu")) == got[0]


@pytest.mark.parametrize("value, error, message", [
    ("yes", TypeError, r"answer_choices must be a list of answer strings, got str"),
    ([], ValueError, r"at least one answer"),
    (["yes", " "], ValueError, r"answer_choices\[1\] is empty"),
    (["yes", 3], TypeError, r"answer_choices\[1\] must be a str"),
])
def test_bad_choices_name_the_field(value, error: type, message: str) -> None:
    from transformers import GenerationConfig

    with pytest.raises(error, match=message):
        resolve_generation_config(GenerationConfig(max_new_tokens=4), answer_choices=value)


def test_unwritable_choice_is_refused() -> None:
    model = build(tiny_config())
    batch = make_batch(model, ["what color is the shape?"])
    with pytest.raises(ValueError, match=r"answer_choices: '.*' cannot be written by this model's tokenizer"):
        model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                       answer_choices=["yes", "Zebra"])  # the tokenizer lowercases


def test_cli_choices_flag() -> None:
    parser = argparse.ArgumentParser()
    add_decoding_args(parser)
    assert decoding_from_args(parser.parse_args(["--choices", "yes,no, red"]))["answer_choices"] == \
        ["yes", "no", " red"]
    assert "answer_choices" not in decoding_from_args(parser.parse_args([]))
