"""mmgpt export: ONNX graphs equal to the eager model (prefix, logits at every KV-cache step, greedy answers)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from tiny import TEXTS, build, generator_config, one_thread, tiny_config  # noqa: F401  (one_thread: autouse)

import mmgpt.decoding
import mmgpt.export
import mmgpt.runtime
from mmgpt import cli
from mmgpt.compress.quantize import quantize
from mmgpt.config import TilingConfig
from mmgpt.export import ExportError, export_onnx
from mmgpt.export.graphs import DecoderGraph, FusedDecoderGraph, fuses
from mmgpt.inference import answer, question_prompts, stream_answer
from mmgpt.model import MMGPT
from mmgpt.outputs import OutputExists
from mmgpt.runtime import OnnxVLM

TOLERANCE = 1e-4
QUESTIONS = 36


def diverse_model(generator: str = "llama", seed: int = 0, **changes: Any) -> MMGPT:
    """A tiny model whose weights are spread out, so greedy answers differ from question to question; `changes`
    set model config fields (fusion, max_images, tiling, pixel_shuffle)."""
    config = tiny_config(generator=generator, fusion=changes.pop("fusion", "cross_attention"))
    config.max_images = changes.pop("max_images", 1)
    config.image_encoder.tiling = TilingConfig(*changes.pop("tiling", (0, 0)))
    config.image_encoder.pixel_shuffle = changes.pop("pixel_shuffle", 1)
    assert not changes, changes
    return _spread(build(config, seed=seed).eval(), seed)


def _spread(model: MMGPT, seed: int = 0) -> MMGPT:
    """`model` in eval mode with its weights spread out by noise from `seed`."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def questions_and_images(n: int, seed: int = 0) -> tuple[list[str], list[Image.Image]]:
    """n questions of 0-3 phrases (the empty one asks for a caption) and images of random sizes and shapes."""
    rng = np.random.default_rng(seed)
    phrases = sorted(set(TEXTS))
    texts = [" ".join(rng.choice(phrases, int(rng.integers(0, 4)))) for _ in range(n)]
    images = [Image.fromarray(rng.integers(0, 256, (int(rng.integers(12, 70)), int(rng.integers(12, 70)), 3),
                                           dtype=np.uint8)) for _ in range(n)]
    return texts, images


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[MMGPT, Path]:
    """A diverse tiny llama model and its export with the default exporter (dynamo)."""
    torch.set_num_threads(1)
    model = diverse_model()
    folder = export_onnx(model, tmp_path_factory.mktemp("export") / "onnx")
    return model, folder


@pytest.mark.slow
def test_manifest_names_the_graphs_and_their_check(exported: tuple[MMGPT, Path]) -> None:
    model, folder = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["format"], manifest["format_version"], manifest["opset"], manifest["dtype"]) == \
        ("mmgpt-onnx", 1, 23, "float32")
    assert set(manifest["graphs"]) == {"prefix", "embed_tokens", "decoder"}
    # the llama decoder is written with ONNX's fused ops, which arrived in opset 23; the rest at the default 18
    assert {name: graph["opset"] for name, graph in manifest["graphs"].items()} == {
        "prefix": 18, "embed_tokens": 18, "decoder": 23}
    assert manifest["graphs"]["decoder"]["fused"] is True
    for graph in manifest["graphs"].values():
        assert graph["exporter"] == "torch.onnx.export(dynamo=True)"
        assert graph["max_abs_diff_vs_eager"] <= TOLERANCE
        assert (folder / graph["file"]).is_file()
    decoder = manifest["graphs"]["decoder"]
    assert [i["name"] for i in decoder["inputs"]][:5] == [
        "inputs_embeds", "attention_mask", "position_ids", "past_key_0", "past_value_0"]
    assert decoder["inputs"][3]["shape"] == ["batch", 1, "past_length", 16]  # 1 kv head of 32 / 2 heads
    assert manifest["generation"]["max_new_tokens"] == model.config.max_answer_length
    for name in ("tokenizer/tokenizer.json", "image_transform/transform.json", "generation_config.json"):
        assert (folder / name).is_file()


