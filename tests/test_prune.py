"""mmgpt prune: matrices really shrink, the saved config describes the smaller model, every generator works."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import GENERATORS, build, make_batch, one_thread, tiny_config  # noqa: F401 (autouse fixture)

from mmgpt import cli
from mmgpt.compress.prune import prune, prune_model
from mmgpt.model import MMGPT

PROMPTS = ["what color is the shape?", "is there a circle?"]
ANSWERS = ["red", "yes"]


@pytest.mark.parametrize("generator", GENERATORS)
def test_pruning_shrinks_and_keeps_forward_backward_generate(generator: str, tmp_path: Path) -> None:
    model = build(tiny_config(generator=generator))
    key = "n_inner" if generator == "gpt2" else "intermediate_size"
    width = model.generator.config.to_dict().get(key) or 4 * model.generator.config.hidden_size
    before = model.num_parameters()
    record = prune_model(model, 0.5)
    assert record["generator"][key] == [width, width // 2]
    assert model.num_parameters() < before
    assert record["parameters"] == [before, model.num_parameters()]
    batch = make_batch(model, PROMPTS, ANSWERS)
    out = model(**batch)
    out.loss.backward()
    assert all(p.grad is not None for p in model.generator.parameters() if p.requires_grad)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    model.eval()
    tokens = model.generate(**inputs, max_new_tokens=4)
    model.save_pretrained(tmp_path / "m")
    loaded = MMGPT.from_pretrained(tmp_path / "m")
    assert loaded.generator.config.to_dict()[key] == width // 2
    assert loaded.num_parameters() == model.num_parameters()
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    assert torch.equal(loaded.generate(**inputs, max_new_tokens=4), tokens)


def test_the_least_important_channels_go() -> None:
    model = build(tiny_config(generator="llama"))
    mlp = model.generator.model.layers[0].mlp
    with torch.no_grad():
        mlp.down_proj.weight[:, 10:] *= 1e-3  # channels 10.. read almost nothing
    up = mlp.up_proj.weight[:10].clone()
    prune_model(model, 0.5)
    mlp = model.generator.model.layers[0].mlp
    assert mlp.up_proj.weight.shape[0] == 32
    torch.testing.assert_close(mlp.up_proj.weight[:10], up)


def test_cli_prune_records_how_and_refuses_bad_amounts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    build(tiny_config(generator="qwen2")).save_pretrained(tmp_path / "src")
    assert cli.main(["prune", str(tmp_path / "src"), str(tmp_path / "p"), "--amount", "0.25"]) == 0
    record = json.loads((tmp_path / "p" / "config.json").read_text())
    assert record["model"]["generator"]["kwargs"]["intermediate_size"] == 48
    assert record["compression"]["method"] == "prune" and record["compression"]["amount"] == 0.25
    for amount in ("0", "1", "-0.5", "1.5"):
        assert cli.main(["prune", str(tmp_path / "src"), str(tmp_path / "x"), "--amount", amount]) == 2
        assert "--amount must be a share of channels to remove in (0, 1)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="prunable parts: generator"):
        prune(tmp_path / "src", tmp_path / "y", 0.5, ("fusion",))
    assert not (tmp_path / "x").exists()


def test_prune_never_replaces_what_it_did_not_write_and_an_earlier_model_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    build(tiny_config(generator="qwen2")).save_pretrained(tmp_path / "src")
    theirs = tmp_path / "their-model"  # a transformers model: config.json and weights, but not mmgpt's
    theirs.mkdir()
    (theirs / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (theirs / "model.safetensors").write_bytes(b"their weights")
    (tmp_path / "notes.txt").write_text("keep me")
    for out, problem in ((theirs, "is a folder that mmgpt did not write"), (tmp_path / "notes.txt", "is a file")):
        for overwrite in ([], ["--overwrite"]):
            assert cli.main(["prune", str(tmp_path / "src"), str(out), *overwrite]) == 2
            assert f"{out} {problem}" in capsys.readouterr().err
    assert (theirs / "model.safetensors").read_bytes() == b"their weights"
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert cli.main(["prune", str(tmp_path / "src"), str(tmp_path / "p"), "--amount", "0.25"]) == 0
    assert cli.main(["prune", str(tmp_path / "src"), str(tmp_path / "p"), "--amount", "0.5"]) == 2
    assert "earlier mmgpt model folder: replace it with --overwrite" in capsys.readouterr().err
    assert json.loads((tmp_path / "p" / "config.json").read_text())["compression"]["amount"] == 0.25
    assert cli.main(["prune", str(tmp_path / "src"), str(tmp_path / "p"), "--amount", "0.5", "--overwrite"]) == 0
    assert json.loads((tmp_path / "p" / "config.json").read_text())["compression"]["amount"] == 0.5
