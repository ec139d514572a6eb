"""README.md model card in every saved model folder: Hub metadata, parts, metrics; swapped in with the weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from tiny import build, one_thread, tiny_config  # noqa: F401

import mmgpt.model_folder
from mmgpt.config import GeneratorConfig, ImageEncoderConfig, ModelConfig
from mmgpt.model import MMGPT
from mmgpt.model_card import base_models


def metadata(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_saved_folder_has_a_hub_model_card_with_metrics_and_datasets(tmp_path: Path) -> None:
    model = build(tiny_config())
    model.save_pretrained(tmp_path / "m", metrics={"easy_vqa/vqa_exact_match": 0.75, "easy_vqa/loss": float("nan")},
                          datasets=["easy_vqa"])
    data = metadata(tmp_path / "m")
    assert data["library_name"] == "mmgpt" and data["datasets"] == ["easy_vqa"]
    assert data["mmgpt_eval"] == {"easy_vqa/vqa_exact_match": 0.75}  # a NaN is left out, not written as .nan
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert "| easy_vqa/vqa_exact_match | 0.75 |" in card.text
    assert f"{model.num_parameters() / 1e6:.2f}M parameters" in card.text
    assert "model=\"path/to/this/folder\"" in card.text
    assert "base_model" not in data  # built from scratch: no base model


def test_base_models_are_the_hub_names_only(tmp_path: Path) -> None:
    config = ModelConfig(image_encoder=ImageEncoderConfig(type="hf", name="google/siglip-base-patch16-224"),
                         generator=GeneratorConfig(name="HuggingFaceTB/SmolLM2-135M"))
    assert base_models(config) == ["HuggingFaceTB/SmolLM2-135M", "google/siglip-base-patch16-224"]
    (tmp_path / "local").mkdir()
    config.generator.name = str(tmp_path / "local")
    assert base_models(config) == ["google/siglip-base-patch16-224"]


def test_a_failing_card_leaves_the_previous_model_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(tiny_config())
    model.save_pretrained(tmp_path / "m", datasets=["first"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()}

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(mmgpt.model_folder, "write_model_card", broken)
    with pytest.raises(OSError, match="disk full"):
        build(tiny_config(), seed=1).save_pretrained(tmp_path / "m", datasets=["second"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()} == before
    assert metadata(tmp_path / "m")["datasets"] == ["first"]
    MMGPT.from_pretrained(tmp_path / "m")