# a Llama with 2 layers, 4 query heads sharing 2 key/value heads, and YaRN rotary (its tables are scaled)
YARN_LLAMA = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                  "original_max_position_embeddings": 16}}


@pytest.mark.parametrize("generator, changes", [("llama", {}), ("qwen2", {}), ("llama", YARN_LLAMA)],
                         ids=["llama", "qwen2-biases", "llama-gqa-yarn"])
def test_fused_decoder_graph_computes_the_plain_graphs_step(generator: str, changes: dict) -> None:
    config = tiny_config(generator=generator)
    config.generator = generator_config(generator, **changes)
    model = _spread(build(config))
    assert fuses(model.generator)
    plain, fused = DecoderGraph(model).eval(), FusedDecoderGraph(model).eval()
    config = model.generator.config
    kv, head_dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    g = torch.Generator().manual_seed(0)
    # a first step (empty past) of left-padded prompts, then a step of two tokens after a past of three
    for past_length, length in ((0, 5), (3, 2)):
        mask = torch.ones(3, past_length + length, dtype=torch.long)
        mask[1, :2] = 0
        mask[2, :4] = 0
        past = tuple(torch.randn(3, kv, past_length, head_dim, generator=g)
                     for _ in range(2 * config.num_hidden_layers))
        args = (torch.randn(3, length, config.hidden_size, generator=g), mask,
                mmgpt.decoding.position_ids(mask)[:, past_length:], past)
        with torch.no_grad():
            expected, got = plain(*args), fused(*args)
        assert torch.allclose(got[0], expected[0], atol=1e-5), (got[0] - expected[0]).abs().max()
        valid = mask.bool()[:, None, :, None]  # keys and values at padded positions are never read
        for a, b in zip(got[1:], expected[1:]):
            assert a.shape == b.shape and torch.isfinite(a).all()
            assert ((a - b).abs() * valid).max() <= 1e-5


def test_a_dynamic_rotary_huge_tables_or_another_architecture_keep_the_plain_decoder() -> None:
    config = tiny_config()
    config.generator = generator_config("llama", rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                                  "factor": 2.0})
    assert not fuses(build(config).generator)  # its tables depend on the sequence length
    assert not fuses(build(tiny_config(generator="gpt2")).generator)
    config.generator = generator_config("llama", max_position_embeddings=2**22)  # cos and sin for 4M positions: 256 MB
    assert not fuses(build(config).generator)
    assert fuses(build(tiny_config()).generator)


