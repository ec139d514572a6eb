"""One decoding config: GenerationConfig merged and checked (mmgpt.decoding), saved with the model, used by answer()."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import build, make_batch, one_thread, tiny_config  # noqa: F401 (one_thread: autouse fixture)
from transformers import GenerationConfig

from mmgpt import cli
from mmgpt.decoding import add_decoding_args, decoding_from_args, resolve_generation_config, set_values
from mmgpt.inference import answer, stream_answer
from mmgpt.model import MMGPT
from mmgpt.model_folder import GENERATION_CONFIG_NAME, ModelLoadError

IMAGE = np.full((32, 32, 3), 120, dtype=np.uint8)
BASE = GenerationConfig(max_new_tokens=7, do_sample=False, num_beams=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def test_call_config_then_keywords_update_the_model_config() -> None:
    config, rest = resolve_generation_config(BASE, GenerationConfig(num_beams=3, max_new_tokens=4), max_new_tokens=5,
                                             streamer="kept for generate")
    assert (config.num_beams, config.max_new_tokens, config.eos_token_id) == (3, 5, 2)
    assert rest == {"streamer": "kept for generate"}
    assert BASE.num_beams == 1 and BASE.max_new_tokens == 7, "the model's own config must not change"
    unchanged, _ = resolve_generation_config(BASE, num_beams=None, temperature=None)  # None: leave as it is
    assert set_values(unchanged) == set_values(BASE)


def test_sampling_keywords_sample_without_a_top_k_filter_unless_told() -> None:
    sampled, _ = resolve_generation_config(BASE, temperature=0.7)
    assert (sampled.do_sample, sampled.temperature, sampled.top_k) == (True, 0.7, 0)
    assert resolve_generation_config(BASE, top_k=5)[0].top_k == 5
    assert resolve_generation_config(BASE, temperature=0.7, do_sample=False)[0].do_sample is False
    # a config object follows transformers: its temperature alone does not switch sampling on
    assert resolve_generation_config(BASE, GenerationConfig(temperature=0.7))[0].do_sample is False


@pytest.mark.parametrize("call_config, keywords, error, message", [
    (GenerationConfig(do_sample=True, temperature=-1.0), {}, ValueError, r"temperature must be .*> 0, got -1.0"),
    (GenerationConfig(do_sample=True, top_p=2.0), {}, ValueError, r"top_p must be .*\(0, 1\], got 2.0"),
    (None, {"num_beams": 0}, ValueError, r"num_beams must be an int >= 1, got 0"),
    (None, {"num_beams": 1, "num_return_sequences": 2}, ValueError, r"num_return_sequences"),  # validate()
    ({"num_beams": 2}, {}, TypeError, r"generation_config must be None or a transformers.GenerationConfig, got dict"),
])
def test_bad_configs_name_the_field(call_config, keywords: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        resolve_generation_config(BASE, call_config, **keywords)


def test_max_new_tokens_zero_passes_the_checks() -> None:
    assert resolve_generation_config(BASE, max_new_tokens=0)[0].max_new_tokens == 0


def test_cli_flags_give_only_what_was_typed() -> None:
    parser = argparse.ArgumentParser()
    add_decoding_args(parser)
    assert decoding_from_args(parser.parse_args([])) == {"seed": None}
    args = parser.parse_args(["--num-beams", "3", "--top-p", "0.5", "--no-repeat-ngram-size", "2", "--seed", "4"])
    assert decoding_from_args(args) == {"num_beams": 3, "top_p": 0.5, "no_repeat_ngram_size": 2, "seed": 4}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("decoding") / "model"
    build(tiny_config(max_answer_length=9)).save_pretrained(folder)
    return folder


def test_save_pretrained_writes_the_training_defaults(saved: Path) -> None:
    written = json.loads((saved / GENERATION_CONFIG_NAME).read_text())
    tokenizer = MMGPT.from_pretrained(saved).processor.tokenizer
    assert written["max_new_tokens"] == 9 and written["num_beams"] == 1 and written["do_sample"] is False
    assert (written["bos_token_id"], written["eos_token_id"], written["pad_token_id"]) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_a_saved_generation_config_is_what_the_model_decodes_with(saved: Path, tmp_path: Path) -> None:
    model = MMGPT.from_pretrained(saved)
    model.generation_config = GenerationConfig(**{**model.generation_config.to_diff_dict(), "max_new_tokens": 2})
    model.save_pretrained(tmp_path / "short")
    loaded = MMGPT.from_pretrained(tmp_path / "short")
    assert loaded.generation_config.max_new_tokens == 2
    batch = make_batch(loaded, ["what color is the shape?"])
    assert loaded.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).shape[1] <= 2
    assert len(answer("what color?", IMAGE, model=loaded, max_new_tokens=0)) == 0


def test_a_folder_without_generation_config_gets_the_old_defaults(saved: Path, tmp_path: Path) -> None:
    import shutil

    old = Path(shutil.copytree(saved, tmp_path / "old"))
    (old / GENERATION_CONFIG_NAME).unlink()
    model, loaded_old = MMGPT.from_pretrained(saved), MMGPT.from_pretrained(old)
    assert set_values(loaded_old.generation_config) == set_values(model.generation_config)
    assert loaded_old.generation_config.max_new_tokens == 9
    batch = make_batch(model, ["what color is the shape?", "is there a circle?"])
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    assert torch.equal(loaded_old.generate(*args), model.generate(*args))


def test_a_damaged_generation_config_is_a_load_error(saved: Path, tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(saved, tmp_path / "bad"))
    (folder / GENERATION_CONFIG_NAME).write_text(json.dumps({"num_beams": 0}))
    with pytest.raises(ModelLoadError, match=r"cannot load the model in .*num_beams must be an int >= 1, got 0"):
        MMGPT.from_pretrained(folder)


def test_answer_takes_a_generation_config_or_the_same_keywords(saved: Path) -> None:
    model = MMGPT.from_pretrained(saved)
    batch = make_batch(model, ["what color is the shape?"])
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    assert model.generate(*args).shape[1] > 1, "the limit below must be what stops it"
    assert model.generate(*args, generation_config=GenerationConfig(max_new_tokens=1)).shape[1] == 1
    beams = answer("what color?", IMAGE, model=model, generation_config=GenerationConfig(num_beams=3))
    assert beams == answer("what color?", IMAGE, model=model, num_beams=3)
    sampled = dict(generation_config=GenerationConfig(do_sample=True, temperature=1.5), seed=3)
    assert answer("what color?", IMAGE, model=model, **sampled) == answer(
        "what color?", IMAGE, model=model, temperature=1.5, seed=3)
    assert "".join(stream_answer("what color?", IMAGE, model=model, **sampled)).strip() == answer(
        "what color?", IMAGE, model=model, **sampled)
    with pytest.raises(TypeError, match=r"unknown decoding option 'beams'"):
        answer("what color?", IMAGE, model=model, beams=3)
    with pytest.raises(ValueError, match=r"num_beams must be 1 for streaming"):
        stream_answer("what color?", IMAGE, model=model, generation_config=GenerationConfig(num_beams=2))


def test_cli_flags_reach_the_generation_config(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    Image.fromarray(IMAGE).save(tmp_path / "img.png")
    assert cli.main(["answer", "--model", str(saved), "--image", str(tmp_path / "img.png"), "--num-beams", "3",
                     "--max-new-tokens", "3", "what color?"]) == 0
    expected = answer("what color?", tmp_path / "img.png", model=saved, num_beams=3, max_new_tokens=3)
    assert capsys.readouterr().out.strip() == expected.strip()
    assert cli.main(["answer", "--model", str(saved), "--image", str(tmp_path / "img.png"), "--top-p", "2",
                     "what?"]) == 2
    assert "top_p must be" in capsys.readouterr().err
