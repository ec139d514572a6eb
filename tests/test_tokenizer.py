"""The from-scratch tokenizer: case-insensitive by default, since the built-in data is all lowercase."""
from __future__ import annotations

from pathlib import Path

from mmgpt.config import PromptTemplates, TokenizerConfig
from mmgpt.data.formats import read_dataset
from mmgpt.tokenizer import train_tokenizer
from mmgpt.training.config import load_train_config


def test_default_tokenizer_reads_a_capitalised_question_as_the_lowercase_one() -> None:
    # easy-VQA's questions are all lowercase: a case-sensitive tokenizer gave "What color is the shape?"
    # tokens the model never saw in training, and the default model answered it "yes"
    cfg = load_train_config("default", [])
    templates = PromptTemplates(vqa=cfg.model.vqa_template, caption=cfg.model.caption_prompt)
    examples = read_dataset(cfg.data.train[0], templates)[:2000]
    assert not any(c.isupper() for e in examples for c in e.prompt)
    tokenizer = train_tokenizer([t for e in examples for t in (e.prompt, e.answer)], cfg.model.tokenizer)
    for question in ("What color is the shape?", "IS THERE A CIRCLE?", "Does The Image Contain A Triangle?"):
        assert tokenizer(question).input_ids == tokenizer(question.lower()).input_ids, question


def test_case_is_kept_when_asked(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(["what color is the shape?", "What Color"] * 4,
                                TokenizerConfig(vocab_size=300, lowercase=False))
    assert tokenizer("What color").input_ids != tokenizer("what color").input_ids
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    # the normaliser is part of the saved tokenizer, so a reloaded model reads text the same way
    lowered = train_tokenizer(["what color is the shape?"] * 4, TokenizerConfig(vocab_size=300, lowercase=True))
    lowered.save_pretrained(tmp_path / "lower")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "lower")
    assert reloaded("WHAT COLOR").input_ids == reloaded("what color").input_ids
