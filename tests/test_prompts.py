"""answer() prompts a model with the same text the dataset readers train it on (mmgpt.prompts)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny import build, tiny_config

from mmgpt.config import PromptTemplates
from mmgpt.inference import answer
from mmgpt.prompts import question_prompt


def test_question_prompt_applies_the_templates() -> None:
    templates = PromptTemplates(vqa="Q: {question} A:", caption="Describe it.")
    assert question_prompt(" what color? ", templates) == "Q: what color? A:"
    assert question_prompt("  ", templates) == "Describe it."


def test_answer_prompts_are_question_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config()
    config.vqa_template = "Question: {question} Answer:"
    model = build(config)
    seen: list[str] = []
    real = type(model.processor).__call__

    def spy(self, prompts, images, answers=None):
        seen.extend(prompts)
        return real(self, prompts, images, answers)

    monkeypatch.setattr(type(model.processor), "__call__", spy)
    image = Image.new("RGB", (32, 32), "red")
    with torch.random.fork_rng(devices=[]):
        answer(["what color?", ""], [image, image], model=model, max_new_tokens=1)
    templates = PromptTemplates(vqa=config.vqa_template, caption=config.caption_prompt)
    assert seen == [question_prompt("what color?", templates), question_prompt("", templates)]
    assert seen[0] == "Question: what color? Answer:"
