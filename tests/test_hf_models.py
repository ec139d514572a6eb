"""mmgpt.hf_models.build_hf_model: local folders read from their own files, sub-configs, from-scratch configs."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
import transformers
from tiny import BERT_CONFIG, hf_vision_kwargs, one_thread  # noqa: F401 (autouse fixture)
from transformers import AutoConfig, AutoModel

from mmgpt import hf_models
from mmgpt.config import ConfigError
from mmgpt.hf_models import build_hf_model

KEY = "model.part.hf_config"
MISSING = "model.part needs a 'name' or an hf_config with 'model_type'"


def build(name: str = "", scratch: dict[str, Any] | None = None, **kwargs: Any) -> torch.nn.Module:
    return build_hf_model(AutoModel, name, scratch or {}, key=KEY, missing_model_type=MISSING, **kwargs)


def saved_bert(folder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    config = dict(BERT_CONFIG)
    model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), vocab_size=50, **config))
    model.save_pretrained(folder)
    return model


@pytest.fixture()
def from_pretrained_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """(what, local_files_only) of every AutoConfig / AutoModel.from_pretrained call."""
    calls: list[tuple[str, Any]] = []
    for cls in (transformers.AutoConfig, transformers.AutoModel):
        original = cls.from_pretrained.__func__

        def spy(owner: type, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls.append((owner.__name__, kwargs.get("local_files_only")))
            return _original(owner, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return calls


def test_a_local_folder_is_read_with_local_files_only(tmp_path: Path, from_pretrained_calls: list) -> None:
    saved = saved_bert(tmp_path / "bert")
    loaded = build(str(tmp_path / "bert"))
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))
    assert from_pretrained_calls == [("AutoConfig", True), ("AutoModel", True)]
    # without weights only the config is read, and the model is freshly built from it
    from_pretrained_calls.clear()
    rebuilt = build(str(tmp_path / "bert"), load_weights=False)
    assert from_pretrained_calls == [("AutoConfig", True)]
    assert rebuilt.config.hidden_size == BERT_CONFIG["hidden_size"]


def test_sub_config_takes_one_tower_of_a_composite_checkpoint(tmp_path: Path) -> None:
    vision = hf_vision_kwargs("clip_vision_model")
    del vision["model_type"]
    AutoConfig.for_model("clip", vision_config=vision, text_config={"hidden_size": 16}).save_pretrained(tmp_path)
    tower = build(str(tmp_path), load_weights=False, sub_config="vision_config")
    assert tower.config.model_type == "clip_vision_model" and tower.config.hidden_size == 32


def test_from_scratch_defaults_fill_and_overrides_replace() -> None:
    scratch = {**BERT_CONFIG, "pad_token_id": 3, "type_vocab_size": 1}
    model = build(scratch=scratch, defaults={"pad_token_id": 1, "type_vocab_size": 4, "layer_norm_eps": 0.5},
                  overrides={"type_vocab_size": 2})
    assert (model.config.pad_token_id, model.config.type_vocab_size, model.config.layer_norm_eps) == (3, 2, 0.5)


@pytest.mark.parametrize("scratch, vocab, message", [
    ({"hidden_size": 8}, None, MISSING),
    ({"model_type": "bertt"}, None, f"{KEY}.model_type 'bertt': "),
    ({**BERT_CONFIG, "vocab_size": 7}, 9, f"{KEY}.vocab_size (7) is smaller than the tokenizer (9 tokens)"),
])
def test_from_scratch_errors_name_the_key(scratch: dict, vocab: int | None, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(scratch=scratch, tokenizer=list(range(vocab)) if vocab else None)
    assert message in str(info.value)


def test_the_tokenizer_sets_the_default_vocabulary() -> None:
    assert build(scratch=dict(BERT_CONFIG), tokenizer=list(range(37))).config.vocab_size == 37


def test_kwargs_change_a_named_models_config(tmp_path: Path) -> None:
    saved = saved_bert(tmp_path / "bert")
    loaded = build(str(tmp_path / "bert"), {"model_type": "bert", "hidden_dropout_prob": 0.25})
    assert loaded.config.hidden_dropout_prob == 0.25 and saved.config.hidden_dropout_prob != 0.25
    assert torch.equal(loaded.embeddings.word_embeddings.weight, saved.embeddings.word_embeddings.weight)
    assert build(str(tmp_path / "bert"), {"hidden_size": 48}, load_weights=False).config.hidden_size == 48


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "llama", "hidden_size": 128}, f"{KEY}.model_type 'llama' is not the type of"),
    ({"hidden_sise": 8, "colour": 1}, f"{KEY}: colour, hidden_sise not in the bert config of"),
    # the saved weights no longer fit: refused with the keys, not transformers' RuntimeError
    ({"hidden_size": 48}, f"{KEY} (hidden_size) changes the shapes of the weights of"),
])
def test_kwargs_a_named_model_cannot_take_are_refused_by_name(tmp_path: Path, changes: dict, message: str) -> None:
    saved_bert(tmp_path / "bert")
    with pytest.raises(ConfigError) as info:
        build(str(tmp_path / "bert"), changes)
    assert message in str(info.value)


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """huggingface_hub's constants with an empty cache, and a fresh verdict on whether the hub is reachable."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    hf_models._hub_unreachable.cache_clear()
    yield constants
    hf_models._hub_unreachable.cache_clear()


def test_offline_a_hub_name_fails_at_once_naming_the_file_and_the_fix(hub: Any, monkeypatch: pytest.MonkeyPatch,
                                                                     from_pretrained_calls: list) -> None:
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError) as info:
        build("org/some-model")
    message = str(info.value)
    assert message.startswith("model.part.name 'org/some-model': cannot fetch config.json from the Hugging Face hub "
                              "(HF_HUB_OFFLINE is set) and it is not in the local cache")
    assert "hf download org/some-model --local-dir DIR) and set model.part.name to that folder" in message
    assert "\n" not in message and from_pretrained_calls == []  # nothing was tried


def test_an_unreachable_hub_is_found_in_one_quick_connection(hub: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(OSError, match=r"\(127\.0\.0\.1 unreachable: .*\) and it is not in the local cache"):
        hf_models.hub_files_only("org/some-model", "model.generator.name")
    # a model cached earlier is read from the cache instead
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda name, filename: "/cache/config.json")
    assert hf_models.hub_files_only("org/some-model", "model.generator.name") is True


def test_a_reachable_hub_is_used_as_before(hub: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hf_models.hub_files_only("org/some-model", "model.generator.name") is False
    saved_bert(tmp_path / "bert")
    assert hf_models.hub_files_only(str(tmp_path / "bert"), "model.part.name") is True  # a folder: never the hub
