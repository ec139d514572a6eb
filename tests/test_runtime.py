"""mmgpt.runtime without torch: a subprocess where importing torch or transformers fails answers like eager."""
from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from PIL import Image
from test_packaging import clean_env, mmgpt_wheel, venv_with  # noqa: F401 - mmgpt_wheel is a fixture
from tiny import build, one_thread, tiny_config  # noqa: F401  (one_thread: autouse fixture)

from mmgpt import cli
from mmgpt.encoders.timm_image import TimmTransform
from mmgpt.export import BLOCK_INT8, DYNAMIC_INT8, ExportError, export_onnx, quantize_export
from mmgpt.inference import answer
from mmgpt.runtime import ExportFolderError, OnnxVLM
from mmgpt.runtime.image import ImageTransform

REPO = Path(__file__).resolve().parent.parent
# run first in the subprocess: any import of torch or transformers (or their submodules) raises ImportError
BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked: the runtime must not import it")
        return None
sys.meta_path.insert(0, BlockTorch())
"""
RUN = """
import json
from mmgpt.runtime import OnnxVLM
texts, images = json.loads(sys.argv[2]), json.loads(sys.argv[3])
answers = OnnxVLM(sys.argv[1]).answer(texts, images, batch_size=2)
assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A tiny qwen2 model with spread-out weights, exported with the (quicker) TorchScript exporter."""
    model = build(tiny_config(generator="qwen2"), seed=5).eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    folder = export_onnx(model, tmp_path_factory.mktemp("export") / "onnx", exporter="torchscript")
    return model, folder


def test_runtime_answers_in_a_process_without_torch(exported: tuple, tmp_path: Path) -> None:
    model, folder = exported
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 24), (32, 32), (17, 51)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    texts = ["what color is the shape?", "", "is there a circle? how many shapes are there?"]
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH + RUN, str(folder), json.dumps(texts),
                             json.dumps(paths)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = json.loads(result.stdout)
    assert answers == answer(texts, paths, model=model)
    assert len(set(answers)) == 3
    # answer() takes an export there too; sampling needs torch's logits processors, and says so
    sampling = BLOCK_TORCH + """
from mmgpt.inference import answer
print(answer(sys.argv[2], sys.argv[3], model=sys.argv[1]))
for options in ({"temperature": 1.0, "seed": 0}, {"answer_choices": ["red", "blue"]}):
    try:
        answer(sys.argv[2], sys.argv[3], model=sys.argv[1], **options)
    except ValueError as e:
        print(e)
