"""answer(), stream_answer() and the `mmgpt` CLI on a tiny saved model."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmgpt import cli
from mmgpt.config import FusionConfig, GeneratorConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from mmgpt.inference import answer, default_model_path, load_model, stream_answer
from mmgpt.model import MMGPT

TEXTS = ["what color is the shape?", "is there a circle?", "red", "blue", "green", "yes", "no",
         "Describe the image.", "A large red circle on the left."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained model: its answers are arbitrary but deterministic, which is all these tests need."""
    torch.manual_seed(0)
    config = ModelConfig(
        text_encoder=TextEncoderConfig(max_length=12),
        image_encoder=ImageEncoderConfig(kwargs={"widths": [8, 16], "stem_width": 8}),
        fusion=FusionConfig(type="cross_attention", dim=32, num_layers=1, num_heads=2, null_token=False),
        generator=GeneratorConfig(kwargs={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                             "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "num_key_value_heads": 2, "max_position_embeddings": 64}),
        max_answer_length=10,
    )
    model = MMGPT.from_config(config, train_texts=TEXTS * 3)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    return folder


@pytest.fixture()
def image_path(tmp_path: Path) -> Path:
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((200, 20, 20), (10, 10, 40, 40))
    path = tmp_path / "img.png"
    image.save(path)
    return path


def test_every_image_input_type_gives_the_same_answer(model_dir: Path, image_path: Path) -> None:
    expected = answer("what color is the shape?", image_path, model=model_dir)
    assert isinstance(expected, str)
    pil = Image.open(image_path)
    array = np.asarray(pil.convert("RGB"))
    raw = image_path.read_bytes()
    for image in (str(image_path), pil, array, raw):
        assert answer("what color is the shape?", image, model=model_dir) == expected


def test_batched_answers_equal_one_at_a_time(model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    questions = ["what color is the shape?", "is there a circle?", "", "what color is the big shape on the left?",
                 "no"]
    batched = answer(questions, images, model=model_dir)
    single = [answer(q, im, model=model_dir) for q, im in zip(questions, images)]
    assert batched == single
    assert answer(questions, images, model=model_dir, batch_size=2) == single


def test_empty_prompt_asks_for_a_caption(model_dir: Path, image_path: Path) -> None:
    model = load_model(model_dir)
    assert answer("", image_path, model=model_dir) == answer(model.config.caption_prompt, image_path, model=model_dir)


def test_model_is_cached_between_calls(model_dir: Path) -> None:
    assert load_model(model_dir) is load_model(model_dir)


def test_decoding_options(model_dir: Path, image_path: Path) -> None:
    greedy = answer("what color is the shape?", image_path, model=model_dir)
    beams = answer("what color is the shape?", image_path, model=model_dir, num_beams=3)
    assert isinstance(beams, str)
    first = answer("what color?", image_path, model=model_dir, temperature=1.5, top_k=20, top_p=0.95, seed=3)
    again = answer("what color?", image_path, model=model_dir, temperature=1.5, top_k=20, top_p=0.95, seed=3)
    assert first == again
    model = load_model(model_dir)
    batch = model.processor(["what color?"], [image_path])
    limited = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=2)
    assert limited.shape[1] <= 2
    tokens = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=8,
                            no_repeat_ngram_size=1)[0].tolist()
    eos = model.processor.tokenizer.eos_token_id
    tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
    assert len(tokens) == len(set(tokens)), "no_repeat_ngram_size=1 must forbid any repeated token"
    assert isinstance(answer("what color?", image_path, model=model_dir, repetition_penalty=1.3), str)
    assert greedy == "".join(stream_answer("what color is the shape?", image_path, model=model_dir)).strip()
    with pytest.raises(ValueError, match="temperature"):
        answer("q", image_path, model=model_dir, temperature=0)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.png", "not found"),
        (lambda d: _write(d / "empty.png", b""), "empty"),
        (lambda d: _write(d / "text.png", b"hello, not an image"), "image"),
    ],
)
def test_bad_image_input_names_the_problem(model_dir: Path, tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        answer("what color?", path, model=model_dir)
    assert message in str(info.value).lower()
    assert str(path.name) in str(info.value)


def test_unsupported_input_type(model_dir: Path) -> None:
    with pytest.raises((TypeError, ValueError), match="(?i)type|unsupported"):
        answer("what color?", 12345, model=model_dir)


def test_unusual_modes_and_truncated_prompt(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 128))
    gray16 = Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16))
    palette = Image.new("P", (40, 30), 3)
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))
    for image in (rgba, gray16, palette, cmyk, Image.new("L", (8, 80), 7)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG" if image.mode != "CMYK" else "JPEG")
        assert isinstance(answer("what color?", buffer.getvalue(), model=model_dir), str)
    with caplog.at_level(logging.WARNING):
        answer("what " * 100, rgba, model=model_dir)
    assert "truncated" in caplog.text


def test_default_model_resolution(model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mmgpt.inference as inference

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inference, "_POINTER", tmp_path / "nothing.txt")
    monkeypatch.delenv("MMGPT_MODEL", raising=False)
    with pytest.raises(FileNotFoundError, match="accelerate launch train.py"):
        default_model_path()
    monkeypatch.setenv("MMGPT_MODEL", str(model_dir))
    assert default_model_path() == model_dir


def test_cli_answer_and_caption(model_dir: Path, image_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["answer", "--model", str(model_dir), "--image", str(image_path), "what color is the shape?"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == answer("what color is the shape?", image_path, model=model_dir)
    assert cli.main(["caption", "--model", str(model_dir), str(image_path), str(image_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(image_path))
    assert cli.main(["answer", "--model", str(model_dir), "--image", "nope.png", "q"]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2


@pytest.mark.parametrize("command", ["answer", "caption", "train", "eval-vqa", "eval-caption", "validate"])
def test_cli_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert "--" in capsys.readouterr().out
