"""mmgpt quantize: int8 (default), bf16 and int8-torchao folders round-trip, shrink the weights, answer like fp32."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from tiny import build, make_batch, one_thread, tiny_config  # noqa: F401 (autouse fixture)

from mmgpt import cli
from mmgpt.compress.int8_layers import Int8Embedding, Int8Linear
from mmgpt.compress.quantize import quantize
from mmgpt.model import MMGPT
from mmgpt.model_folder import ModelLoadError

PROMPTS = ["what color is the shape?", "is there a circle?", "how many shapes are there?",
           "is there a small green triangle on the left?"] * 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("quantize")
    config = tiny_config(generator="llama")
    # wide enough that the fusion, projector and generator linears are all quantised
    config.fusion.dim = 32
    torch.manual_seed(0)
    model = build(config)
    model.save_pretrained(root / "fp32", metrics={"easy_vqa/vqa_exact_match": 0.875}, datasets=["easy_vqa"])
    assert cli.main(["quantize", str(root / "fp32"), str(root / "q8")]) == 0
    for method in ("bf16", "int8-torchao"):
        assert cli.main(["quantize", str(root / "fp32"), str(root / method), "--method", method]) == 0
    return root / "fp32", root / "q8"


def test_quantized_folder_loads_with_int8_weights_and_records_how_it_was_made(folders: tuple[Path, Path]) -> None:
    fp32, q8 = folders
    model = MMGPT.from_pretrained(q8)
    for linear in (model.generator.model.layers[0].mlp.up_proj, model.projector[0], model.generator.lm_head):
        assert type(linear) is Int8Linear and linear.weight.dtype == torch.int8
    embedding = model.generator.get_input_embeddings()
    assert type(embedding) is Int8Embedding
    # the tied output layer reads the input embedding's int8 matrix, as the fp32 one shares its tensor
    assert model.generator.lm_head.weight is embedding.weight
    assert model.generator.lm_head.weight_scale is embedding.weight_scale
    record = json.loads((q8 / "config.json").read_text())["compression"]
    assert record["method"] == "int8" and record["library"] == "torch"
    assert record["source"] == str(fp32.resolve()) and record["date"]
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in q8.rglob("*"))
    with safe_open(str(q8 / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}  # plain tensors: nothing to unflatten


def test_the_int8_card_says_int8_and_drops_the_fp32_metrics(folders: tuple[Path, Path]) -> None:
    fp32, q8 = folders
    assert "0.875" in (fp32 / "README.md").read_text()
    card = ModelCard.load(q8 / "README.md")
    layers = len(json.loads((q8 / "config.json").read_text())["compression"]["layers"])
    assert card.text.startswith("\n# mmgpt vision-language model (int8)")
    assert f"dynamic int8 activations in {layers} layers, the token embedding and its tied output" in card.text
    assert "evaluation figures do not apply" in card.text and f"from `{fp32.resolve()}`" in card.text
    assert "0.875" not in (q8 / "README.md").read_text() and "mmgpt_eval" not in card.data.to_dict()
    assert card.data.datasets == ["easy_vqa"] and "int8" in card.data.tags


def _layer_bytes(folder: Path, layers: list[str]) -> int:
    """Bytes of the stored tensors of `layers` (a tied layer's tensors are stored once)."""
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()
                   if any(k.startswith(f"{name}.") for name in layers))


@pytest.mark.parametrize("method", ["q8", "int8-torchao"])
def test_int8_layers_take_under_0_3_of_their_fp32_bytes(folders: tuple[Path, Path], method: str) -> None:
    fp32 = folders[0]
    q8 = fp32.parent / method
    layers = json.loads((q8 / "config.json").read_text())["compression"]["layers"]
    ratio = _layer_bytes(q8, layers) / _layer_bytes(fp32, layers)
    assert ratio <= 0.3, ratio


