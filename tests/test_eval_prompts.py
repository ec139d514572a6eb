"""The eval scripts ask a model in its own words: a model trained with its own vqa_template or caption_prompt is
evaluated with those, as in training (reading the set with the default templates asked a custom-prompt caption
model "Describe the image." and scored its one-word answers: CIDEr 0.19 against 1.15 in training)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from tiny import build, eval_config, one_thread  # noqa: F401 (autouse fixture)

from mmgpt.eval import caption as eval_caption
from mmgpt.eval import runner
from mmgpt.eval import vqa as eval_vqa


@pytest.fixture(scope="module")
def custom_prompt_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = dataclasses.replace(eval_config(max_answer_length=4), vqa_template="Q: {question} A:",
                                 caption_prompt="Say where, what colour and what shape.")
    folder = tmp_path_factory.mktemp("model") / "custom"
    build(config).save_pretrained(folder)
    return folder


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The prompts the model is run on (the model itself is not run)."""
    prompts: list[str] = []

    def generate_answers(model: Any, examples: list[Any], **kwargs: Any) -> list[str]:
        prompts.extend(e.prompt for e in examples)
        return ["red"] * len(examples)

    monkeypatch.setattr(runner, "generate_answers", generate_answers)
    return prompts


def test_eval_vqa_asks_with_the_models_template(custom_prompt_model: Path, asked: list[str], tmp_path: Path) -> None:
    eval_vqa.evaluate_vqa(["--model", str(custom_prompt_model), "--max-examples", "5",
                           "--out", str(tmp_path / "m.json")])
    assert len(asked) == 5
    assert all(p.startswith("Q: ") and p.endswith(" A:") for p in asked), asked


def test_eval_caption_asks_with_the_models_caption_prompt(custom_prompt_model: Path, asked: list[str],
                                                          tmp_path: Path) -> None:
    eval_caption.evaluate_captions(["--model", str(custom_prompt_model), "--max-examples", "4",
                                   "--out", str(tmp_path / "c.json")])
    assert asked == ["Say where, what colour and what shape."] * 4
