"""Chat templates: an instruct generator's tokenizer renders every prompt (training, answer(), the server) alike."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from standins import causal_lm
from tiny import one_thread  # noqa: F401

from mmgpt import inference
from mmgpt.config import FusionConfig, GeneratorConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from mmgpt.data.example import Example
from mmgpt.model import MMGPT
from mmgpt.prompts import chat_prompt, conversation_prompt, prompt_messages


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat")
    return {"chat": causal_lm("qwen2", root / "chat"), "plain": causal_lm("llama", root / "plain", chat_template=False)}


def build(folder: Path, **changes: object) -> MMGPT:
    cfg = ModelConfig(text_encoder=TextEncoderConfig(max_length=96),
                      image_encoder=ImageEncoderConfig(kwargs={"img_size": 32, "widths": [8, 16], "stem_width": 8}),
                      fusion=FusionConfig(type="concat", dim=16, num_layers=1, num_heads=2, null_token=False),
                      generator=GeneratorConfig(name=str(folder)), max_answer_length=12)
    for key, value in changes.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return MMGPT.from_config(cfg)


def decode(model: MMGPT, ids: list[int]) -> str:
    return model.processor.tokenizer.decode(ids, skip_special_tokens=False)


def test_a_question_is_rendered_with_the_template_and_the_system_prompt(folders: dict) -> None:
    model = build(folders["chat"], system_prompt="Answer briefly.")
    assert model.processor.uses_chat_template
    text = decode(model, model.processor.prompt_ids("what color is the shape?"))
    assert text == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nwhat color is the shape?"
                    "<|im_end|>\n<|im_start|>assistant\n")


def test_a_dialogue_becomes_its_turns(folders: dict) -> None:
    messages = [{"role": "user", "content": "What is this?\nBe short."}, {"role": "assistant", "content": "A bus."},
                {"role": "user", "content": "What color?"}]
    assert prompt_messages(conversation_prompt(messages)) == messages
    model = build(folders["chat"])
    rendered = decode(model, model.processor.prompt_ids(conversation_prompt(messages)))
    assert rendered == chat_prompt(conversation_prompt(messages), model.processor.tokenizer)
    assert rendered.count("<|im_start|>") == 4 and rendered.endswith("<|im_start|>assistant\n")


def test_answer_only_loss_supervises_no_template_token(folders: dict) -> None:
    model = build(folders["chat"])
    tokenizer = model.processor.tokenizer
    batch = model.processor(["what color is the shape?", "is there a circle?"], [torch.zeros(3, 32, 32)] * 2,
                            ["red", "no"])
    targets = batch["answer_ids"][:, 1:].masked_fill(batch["answer_mask"][:, 1:] == 0, -100)
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    for row, answer in zip(targets, ["red", "no"]):
        supervised = [int(t) for t in row if t != -100]
        assert len(supervised) >= 2  # the answer's tokens and the end of the turn
        assert start not in supervised
        # exactly the answer and the end of turn: nothing of the prompt's template
        assert decode(model, supervised) == f"{answer}<|im_end|>"
    assert all(start in ids for ids in batch["input_ids"].tolist())
    out = model(**batch)
    assert int(out.num_tokens) == int((targets != -100).sum())


def test_answer_and_training_use_the_same_prompt(folders: dict) -> None:
    # answer() (and the server's single-turn requests, which share inference.question_prompts) and the training
    # data hand the Processor the same plain prompt; the Processor renders it
    model = build(folders["chat"])
    question = "is there a circle?"
    from_answer = inference.question_batch(model, [question], [torch.zeros(3, 32, 32)])["input_ids"][0].tolist()
    from_training = model.processor.collate([Example(image=torch.zeros(3, 32, 32), prompt=question,
                                                     answer="no")])["input_ids"][0].tolist()
    assert from_answer == from_training == model.processor.prompt_ids(question)
    assert decode(model, from_answer).startswith("<|im_start|>user\n")


def test_without_a_template_or_when_turned_off_prompts_stay_plain(folders: dict) -> None:
    for model in (build(folders["plain"]), build(folders["chat"], chat_template=False)):
        tokenizer = model.processor.tokenizer
        assert not model.processor.uses_chat_template
        ids = model.processor.prompt_ids("what color is the shape?")
        assert ids == [tokenizer.bos_token_id] + tokenizer.encode("what color is the shape?", add_special_tokens=False)


def test_the_saved_processor_keeps_the_template_setting(folders: dict, tmp_path: Path) -> None:
    model = build(folders["chat"], system_prompt="Be brief.")
    model.save_pretrained(tmp_path / "m")
    loaded = MMGPT.from_pretrained(tmp_path / "m")
    assert loaded.processor.uses_chat_template and loaded.processor.system_prompt == "Be brief."
    assert loaded.processor.prompt_ids("red?") == model.processor.prompt_ids("red?")
