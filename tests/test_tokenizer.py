"""The from-scratch tokenizer: case-insensitive by default, since the built-in data is all lowercase; its cache
never changes what is trained and is never trusted when damaged."""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

import mmgpt.tokenizer as tokenizer_module
from mmgpt.config import PromptTemplates, TokenizerConfig
from mmgpt.data.formats import read_dataset
from mmgpt.tokenizer import cached_train_tokenizer, tokenizer_key, train_tokenizer
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


# ----------------------------------------------------------------------------- the cache of trained tokenizers

TEXTS = ["what color is the shape?", "red", "is there a circle?", "no", "Describe the image.",
         "a blue star in the top right corner."] * 3
SMALL = TokenizerConfig(vocab_size=300)


def _saved(tokenizer, folder: Path) -> dict[str, bytes]:
    tokenizer.save_pretrained(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _no_training(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("trained although the cache holds this tokenizer")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", fail)


def test_a_cached_tokenizer_saves_the_same_bytes_as_a_trained_one(tmp_path: Path, monkeypatch) -> None:
    trained = _saved(train_tokenizer(TEXTS, SMALL), tmp_path / "trained")
    first = _saved(cached_train_tokenizer(TEXTS, SMALL, tmp_path / "cache"), tmp_path / "first")
    _no_training(monkeypatch)
    second = _saved(cached_train_tokenizer(TEXTS, SMALL, tmp_path / "cache"), tmp_path / "second")
    assert trained == first == second
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1


@pytest.mark.parametrize("change", ["text", "order", "config", "boundary"])
def test_other_text_or_config_is_another_entry(tmp_path: Path, change: str) -> None:
    texts, cfg = list(TEXTS), SMALL
    if change == "text":
        texts[3] = "yes"
    elif change == "order":
        texts[0], texts[1] = texts[1], texts[0]
    elif change == "config":
        cfg = TokenizerConfig(vocab_size=300, lowercase=False)
    else:  # the same characters split into other texts
        texts[0:2] = [texts[0] + texts[1][:1], texts[1][1:]]
    assert tokenizer_key(texts, cfg) != tokenizer_key(TEXTS, SMALL)
    cached_train_tokenizer(TEXTS, SMALL, tmp_path)
    other = cached_train_tokenizer(texts, cfg, tmp_path)
    assert _saved(other, tmp_path / "a") == _saved(train_tokenizer(texts, cfg), tmp_path / "b")
    assert len(list(tmp_path.glob("*.json"))) == 2


def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "altered":  # a merge rule changed, the checksum left as it was
        entry = json.loads(data)
        entry["tokenizer"] = entry["tokenizer"].replace('"merges":[', '"merges":["w h",', 1)
        path.write_text(json.dumps(entry))
    elif how == "foreign":  # another entry's file under this entry's name
        path.write_bytes(other.read_bytes())
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x00\xff" * 100)


@pytest.mark.parametrize("how", ["truncated", "altered", "foreign", "empty", "binary"])
def test_a_damaged_entry_is_trained_again_never_trusted(tmp_path: Path, how: str, caplog) -> None:
    expected = _saved(train_tokenizer(TEXTS, SMALL), tmp_path / "trained")
    cached_train_tokenizer(TEXTS, SMALL, tmp_path / "cache")
    cached_train_tokenizer(TEXTS[:6], SMALL, tmp_path / "cache")
    path = tmp_path / "cache" / f"{tokenizer_key(TEXTS, SMALL)}.json"
    other = tmp_path / "cache" / f"{tokenizer_key(TEXTS[:6], SMALL)}.json"
    _damage(path, how, other)
    with caplog.at_level(logging.WARNING, logger="mmgpt.tokenizer"):
        again = cached_train_tokenizer(TEXTS, SMALL, tmp_path / "cache")
    assert "is damaged" in caplog.text
    assert _saved(again, tmp_path / "again") == expected
    caplog.clear()
    # rebuilt whole: the next run reads it without a warning
    with caplog.at_level(logging.WARNING, logger="mmgpt.tokenizer"):
        assert _saved(cached_train_tokenizer(TEXTS, SMALL, tmp_path / "cache"), tmp_path / "next") == expected
    assert "is damaged" not in caplog.text


def test_concurrent_writers_each_leave_a_complete_entry(tmp_path: Path) -> None:
    expected = _saved(train_tokenizer(TEXTS, SMALL), tmp_path / "trained")
    # a writer killed half-way left its temporary file: never read as the entry
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f".{tokenizer_key(TEXTS, SMALL)}.dead.tmp").write_text('{"format": 1, "key"')
    results = []
    threads = [threading.Thread(target=lambda: results.append(cached_train_tokenizer(TEXTS, SMALL, tmp_path / "cache")))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [_saved(t, tmp_path / f"r{i}") for i, t in enumerate(results)] == [expected] * 6
    entries = list((tmp_path / "cache").glob("*.json"))
    assert len(entries) == 1 and tokenizer_module._read_entry(entries[0]) is not None