@pytest.mark.slow
def test_fused_decoder_export_is_smaller_and_answers_as_the_plain_one(
        exported: tuple[MMGPT, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    model, folder = exported
    plain = export_onnx(model, tmp_path / "plain", fused_decoder=False)
    manifest = json.loads((plain / "manifest.json").read_text())
    assert manifest["opset"] == 18 and manifest["graphs"]["decoder"]["fused"] is False

    def ops(export: Path) -> list[str]:
        return [node.op_type for node in onnx.load(str(export / "decoder.onnx")).graph.node]

    assert {"Attention", "RotaryEmbedding", "RMSNormalization"} <= set(ops(folder))
    assert not {"Attention", "RotaryEmbedding", "RMSNormalization"} & set(ops(plain))
    assert len(ops(folder)) * 3 < len(ops(plain))
    texts, images = questions_and_images(QUESTIONS, seed=5)
    fused_answers = OnnxVLM(folder).answer(texts, images, batch_size=8)
    assert len(set(fused_answers)) > QUESTIONS // 2
    assert OnnxVLM(plain).answer(texts, images, batch_size=8) == fused_answers
    # where onnxruntime cannot run the fused graph (older than its ops), the plain one is written, with a warning
    # and nothing of the fused one left (the plain exports are stubbed here: only the choice is checked)
    def check(module: Any, args: Any, path: Path, spec: Any, tolerance: Any = None) -> float:
        if path.name == "decoder.onnx" and "decoder.onnx" not in calls:  # the fused graph, written for real
            assert path.exists()
            raise RuntimeError("Could not find an implementation for Attention(23) node")
        return 0.0

    calls: list[str] = []
    monkeypatch.setattr(mmgpt.export, "_check_graph", check)
    monkeypatch.setattr(mmgpt.export, "_export_graph", lambda *args: calls.append(args[2].name) or "dynamo")
    monkeypatch.setattr(mmgpt.export, "_graph_opset", lambda path: 18)
    export_onnx(model, tmp_path / "fallback")
    assert "the fused decoder graph (opset 23) cannot be used here" in caplog.text
    assert calls == ["prefix.onnx", "embed_tokens.onnx", "decoder.onnx"]
    manifest = json.loads((tmp_path / "fallback" / "manifest.json").read_text())
    assert manifest["graphs"]["decoder"]["fused"] is False
    assert not any(path.name.startswith("decoder.onnx") for path in (tmp_path / "fallback").iterdir())


@pytest.mark.slow
def test_an_onnxruntime_without_the_fused_ops_says_what_to_do(exported: tuple[MMGPT, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession

    def old_runtime(path: str, *args: Any, **kwargs: Any) -> Any:
        if path.endswith("decoder.onnx"):  # onnxruntime 1.22's own words
            raise RuntimeError("Opset 23 is under development and support for this is limited.")
        return session(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", old_runtime)
    with pytest.raises(mmgpt.runtime.ExportFolderError,
                       match=r"its decoder uses opset 23 ops, which onnxruntime 1\.23 or newer runs, this is .*"
                             r"`mmgpt export --no-fused-decoder` writes a decoder that older versions run"):
        OnnxVLM(exported[1])


@pytest.mark.slow
def test_prefix_pixels_and_step_logits_match_eager(exported: tuple[MMGPT, Path]) -> None:
    model, folder = exported
    vlm = OnnxVLM(folder)
    texts, images = questions_and_images(8, seed=1)
    batch = model.processor(question_prompts(model, texts), images)
    ids = vlm.encode_prompts(vlm.prompts(texts))
    pixels = vlm.encode_images(images)
    assert np.array_equal(ids["input_ids"], batch["input_ids"].numpy())
    assert np.array_equal(ids["attention_mask"], batch["attention_mask"].numpy())
    assert np.abs(pixels - batch["pixel_values"].numpy()).max() <= 1e-6
    with torch.no_grad():
        prefix, prefix_mask = model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    got, got_mask = vlm.prefix(ids["input_ids"], ids["attention_mask"], pixels)
    assert np.array_equal(got_mask, prefix_mask.numpy()) and got_mask.min() == 0  # rows are left-padded
    assert np.abs(got - prefix.numpy()).max() <= TOLERANCE
    # six KV-cache steps of the runtime against the eager generator on the whole sequence, without a cache
    tokens = np.full((8, 1), model.processor.tokenizer.bos_token_id)
    embeds, mask = np.concatenate([got, vlm.embed(tokens)], axis=1), np.concatenate([got_mask, np.ones((8, 1))], 1)
    past, worst = vlm.empty_past(8), 0.0
    for _ in range(6):
        logits, past = vlm.decode_step(embeds, mask, past)
        with torch.no_grad():
            full = torch.cat([prefix, model.generator.get_input_embeddings()(torch.as_tensor(tokens))], dim=1)
            torch_mask = torch.as_tensor(mask, dtype=torch.long)
            eager = model.generator(inputs_embeds=full, attention_mask=torch_mask,
                                    position_ids=(torch_mask.cumsum(1) - 1).clamp(min=0), use_cache=False).logits
        worst = max(worst, float(np.abs(logits - eager[:, -1].numpy()).max()))
        next_tokens = logits.argmax(-1)[:, None]
        tokens = np.concatenate([tokens, next_tokens], axis=1)
        embeds, mask = vlm.embed(next_tokens), np.concatenate([mask, np.ones((8, 1))], axis=1)
    assert past[0].shape == (8, 1, got.shape[1] + 6, 16)
    assert worst <= TOLERANCE


@pytest.mark.slow
def test_greedy_tokens_and_answers_equal_eager(exported: tuple[MMGPT, Path]) -> None:
    model, folder = exported
    vlm = OnnxVLM(folder)
    texts, images = questions_and_images(QUESTIONS)
    batch = model.processor(question_prompts(model, texts), images)
    ids = vlm.encode_prompts(vlm.prompts(texts))
    expected = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).numpy()
    assert np.array_equal(vlm.generate(ids["input_ids"], ids["attention_mask"], vlm.encode_images(images)), expected)
    eager = answer(texts, images, model=model, batch_size=8)
    assert len(set(eager)) > QUESTIONS // 2  # the check means something only if the answers differ
    assert vlm.answer(texts, images, batch_size=8) == eager
    assert vlm.answer(texts[:6], images[:6], batch_size=1) == eager[:6]
    assert vlm.answer(texts[0], images[0]) == eager[0]


@pytest.mark.slow
def test_answer_api_runs_an_export(exported: tuple[MMGPT, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model, folder = exported
    texts, images = questions_and_images(4, seed=2)
    assert answer(texts, images, model=str(folder)) == answer(texts, images, model=model)
    assert answer(texts[0], images[0], model=folder, max_new_tokens=2) == \
        answer(texts[0], images[0], model=model, max_new_tokens=2)
    assert answer(texts[0], images[0], model=folder, max_new_tokens=0) == ""
    # streamed piece by piece, as the torch model streams
    pieces = list(stream_answer(texts[1], images[1], model=folder))
    assert len(pieces) > 1 and pieces == list(stream_answer(texts[1], images[1], model=model))
    assert "".join(pieces) == answer(texts[1], images[1], model=model)
    assert list(stream_answer(texts[1], images[1], model=folder, temperature=1.0, seed=4)) == \
        list(stream_answer(texts[1], images[1], model=model, temperature=1.0, seed=4))
    monkeypatch.setenv("MMGPT_MODEL", str(folder))
    assert answer(texts[2], images[2]) == answer(texts[2], images[2], model=model)
    with pytest.raises(ValueError, match="num_beams=2: an exported ONNX model .* decodes greedily or by sampling"):
        answer(texts[0], images[0], model=folder, num_beams=2)
    with pytest.raises(ValueError, match="repetition_penalty: an exported ONNX model"):
        answer(texts[0], images[0], model=folder, repetition_penalty=1.2)
    # sampling (seeded) and answer choices decode as the torch model does
    words = ["red", "blue", "green", "yes", "no"]
    for options in ({"temperature": 1.0, "seed": 5}, {"temperature": 0.7, "top_p": 0.8, "seed": 1},
                    {"answer_choices": words}, {"answer_choices": words, "temperature": 1.0, "seed": 2}):
        expected = answer(texts, images, model=model, **options)
        assert answer(texts, images, model=folder, **options) == expected, options
        if "answer_choices" in options:
            assert set(expected) <= set(words)
    sampled = [answer(texts[0], images[0], model=folder, temperature=1.0, seed=s, max_new_tokens=4) for s in range(6)]
    assert len(set(sampled)) > 1  # the seed does change the draws
    with pytest.raises(ValueError, match="runs on the cpu only"):
        answer(texts[0], images[0], model=folder, device="cuda")


@pytest.mark.slow
def test_cli_export_then_answer(tmp_path: Path, capsys: pytest.CaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    model = diverse_model(generator="gpt2", seed=3)
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "exported"
    assert cli.main(["export", str(tmp_path / "model"), str(out), "--format", "onnx", "--exporter", "torchscript"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source_model"] == str(tmp_path / "model")
    assert {g["exporter"] for g in manifest["graphs"].values()} == {"torch.onnx.export(dynamo=False)"}
    texts, images = questions_and_images(2, seed=4)
    images[0].save(tmp_path / "image.png")
    assert cli.main(["answer", texts[0], "--image", str(tmp_path / "image.png"), "--model", str(out)]) == 0
    assert capsys.readouterr().out == answer(texts[0], str(tmp_path / "image.png"), model=model) + "\n"
    # exporting again replaces the export only with --overwrite, also one exported before folders were marked;
    # a failed export leaves the previous one as it was
    assert cli.main(["export", str(tmp_path / "model"), str(out), "--exporter", "torchscript"]) == 2
    assert f"{out} is an earlier mmgpt ONNX export: replace it with --overwrite" in capsys.readouterr().err
    (out / ".mmgpt-output.json").unlink()
    assert cli.main(["export", str(tmp_path / "model"), str(out), "--exporter", "torchscript", "--overwrite"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def fail(*args: object) -> float:
        raise ExportError("decoder.onnx differs from the eager model")

    monkeypatch.setattr(mmgpt.export, "_check_graph", fail)
    assert cli.main(["export", str(tmp_path / "model"), str(out), "--exporter", "torchscript", "--overwrite"]) == 2
    assert "differs from the eager model" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "image.png", "model"]  # no temp folder left
    # an mmgpt folder of another kind is refused, even with --overwrite
    assert cli.main(["export", str(tmp_path / "model"), str(tmp_path / "model"), "--overwrite"]) == 2
    assert "is an mmgpt model folder, not an mmgpt ONNX export" in capsys.readouterr().err
    # the manifest records the opset the graphs import
    assert json.loads((out / "manifest.json").read_text())["opset"] == next(
        e.version for e in onnx.load(str(out / "decoder.onnx"), load_external_data=False).opset_import
        if e.domain == "")
    # commands that need the torch model say what an export is and what runs it
    assert cli.main(["quantize", str(out), str(tmp_path / "int8")]) == 2
    assert f"{out} is an ONNX export (mmgpt export), not a torch model folder: answer(model=...)" in \
        capsys.readouterr().err
    assert not (tmp_path / "int8").exists()


def test_export_never_replaces_a_file_or_a_folder_it_did_not_write(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    build(tiny_config(generator="gpt2")).save_pretrained(tmp_path / "model")
    # a web app's folder: its manifest.json is no mmgpt export's
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text(json.dumps({"name": "my app", "start_url": "/"}))
    (webapp / "index.html").write_text("<html>my app</html>")
    (tmp_path / "notes.txt").write_text("keep me")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for out, problem in ((webapp, "is a folder that mmgpt did not write"), (tmp_path / "notes.txt", "is a file")):
        for overwrite in ([], ["--overwrite"]):
            argv = ["export", str(tmp_path / "model"), str(out), "--exporter", "torchscript", *overwrite]
            assert cli.main(argv) == 2
            assert f"{out} {problem}" in capsys.readouterr().err
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_parts_the_runtime_cannot_reproduce_are_refused(tmp_path: Path) -> None:
    clip = build(tiny_config(image="clip"))
    with pytest.raises(ExportError, match="model.image_encoder cannot be exported: .*timm image transforms only"):
        export_onnx(clip, tmp_path / "clip")
    model = build(tiny_config())
    config = model.generation_config
    config.num_beams = 3
    model.generation_config = config
    with pytest.raises(ExportError, match="num_beams=3, but the ONNX runtime decodes greedily"):
        export_onnx(model, tmp_path / "beams")
    with pytest.raises(ValueError, match="exporter must be one of auto, dynamo, torchscript"):
        export_onnx(model, tmp_path / "x", exporter="tflite")
    # an opset the exporters cannot write is refused before any work, not recorded as if it were used
    for opset in (5, 99):
        with pytest.raises(ExportError, match=rf"opset must be in \[18, \d+\], got {opset}"):
            export_onnx(model, tmp_path / "x", opset=opset)
    # a quantised folder's int8 kernels do not trace: refused up front, naming the fp32 source to export
    build(tiny_config()).save_pretrained(tmp_path / "fp32")
    quantize(tmp_path / "fp32", tmp_path / "q8")
    with pytest.raises(ExportError, match=r"q8 is quantised \(int8, mmgpt quantize\) .*export the fp32 model "
                                          r"it came from \(.*fp32\), with --int8"):
        export_onnx(tmp_path / "q8", tmp_path / "x")
    assert not any((tmp_path / name).exists() for name in ("clip", "beams", "x"))


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["concat", "weighted_sum", "cross_attention+image_prefix"])
def test_several_images_per_prompt_export_answers_equal_eager(tmp_path: Path, fusion: str) -> None:
    # concat (and image_prefix) place each image's tokens in the prompt; weighted_sum fuses each image on its own
    model = diverse_model(fusion=fusion, max_images=2)
    folder = export_onnx(model, tmp_path / "onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["images"] == {"max_images": 2, "tiling": [0, 0], "entries": 2}
    assert manifest["graphs"]["prefix"]["exporter"] == "torch.onnx.export(dynamo=True)"
    vlm = OnnxVLM(folder)
    texts, images = questions_and_images(12, seed=3)
    sets = [images[i : i + 1 + i % 2] for i in range(12)]  # one or two images per prompt, mixed in a batch
    expected = model.generate(**{k: v for k, v in model.processor(question_prompts(model, texts), sets).items()})
    batch = vlm.encode_prompts(vlm.prompts(texts))
    got = vlm.generate(batch["input_ids"], batch["attention_mask"], **vlm.encode_image_sets(sets))
    assert np.array_equal(got, expected.numpy())
    eager = answer(texts, images=sets, model=model, batch_size=4)
    assert len(set(eager)) > 6
    assert vlm.answer(texts, sets, batch_size=4) == eager
    # a lone image is a set of one, as in the eager model
    assert vlm.answer(texts[:4], images[:4]) == answer(texts[:4], images[:4], model=model)
    assert answer(texts[1], images=sets[1], model=str(folder)) == eager[1]
    with pytest.raises(ValueError, match="3 images, more than this model's model.max_images=2"):
        vlm.answer(texts[0], images[:3])


@pytest.mark.slow
def test_tiled_export_reproduces_the_tiles_and_answers_equal_eager(tmp_path: Path) -> None:
    model = diverse_model(tiling=(1, 2), pixel_shuffle=2)
    folder = export_onnx(model, tmp_path / "onnx")
    assert json.loads((folder / "manifest.json").read_text())["images"] == {"max_images": 1, "tiling": [1, 2],
                                                                           "entries": 3}
    vlm = OnnxVLM(folder)
    texts, images = questions_and_images(12, seed=4)
    batch = model.processor(question_prompts(model, texts), images)
    sets = vlm.encode_image_sets([[image] for image in images])
    # the whole image and its tiles, cut and transformed in numpy as the processor does
    assert sets["pixel_values"].shape == tuple(batch["pixel_values"].shape) == (12, 3, 3, 32, 32)
    assert np.abs(sets["pixel_values"] - batch["pixel_values"].numpy()).max() <= 1e-6
    assert np.array_equal(sets["image_mask"], batch["image_mask"].numpy())
    eager = answer(texts, images, model=model, batch_size=4)
    assert len(set(eager)) > 6
    assert vlm.answer(texts, images, batch_size=4) == eager


@pytest.mark.slow
def test_an_export_left_aside_by_a_killed_export_still_answers(exported: tuple[MMGPT, Path], tmp_path: Path) -> None:
    model, folder = exported
    # killed between `onnx -> .onnx.old` and `temp -> onnx`: only the aside copy remains
    shutil.copytree(folder, tmp_path / ".onnx.old")
    texts, images = questions_and_images(3, seed=2)
    expected = answer(texts, images, model=model)
    assert OnnxVLM(tmp_path / "onnx").answer(texts, images) == expected
    assert answer(texts, images, model=tmp_path / "onnx") == expected
    # and a new export there replaces it only with --overwrite
    with pytest.raises(OutputExists, match=r"\.onnx\.old holds the earlier output"):
        export_onnx(model, tmp_path / "onnx")


@pytest.mark.slow
def test_one_image_export_takes_a_list_of_one_image_and_refuses_more(exported: tuple[MMGPT, Path]) -> None:
    model, folder = exported
    texts, images = questions_and_images(2)
    vlm = OnnxVLM(folder)
    # as the eager model takes images=[a]
    assert vlm.answer(texts[0], [images[0]]) == vlm.answer(texts[0], images[0]) == answer(
        texts[0], images=[images[0]], model=model)
    assert vlm.answer(texts, [[images[0]], (images[1],)]) == answer(texts, images, model=model)
    with pytest.raises(ValueError, match="takes one image per prompt, got a prompt with 2 images .*model.max_images 1"):
        vlm.answer(texts[0], [images])
