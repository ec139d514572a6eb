"""answer() prompts a model with the same text the dataset readers train it on (mmgpt.prompts)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny import build, tiny_config

from mmgpt.config import ModelConfig, PromptTemplates
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
    templates = PromptTemplates.from_config(config)
    assert seen == [question_prompt("what color?", templates), question_prompt("", templates)]
    assert seen[0] == "Question: what color? Answer:"


def test_templates_come_from_a_config_or_an_exports_manifest_with_one_set_of_defaults() -> None:
    assert PromptTemplates.from_config(ModelConfig()) == PromptTemplates()
    config = ModelConfig(vqa_template="Q: {question}", caption_prompt="Caption:")
    manifest_prompts = {"vqa_template": "Q: {question}", "caption_prompt": "Caption:"}
    assert PromptTemplates.from_config(config) == PromptTemplates.from_config(manifest_prompts)
    assert PromptTemplates.from_config(config) == PromptTemplates(vqa="Q: {question}", caption="Caption:")