def test_bf16_folder_holds_and_runs_bf16_weights(folders: tuple[Path, Path]) -> None:
    fp32, bf16 = folders[0], folders[0].parent / "bf16"
    assert (bf16 / "model.safetensors").stat().st_size < 0.55 * (fp32 / "model.safetensors").stat().st_size
    model = MMGPT.from_pretrained(bf16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    reference = MMGPT.from_pretrained(fp32)
    batch = make_batch(reference, PROMPTS)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    agree = (reference.generate(**inputs, max_new_tokens=6) == model.generate(**inputs, max_new_tokens=6))
    assert agree.float().mean().item() >= 0.9


def test_torchao_folders_of_earlier_versions_still_load(folders: tuple[Path, Path]) -> None:
    folder = folders[0].parent / "int8-torchao"
    config = json.loads((folder / "config.json").read_text())
    assert config["compression"]["library"] == "torchao"
    config["compression"]["method"] = "int8"  # what `mmgpt quantize` recorded when torchao was its only method
    (folder / "config.json").write_text(json.dumps(config))
    model = MMGPT.from_pretrained(folder)
    assert type(model.generator.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    assert model.generator.lm_head.weight is model.generator.get_input_embeddings().weight


def test_int8_folder_refuses_a_device_other_than_the_cpu(folders: tuple[Path, Path]) -> None:
    with pytest.raises(ModelLoadError, match="cpu only"):
        MMGPT.from_pretrained(folders[1], device="meta")


@pytest.mark.parametrize("method", ["q8", "int8-torchao"])
def test_int8_greedy_tokens_agree_with_fp32(folders: tuple[Path, Path], method: str) -> None:
    # the decoding loop calls a plain linear layer's function directly: torchao's int8 weights take only
    # positional arguments there (a keyword weight failed with IndexError in every answer)
    fp32, q8 = (MMGPT.from_pretrained(folder) for folder in (folders[0], folders[0].parent / method))
    batch = make_batch(fp32, PROMPTS)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    a = fp32.generate(**inputs, max_new_tokens=6)
    b = q8.generate(**inputs, max_new_tokens=6)
    # stated rate: at least 90% of greedy tokens identical on a random-weight tiny model
    agree = (a == b).float().mean().item()
    assert agree >= 0.9, agree
    logits_a = fp32.prefix_embeds(**inputs)[0]
    logits_b = q8.prefix_embeds(**inputs)[0]
    assert (logits_a - logits_b).abs().max() < 0.05 * logits_a.abs().max()


def test_answer_and_the_cli_read_a_quantized_folder(folders: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    assert cli.main(["answer", "--model", str(folders[1]), "--image", str(image), "what color is the shape?"]) == 0
    from mmgpt.inference import answer

    expected = answer("what color is the shape?", str(image), model=MMGPT.from_pretrained(folders[1]))
    assert capsys.readouterr().out == expected + "\n"


def test_refusals(folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["quantize", str(folders[1]), str(tmp_path / "again")]) == 2
    assert "already quantised" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown quantisation method 'int4'"):
        quantize(folders[0], tmp_path / "x", method="int4")


def test_quantize_never_replaces_what_it_did_not_write_and_an_earlier_model_only_with_overwrite(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"a photo")
    (tmp_path / "notes.txt").write_text("keep me")
    for out, problem in ((photos, "is a folder that mmgpt did not write"), (tmp_path / "notes.txt", "is a file")):
        for overwrite in ([], ["--overwrite"]):
            assert cli.main(["quantize", str(folders[0]), str(out), *overwrite]) == 2
            assert f"{out} {problem}" in capsys.readouterr().err
    assert (photos / "holiday.jpg").read_bytes() == b"a photo" and (tmp_path / "notes.txt").read_text() == "keep me"
    # the earlier quantised model: refused, then replaced with --overwrite
    before = (folders[1] / "config.json").read_text()
    assert cli.main(["quantize", str(folders[0]), str(folders[1])]) == 2
    assert "earlier mmgpt model folder: replace it with --overwrite" in capsys.readouterr().err
    assert (folders[1] / "config.json").read_text() == before
    assert cli.main(["quantize", str(folders[0]), str(folders[1]), "--overwrite"]) == 0
    assert json.loads((folders[1] / ".mmgpt-output.json").read_text())["format"] == "mmgpt-model"
    assert MMGPT.from_pretrained(folders[1]).num_parameters() > 0


def test_quantize_keeps_a_users_folder_at_the_aside_name_and_never_copies_a_stale_temp_marker(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmgpt.model_folder as folder_module
    from mmgpt.saving import TEMP_FORMAT, TEMP_MARKER, is_marked

    source = tmp_path / "fp32"
    shutil.copytree(folders[0], source)
    # the marker a save killed right after its swap leaves: it names that save's temp folder
    (source / TEMP_MARKER).write_text(json.dumps({"format": TEMP_FORMAT, "name": ".fp32.tmp-k3j5h2g8"}))
    (tmp_path / ".q8.old").mkdir()
    (tmp_path / ".q8.old" / "notes.txt").write_text("mine")
    assert cli.main(["quantize", str(source), str(tmp_path / "q8")]) == 2
    assert f"{tmp_path / '.q8.old'} is in the way" in capsys.readouterr().err
    assert (tmp_path / ".q8.old" / "notes.txt").read_text() == "mine" and not (tmp_path / "q8").exists()
    (tmp_path / ".q8.old" / "notes.txt").unlink()
    # while the weights are written, the temp folder is still recognisably mmgpt's: a kill there leaves a leftover
    # that the next save removes
    write_weights, marked = folder_module.save_file, []
    monkeypatch.setattr(folder_module, "save_file", lambda tensors, path, metadata: (
        marked.append(is_marked(Path(path).parent)), write_weights(tensors, path, metadata=metadata)))
    assert cli.main(["quantize", str(source), str(tmp_path / "q8")]) == 0
    assert marked == [True]
    assert not (tmp_path / "q8" / TEMP_MARKER).exists()