"""
    result = subprocess.run([sys.executable, "-c", sampling, str(folder), texts[0], paths[0]], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    greedy, *refusals = result.stdout.splitlines()
    assert greedy == answers[0]
    assert [line.split(":")[0] for line in refusals] == ["temperature", "answer_choices"]
    assert all(f": without torch an exported ONNX model ({folder}) decodes greedily" in line for line in refusals)
    # the blocker does block: the torch-backed Processor cannot be imported there
    blocked = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import mmgpt.processor"], capture_output=True,
                             text=True, cwd=REPO, timeout=60)
    assert blocked.returncode != 0 and "torch is blocked" in blocked.stderr


def test_hf_text_encoder_and_truncated_prompts(tmp_path: Path) -> None:
    """A BERT text encoder, and a prompt longer than its limit (the runtime keeps its end, as the Processor)."""
    model = build(tiny_config(text="bert"), seed=7).eval()
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    vlm = OnnxVLM(export_onnx(model, tmp_path / "bert", exporter="torchscript"))
    texts = ["what color is the shape?", "", "is there a circle? " * 20, "how many shapes are there?"]
    images = [Image.new("RGB", (9 + 5 * i, 30), (40 * i, 90, 200)) for i in range(4)]
    batch = model.processor(vlm.prompts(texts), images)
    assert np.array_equal(vlm.encode_prompts(vlm.prompts(texts))["input_ids"], batch["input_ids"].numpy())
    assert vlm.answer(texts, images) == answer(texts, images, model=model)


@pytest.mark.parametrize("data_config", [
    {"input_size": [3, 64, 64], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0,
     "crop_mode": "center"},
    {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
     "std": [0.229, 0.224, 0.225], "crop_pct": 0.875},
    {"input_size": [3, 24, 40], "interpolation": "lanczos", "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1],
     "crop_pct": 0.9, "crop_mode": "squash"},
])
def test_image_transform_equals_timms(data_config: dict) -> None:
    timm_transform, numpy_transform = TimmTransform(data_config), ImageTransform(data_config)
    rng = np.random.default_rng(1)
    for width, height in [(64, 64), (7, 5), (100, 37), (31, 200), (28, 28), (64, 80)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = timm_transform(image).numpy()
        got = numpy_transform(image)
        assert got.dtype == np.float32 and got.shape == expected.shape == (3, *data_config["input_size"][1:])
        assert np.abs(got - expected).max() <= 1e-6


def test_folders_that_are_not_exports_are_refused(exported: tuple, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    _, folder = exported
    with pytest.raises(ExportFolderError, match=r"is not an exported mmgpt model: it has no manifest.json"):
        OnnxVLM(tmp_path)
    copy = tmp_path / "future"
    copy.mkdir()
    for file in folder.iterdir():
        if file.is_file():
            (copy / file.name).write_bytes(file.read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ExportFolderError, match=r"format_version 99 is not one this mmgpt reads \(1, 2\)"):
        OnnxVLM(copy)
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    assert cli.main(["answer", "what?", "--image", str(image), "--model", str(copy)]) == 2
    assert "format_version 99 is not one this mmgpt reads" in capsys.readouterr().err
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "decoder.onnx").unlink()
    with pytest.raises(ExportFolderError, match="the decoder graph decoder.onnx named in manifest.json is missing"):
        OnnxVLM(copy)


def test_max_new_tokens_past_the_position_limit_is_the_same_clear_error(exported: tuple) -> None:
    model, folder = exported
    vlm = OnnxVLM(folder)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    batch = vlm.encode_prompts(vlm.prompts(["what color?"]))
    prefix = int(vlm.prefix(**batch, pixel_values=vlm.encode_images([image]))[1].sum())
    limit = 64 - prefix
    assert isinstance(vlm.answer("what color?", image, max_new_tokens=limit), str)
    with pytest.raises(ValueError, match=rf"max_new_tokens={limit + 1} is over this model's limit of {limit} "):
        vlm.answer("what color?", image, max_new_tokens=limit + 1)
    with pytest.raises(ValueError, match=r"max_new_tokens=1000000000 is over this model's limit"):
        answer("what color?", image, model=folder, max_new_tokens=10**9)


def runtime_packages() -> list[str]:
    """The packages docs/deployment.md installs for the torch-free runtime (its `pip install --no-deps .` command)."""
    guide = (REPO / "docs" / "deployment.md").read_text()
    return re.search(r"^pip install --no-deps \. && pip install ([\w -]+)$", guide, re.M)[1].split()


def linked_site(folder: Path, distributions: list[str]) -> Path:
    """`folder` holding links to the files of `distributions` and of everything they require, nothing else."""
    folder.mkdir()
    seen, todo = set(), list(distributions)
    while todo:
        name = todo.pop()
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        dist = importlib.metadata.distribution(name)
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            if not (folder / top).exists():
                (folder / top).symlink_to(Path(dist.locate_file(top)))
    return folder


@pytest.mark.slow
def test_the_runtime_install_answers_without_torch(exported: tuple, mmgpt_wheel: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    model, folder = exported
    packages = runtime_packages()
    assert {"onnxruntime", "onnx", "numpy", "pillow", "tokenizers", "pyyaml"} == set(packages)
    python, site = venv_with(tmp_path / "venv", mmgpt_wheel, [str(linked_site(tmp_path / "runtime", packages))])
    env = {k: v for k, v in clean_env().items() if k != "MMGPT_MODEL"}
    absent = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, env=env, timeout=60)
    assert "No module named 'torch'" in absent.stderr
    image = tmp_path / "shape.png"
    Image.new("RGB", (40, 28), (200, 40, 40)).save(image)
    question = "what color is the shape?"
    expected = answer(question, image, model=model)

    command = [python, site / "bin" / "mmgpt", "answer", "--model", folder, "--image", image, question]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == expected + "\n"
    code = f"from mmgpt import answer; print(repr(answer({question!r}, {str(image)!r}, model={str(folder)!r})))"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == repr(expected) + "\n"
    # a saved torch model: one line saying what this install can run
    model.save_pretrained(tmp_path / "saved")
    command[4] = tmp_path / "saved"
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not a folder written by `mmgpt export`" in proc.stderr and "needs torch" in proc.stderr


def test_int8_export_is_what_the_runtime_runs(exported: tuple, tmp_path: Path) -> None:
    import onnx

    model, fp32_folder = exported
    folder = export_onnx(model, tmp_path / "int8", exporter="torchscript", int8=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dtype"] == "int8" and manifest["quantization"]["graphs"] == ["prefix", "decoder"]
    assert manifest["graphs"]["decoder"]["fp32_max_abs_diff_vs_eager"] <= 1e-4
    assert manifest["quantization"]["methods"] == {"prefix": DYNAMIC_INT8, "decoder": BLOCK_INT8}
    # the prefix's many rows per matmul quantise dynamically; the decoder's one row per token reads int8 blocks
    for name, op in (("prefix.onnx", "DynamicQuantizeLinear"), ("decoder.onnx", "MatMulNBits"),
                     ("embed_tokens.onnx", None)):
        ops = {node.op_type for node in onnx.load(str(folder / name)).graph.node}
        assert {"DynamicQuantizeLinear", "MatMulNBits"} & ops == ({op} if op else set()), name
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["decoder.onnx", "embed_tokens.onnx", "prefix.onnx"]
    # the same folder layout, so the runtime and answer() take it with no flag; int8 logits stay near fp32's
    int8, fp32 = OnnxVLM(folder), OnnxVLM(fp32_folder)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]
    texts = ["what color is the shape?", "", "is there a circle?", "how many shapes are there?", "red", "no"]
    ids = fp32.encode_prompts(fp32.prompts(texts))
    pixels = fp32.encode_images(images)
    logits = []
    for vlm in (int8, fp32):
        prefix, mask = vlm.prefix(ids["input_ids"], ids["attention_mask"], pixels)
        bos = vlm.embed(np.full((6, 1), vlm.tokens["bos_token_id"]))
        step, _ = vlm.decode_step(np.concatenate([prefix, bos], 1), np.concatenate([mask, np.ones((6, 1))], 1),
                                  vlm.empty_past(6))
        logits.append(step)
    assert not np.array_equal(logits[0], logits[1])
    # one int8 scale per 128 weights, activations int8 per block too: 5% of the largest logit on random weights
    assert np.abs(logits[0] - logits[1]).max() <= 0.1 * np.abs(logits[1]).max()
    assert answer(texts, images, model=folder) == int8.answer(texts, images)
    # an fp32 export quantised afterwards holds the same graphs; a quantised one is not quantised twice
    copy = tmp_path / "copy"
    shutil.copytree(fp32_folder, copy)
    quantize_export(copy)
    assert json.loads((copy / "manifest.json").read_text())["dtype"] == "int8"
    assert OnnxVLM(copy).answer(texts, images) == int8.answer(texts, images)
    with pytest.raises(ExportError, match=r"copy is already quantised \(dtype 'int8'\)"):
        quantize_export(copy)


def test_an_onnxruntime_without_8bit_blocks_quantises_the_decoder_dynamically(
        exported: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer

    class FourBitOnly(matmul_nbits_quantizer.DefaultWeightOnlyQuantConfig):
        """As onnxruntime's config before `bits` arrived (4-bit MatMulNBits only)."""

        def __init__(self, block_size: int = 128, is_symmetric: bool = False, accuracy_level: int | None = None
                     ) -> None:
            super().__init__(block_size=block_size, is_symmetric=is_symmetric, accuracy_level=accuracy_level)

    monkeypatch.setattr(matmul_nbits_quantizer, "DefaultWeightOnlyQuantConfig", FourBitOnly)
    _, fp32_folder = exported
    copy = tmp_path / "copy"
    shutil.copytree(fp32_folder, copy)
    quantize_export(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["quantization"]["methods"] == {"prefix": DYNAMIC_INT8, "decoder": DYNAMIC_INT8}
    ops = {node.op_type for node in onnx.load(str(copy / "decoder.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulNBits" not in ops
    assert isinstance(OnnxVLM(copy).answer("what color is the shape?", Image.new("RGB", (32, 32))), str)


def test_an_unknown_dtype_is_refused(exported: tuple, tmp_path: Path) -> None:
    _, folder = exported
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in folder.iterdir():
        if file.is_file():
            (copy / file.name).write_bytes(file.read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "dtype": "float16"}))
    with pytest.raises(ExportFolderError, match=r"'dtype' must be one of float32, int8, got 'float16'"):
        OnnxVLM(copy)
