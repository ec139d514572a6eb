"""Loading models and configs safely: local folders only (hub models only as hf://org/name), one clear
ModelLoadError for a damaged folder, and configs that nest too deeply or expand through YAML aliases refused."""
from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from tiny import build, make_batch, one_thread, tiny_config  # noqa: F401 (autouse fixture)

import mmgpt
from mmgpt import cli
from mmgpt.config import ConfigError, apply_overrides, load_config, load_yaml, parse_override
from mmgpt.inference import load_model
from mmgpt.model import MMGPT
from mmgpt.model_folder import ModelLoadError
from mmgpt.training.config import TrainConfig

PROMPTS = ["what color is the shape?", "is there a circle?"]
ANSWERS = ["red", "no"]
HUB_NAMES = {
    "generator": "HuggingFaceTB/SmolLM2-135M",
    "text_encoder": "google-bert/bert-base-uncased",
    "image_encoder": "openai/clip-vit-base-patch32",
}


@pytest.fixture()
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Online as far as the hub libraries know, but every download or connection is recorded and refused."""
    import huggingface_hub
    import huggingface_hub._snapshot_download
    import huggingface_hub.constants
    import huggingface_hub.file_download
    import transformers.utils.hub

    calls: list = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))
        raise OSError(f"hub request in a test: {args} {kwargs}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for module in (huggingface_hub, huggingface_hub.file_download, transformers.utils.hub):
        monkeypatch.setattr(module, "hf_hub_download", refuse)
    for module in (huggingface_hub, huggingface_hub._snapshot_download, transformers.utils.hub):
        monkeypatch.setattr(module, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "snapshot_download", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield calls


def saved_model(tmp_path: Path, text: str = "lm_embeddings", image: str = "cnn") -> tuple[MMGPT, Path]:
    """A tiny model saved to tmp_path/model."""
    model = build(tiny_config(text, image)).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    return model, folder


def edit_config(folder: Path, change: Callable[[dict], Any]) -> None:
    """Rewrite folder/config.json through `change`, which edits the 'model' mapping in place."""
    data = json.loads((folder / "config.json").read_text())
    change(data["model"])
    (folder / "config.json").write_text(json.dumps(data))


def name_hub_repos(model_config: dict) -> None:
    """Make every part that reads a name from the hub name a real hub repo."""
    model_config["generator"]["name"] = HUB_NAMES["generator"]
    for part in ("text_encoder", "image_encoder"):
        if model_config[part]["type"] == "hf":
            model_config[part]["name"] = HUB_NAMES[part]


def assert_same_weights_and_logits(model: MMGPT, loaded: MMGPT) -> None:
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert not [k for k in ours if not torch.equal(ours[k], theirs[k])]
    batch = make_batch(model, PROMPTS, ANSWERS)
    assert torch.equal(model(**batch).logits, loaded(**batch).logits)


# 1. local folders only; the hub only when asked for as hf://org/name


@pytest.mark.parametrize("name", ["runs/defualt", "org/name", "runs/defualt/model"])
def test_a_missing_path_is_not_sent_to_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_calls: list, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"model folder not found: {name} .*hf://org/name"):
        MMGPT.from_pretrained(name)
    with pytest.raises(FileNotFoundError, match=f"model folder not found: {name}"):
        load_model(name, device="cpu")
    assert hub_calls == []


def test_the_cli_reports_a_missing_model_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_calls: list, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    assert cli.main(["answer", "--model", "runs/defualt", "--image", "img.png", "q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model folder not found: runs/defualt" in err
    assert hub_calls == []


@pytest.mark.parametrize("text, image", [("lm_embeddings", "cnn"), ("bert", "clip")])
def test_a_saved_folder_loads_from_itself_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_calls: list, text: str, image: str
) -> None:
    model, folder = saved_model(tmp_path, text, image)
    edit_config(folder, name_hub_repos)
    # a relative path of one '/' ("model/generator") is what a hub repo id looks like
    monkeypatch.chdir(tmp_path)
    assert_same_weights_and_logits(model, MMGPT.from_pretrained("model"))
    parts = ["generator", *(["text_encoder"] if text == "bert" else []),
             *(["image_encoder"] if image == "clip" else [])]
    for part in parts:
        shutil.copytree(folder, tmp_path / part)
        shutil.rmtree(tmp_path / part / part)
        with pytest.raises(ModelLoadError, match=rf"in {part}: .*{part}/config.json is missing"):
            MMGPT.from_pretrained(part)
    assert hub_calls == []


def test_hub_models_are_asked_for_as_hf_org_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    model, folder = saved_model(tmp_path)
    downloads: list = []

    def fake_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        downloads.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert_same_weights_and_logits(model, MMGPT.from_pretrained("hf://org/tiny-mmgpt"))
    assert_same_weights_and_logits(model, load_model("hf://org/tiny-mmgpt2", device="cpu"))
    assert [repo for repo, _ in downloads] == ["org/tiny-mmgpt", "org/tiny-mmgpt2"]
    patterns = downloads[0][1]["allow_patterns"]
    assert any(fnmatch("model.safetensors", p) for p in patterns)
    assert not [name for name in ("pytorch_model.bin", "model.pt", "weights.pkl", "code.py")
                if any(fnmatch(name, p) for p in patterns)]
    for bad in ("hf://org", "hf://org/name/extra", "hf://"):
        with pytest.raises(ModelLoadError, match="must look like hf://org/name"):
            MMGPT.from_pretrained(bad)
    assert len(downloads) == 2
    monkeypatch.setenv("MMGPT_MODEL", "hf://org/tiny-mmgpt3")
    assert_same_weights_and_logits(model, load_model(device="cpu"))
    assert [repo for repo, _ in downloads][-1] == "org/tiny-mmgpt3"


# 2. one ModelLoadError naming the folder and the problem


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES: dict[str, tuple[Callable[[Path], Any], str]] = {
    "truncated weights": (lambda f: _truncate(f / "model.safetensors"), "model.safetensors is not a complete"),
    "empty weights": (lambda f: (f / "model.safetensors").write_bytes(b""), "model.safetensors is not a complete"),
    # the bytes of a pickle and of a torch.save zip: read as text, never unpickled
    "pickle weights": (lambda f: (f / "model.safetensors").write_bytes(b"\x80\x04\x95" + bytes(64)),
                       "model.safetensors is not a complete"),
    "zip weights": (lambda f: (f / "model.safetensors").write_bytes(b"PK\x03\x04" + bytes(64)),
                    "model.safetensors is not a complete"),
    "wrong shapes": (lambda f: edit_config(f, lambda m: m["fusion"].update(dim=24)),
                     r"does not fit .*config.json: 'fusion\..*' is \[16.*\] in the file but \[24"),
    "no tokenizer": (lambda f: shutil.rmtree(f / "tokenizer"), "tokenizer holds no tokenizer"),
    "no tokenizer files": (lambda f: [p.unlink() for p in (f / "tokenizer").iterdir()],
                           "tokenizer holds no tokenizer"),
    "damaged tokenizer": (lambda f: (f / "tokenizer" / "tokenizer.json").write_text('{"model": 3'),
                          "the tokenizer in .*tokenizer cannot be read"),
    "config not JSON": (lambda f: (f / "config.json").write_text("{model: nope"), "config.json is not valid JSON"),
    "config a list": (lambda f: (f / "config.json").write_text("[1, 2]"),
                      r"config.json must hold a JSON object .* got list"),
    "config without model": (lambda f: (f / "config.json").write_text('{"fusion": {}}'),
                             "config.json has no 'model' key"),
    "model not a mapping": (lambda f: (f / "config.json").write_text('{"model": 3}'),
                            "config section 'model' must be a mapping"),
    "unknown key": (lambda f: edit_config(f, lambda m: m.update(fusoin={})), "unknown config key 'model.fusoin'"),
    "no processor.json": (lambda f: (f / "processor.json").unlink(), "processor.json is missing"),
    "bad processor.json": (lambda f: (f / "processor.json").write_text('{"max_prompt_length": "x"}'),
                           "processor.json must map"),
    "no transform type": (lambda f: (f / "image_transform" / "transform.json").write_text("{}"),
                          "transform.json must name the transform's 'type' .*got NoneType"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_folder_gives_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_calls: list, damage: str
) -> None:
    _, folder = saved_model(tmp_path)
    change, message = DAMAGES[damage]
    change(folder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=message) as error:
        MMGPT.from_pretrained("model")
    assert "model" in str(error.value) and "\n" not in str(error.value)
    assert hub_calls == []


def test_the_cli_reports_a_damaged_model_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, folder = saved_model(tmp_path)
    _truncate(folder / "model.safetensors")
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    assert cli.main(["answer", "--model", str(folder), "--image", str(tmp_path / "img.png"), "q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{folder}/model.safetensors is not a complete safetensors file" in err
    assert mmgpt.ModelLoadError is ModelLoadError


def test_a_saved_config_cannot_reach_outside_its_folder(tmp_path: Path, hub_calls: list) -> None:
    _, folder = saved_model(tmp_path)
    checkpoint = tmp_path / "elsewhere.pth"
    checkpoint.write_bytes(b"\x80\x04\x95" + bytes(64))
    edit_config(folder, lambda m: m["image_encoder"]["kwargs"].update(checkpoint_path=str(checkpoint)))
    with pytest.raises(ModelLoadError, match="checkpoint_path is not supported"):
        MMGPT.from_pretrained(folder)
    edit_config(folder, lambda m: m["image_encoder"]["kwargs"].pop("checkpoint_path"))
    edit_config(folder, lambda m: m["generator"].update(attn_implementation="kernels-community/flash-attn"))
    with pytest.raises(ModelLoadError, match="names a hub kernel"):
        MMGPT.from_pretrained(folder)
    assert hub_calls == []


# 3. free-form mappings: no alias bombs, no self-reference, no deep nesting


def alias_bomb(key: str) -> str:
    """A YAML file of about 1 KB whose `key` stands for 9**9 (387 million) strings once its aliases are expanded."""
    *sections, leaf = key.split(".")
    lines, indent = [], ""
    for section in sections:
        lines.append(f"{indent}{section}:")
        indent += "  "
    lines.append(f"{indent}{leaf}:")
    indent += "  "
    lines.append(f"{indent}l0: &l0 [" + ", ".join(["lol"] * 9) + "]")
    for level in range(1, 9):
        lines.append(f"{indent}l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "key", ["model.generator.kwargs", "model.text_encoder.kwargs", "model.image_encoder.kwargs"]
)
def test_a_yaml_alias_bomb_is_refused_naming_the_file_and_key(tmp_path: Path, key: str) -> None:
    text = alias_bomb(key)
    assert len(text) < 1400
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    message = rf"config file {path}: '{key}\.l8' holds 43.,...,... values"
    with pytest.raises(ConfigError, match=message):
        load_yaml(path)
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, path)


def test_a_yaml_override_bomb_and_a_self_referencing_alias_are_refused(tmp_path: Path) -> None:
    anchors = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    anchors += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    override = "model.generator.kwargs={" + ", ".join(anchors) + "}"
    with pytest.raises(ConfigError, match=r"override 'model.generator.kwargs': 'l8' holds"):
        apply_overrides({}, [override])
    path = tmp_path / "loop.yaml"
    path.write_text("model:\n  image_encoder:\n    kwargs: &loop\n      again: [1, *loop]\n")
    with pytest.raises(ConfigError, match=rf"{path}: 'model.image_encoder.kwargs.again\[1\]' contains itself"):
        load_yaml(path)
    # ordinary nesting and repeated small aliases stay allowed
    key, value = parse_override("model.generator.kwargs={a: &a [1, 2], b: *a, c: {d: {e: 1}}}")
    assert value == {"a": [1, 2], "b": [1, 2], "c": {"d": {"e": 1}}}


def test_a_deep_or_huge_config_json_is_refused(tmp_path: Path, hub_calls: list) -> None:
    model, folder = saved_model(tmp_path)
    good = (folder / "config.json").read_text()
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError, match="config.json nests too deeply"):
        MMGPT.from_pretrained(folder)
    (folder / "config.json").write_text(good)
    edit_config(folder, lambda m: m["generator"]["kwargs"].update(deep=json.loads("[" * 40 + "]" * 40)))
    with pytest.raises(ModelLoadError, match=r"config.json: 'model.generator.kwargs.deep\[0\]\[0\].*' nests deeper"):
        MMGPT.from_pretrained(folder)
    (folder / "config.json").write_text(good)
    edit_config(folder, lambda m: m["image_encoder"]["kwargs"].update(bulk=[0] * 300_000))
    with pytest.raises(ModelLoadError, match=r"'model.image_encoder.kwargs.bulk' holds 300,001 values"):
        MMGPT.from_pretrained(folder)
    (folder / "config.json").write_text(good)
    (folder / "generator" / "config.json").write_text("{\"a\": " * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(ModelLoadError, match="generator/config.json nests too deeply"):
        MMGPT.from_pretrained(folder)
    assert hub_calls == []


# 4. a model folder is data, never code: nothing it ships is imported, and nothing waits on stdin

PACKAGE_DIRS = ("mmgpt", "encoders", "fusion", "bench")
# where a saved model's files name code: (file, what makes transformers want to import evil.py beside it)
CODE_HOOKS = {
    "generator/config.json": {"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig",
                                                                 "AutoModelForCausalLM": "evil.EvilModel"}},
    "tokenizer/tokenizer_config.json": {"tokenizer_class": "EvilTokenizerFast",
                                        "auto_map": {"AutoTokenizer": [None, "evil.EvilTokenizerFast"]}},
    "image_transform/preprocessor_config.json": {"image_processor_type": "EvilImageProcessor",
                                                 "auto_map": {"AutoImageProcessor": "evil.EvilImageProcessor"}},
}


@pytest.fixture()
def code_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """transformers' cache of imported model code, moved to tmp_path (a test that fails must not leave code there)."""
    import transformers.dynamic_module_utils

    cache = tmp_path / "hf_modules"
    monkeypatch.setenv("HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(cache))
    return cache


def ship_code(folder: Path, file: str, marker: Path) -> Path:
    """Make `folder/file` name evil.py, which writes `marker` when imported; returns the edited file."""
    path = folder / file
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(CODE_HOOKS[file])
    path.write_text(json.dumps(data))
    (path.parent / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return path


@pytest.mark.parametrize("file", list(CODE_HOOKS))
def test_code_shipped_in_a_model_folder_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_calls: list, code_cache: Path, file: str
) -> None:
    _, folder = saved_model(tmp_path, image="clip" if file.startswith("image_transform") else "cnn")
    marker = tmp_path / "MARKER"
    path = ship_code(folder, file, marker)
    # a user who would answer yes to transformers' question
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("y\n" * 10))
    with pytest.raises(ModelLoadError, match=rf"{path}: 'auto_map' names Python code"):
        MMGPT.from_pretrained(folder)
    assert not marker.exists()
    assert hub_calls == []


def test_a_part_named_by_a_folder_that_ships_code_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code_cache: Path
) -> None:
    from standins import causal_lm

    from mmgpt.config import GeneratorConfig, ModelConfig

    base = causal_lm("llama", tmp_path / "base")
    marker = tmp_path / "MARKER"
    data = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**data, **CODE_HOOKS["generator/config.json"]}))
    (base / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("y\n" * 10))
    with pytest.raises(ConfigError, match=rf"{base / 'config.json'}: 'auto_map' names Python code"):
        MMGPT.from_config(ModelConfig(generator=GeneratorConfig(name=str(base))))
    assert not marker.exists()


def test_an_unknown_model_type_is_refused_naming_the_file(tmp_path: Path, hub_calls: list) -> None:
    _, folder = saved_model(tmp_path)
    config = folder / "generator" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "evil"}))
    with pytest.raises(ModelLoadError, match=rf"{config}: model_type 'evil' is not an architecture transformers"):
        MMGPT.from_pretrained(folder)


def test_the_cli_answers_yes_in_vain_and_exits_2(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    _, folder = saved_model(tmp_path)
    marker = tmp_path / "MARKER"
    path = ship_code(folder, "generator/config.json", marker)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mmgpt.cli", "answer", "--model", str(folder), "--image",
                           str(tmp_path / "img.png"), "--device", "cpu", "q"],
                          input="y\n" * 10, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: 'auto_map' names Python code" in proc.stderr
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert not marker.exists()


OWN_CLASSES = ("MMGPT", "Processor", "PromptTemplates")  # mmgpt's own from_pretrained / from_config


def _transformers_loads() -> list[tuple[str, int, list]]:
    """Every from_pretrained / from_config call of the package on anything but mmgpt's own classes."""
    import ast

    root = Path(__file__).resolve().parent.parent
    files = [p for d in PACKAGE_DIRS for p in (root / d).rglob("*.py")] + list(root.glob("*.py"))
    calls = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("from_pretrained", "from_config")
                    and not (isinstance(node.func.value, ast.Name) and node.func.value.id in OWN_CLASSES)):
                trusted = [ast.literal_eval(k.value) if isinstance(k.value, ast.Constant) else ast.unparse(k.value)
                           for k in node.keywords if k.arg == "trust_remote_code"]
                calls.append((str(path.relative_to(root)), node.lineno, trusted))
    return calls


def test_every_transformers_load_passes_trust_remote_code_false() -> None:
    calls = _transformers_loads()
    assert calls, "the scan found no loads at all"
    assert [c for c in calls if c[2] != [False]] == []


# 5. an adapter-only folder loads the base model it recorded, found from the folder itself


def adapter_folder(root: Path, base: str) -> tuple[MMGPT, Path]:
    """A LoRA model on the stand-in llama at `base` (as the config names it), saved adapters-only to root/out."""
    from mmgpt.config import FusionConfig, GeneratorConfig, LoraConfig, ModelConfig, TextEncoderConfig

    config = ModelConfig(text_encoder=TextEncoderConfig(max_length=24),
                         fusion=FusionConfig(type="concat", dim=16, num_layers=1, num_heads=2, null_token=False),
                         generator=GeneratorConfig(name=base, lora=LoraConfig(r=2, alpha=4.0)), max_answer_length=12)
    config.image_encoder = tiny_config().image_encoder
    torch.manual_seed(0)
    model = MMGPT.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # zero-initialised adapters would make any base look right
    model.save_pretrained(root / "out", merge_lora=False)
    return model, root / "out"


def test_an_adapter_folder_finds_its_base_beside_it_not_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_calls: list
) -> None:
    from standins import causal_lm

    causal_lm("llama", tmp_path / "made" / "base")
    monkeypatch.chdir(tmp_path / "made")
    model, _ = adapter_folder(tmp_path / "made", "base")
    # the base and the adapters move together; the new working directory holds another model of that name
    shutil.move(tmp_path / "made", tmp_path / "moved")
    causal_lm("llama", tmp_path / "elsewhere" / "base", seed=1)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert_same_weights_and_logits(model, MMGPT.from_pretrained(tmp_path / "moved" / "out"))
    assert hub_calls == []


def test_an_adapter_folder_refuses_another_base_or_a_bare_hub_name(tmp_path: Path, hub_calls: list) -> None:
    from standins import causal_lm

    base = causal_lm("llama", tmp_path / "base")
    _, folder = adapter_folder(tmp_path, str(base))
    record = json.loads((folder / "adapter_config.json").read_text())
    # same architecture and files, other weights: the adapters were not trained on it
    causal_lm("llama", base, seed=1)
    with pytest.raises(ModelLoadError, match=r"base model of generator at .*base is not the one its adapters were "
                                             r"trained on \(its weights' sha256 differs"):
        MMGPT.from_pretrained(folder)
    for location in ("org/name", "../base-gone"):
        changed = {**record["base_models"]["generator"], "location": location}
        (folder / "adapter_config.json").write_text(json.dumps({**record, "base_models": {"generator": changed}}))
        with pytest.raises(ModelLoadError, match=rf"the base model of generator is not at {folder / location} .*"
                                                 r"hf://org/name"):
            MMGPT.from_pretrained(folder)
    renamed = {**record["base_models"]["generator"], "name": "other"}
    (folder / "adapter_config.json").write_text(json.dumps({**record, "base_models": {"generator": renamed}}))
    with pytest.raises(ModelLoadError, match=r"base_models.generator is 'other', but .*config.json names"):
        MMGPT.from_pretrained(folder)
    assert hub_calls == []


def test_a_huge_yaml_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    from mmgpt.training.config import load_train_config

    limit = 256 * 2**10
    huge = tmp_path / "huge.yaml"
    # a valid config padded with a comment: parsed, it would be accepted
    huge.write_text("batch_size: 2\n" + ("#" + "x" * 1023 + "\n") * (limit // 1024 + 1))
    small = tmp_path / "small.yaml"
    small.write_text("base: huge.yaml\nmax_steps: 3\n")
    message = rf"{huge} is {huge.stat().st_size:,} bytes; a config file is far smaller \(the limit is 262,144\)"
    with pytest.raises(ConfigError, match=message):
        load_train_config(str(small))
    assert cli.main(["train", "--config", str(small), "--dry-run"]) == 2
    # the presets are far below the limit
    assert max(p.stat().st_size for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")) < limit / 20


# 6. an exported folder reads only its own files, whatever the installed onnxruntime allows


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model exported with the (quicker) TorchScript exporter."""
    from mmgpt.export import export_onnx

    model = build(tiny_config()).eval()
    return export_onnx(model, tmp_path_factory.mktemp("export") / "onnx", exporter="torchscript")


def move_to_external_data(graph: Path, location: str, data_file: Path) -> None:
    """Store the largest initializer of `graph` in `data_file`, named in the graph as `location`."""
    import onnx

    model = onnx.load(str(graph))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data_file.write_bytes(tensor.raw_data)
    onnx.external_data_helper.set_external_data(tensor, location=location)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    graph.write_bytes(model.SerializeToString())


def test_an_exported_folder_reads_external_data_inside_it(exported: Path, tmp_path: Path) -> None:
    from mmgpt.runtime import OnnxVLM

    image = Image.new("RGB", (32, 32), (200, 40, 40))
    expected = OnnxVLM(exported).answer(["what color is the shape?"], [image])
    folder = shutil.copytree(exported, tmp_path / "onnx")
    move_to_external_data(folder / "decoder.onnx", "weights/decoder.bin", (folder / "weights").mkdir() or
                          folder / "weights" / "decoder.bin")
    assert OnnxVLM(folder).answer(["what color is the shape?"], [image]) == expected


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_an_exported_graph_cannot_read_outside_its_folder(exported: Path, tmp_path: Path, how: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    from mmgpt.runtime import ExportFolderError, OnnxVLM

    folder = shutil.copytree(exported, tmp_path / "onnx")
    outside = tmp_path / "outside.bin"
    location = {"parent": "../outside.bin", "absolute": str(outside), "symlink": "weights.bin"}[how]
    move_to_external_data(folder / "decoder.onnx", location, outside)
    if how == "symlink":
        (folder / "weights.bin").symlink_to(outside)
    message = rf"{folder / 'decoder.onnx'}: external data '{location}' resolves to {outside}, outside {folder}"
    with pytest.raises(ExportFolderError, match=message):
        OnnxVLM(folder)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    assert cli.main(["answer", "--model", str(folder), "--image", str(tmp_path / "img.png"), "q"]) == 2
    assert "outside" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_an_exported_manifest_cannot_name_files_outside_its_folder(exported: Path, tmp_path: Path, how: str) -> None:
    from mmgpt.runtime import ExportFolderError, OnnxVLM

    folder = shutil.copytree(exported, tmp_path / "onnx")
    outside = shutil.copytree(folder / "tokenizer", tmp_path / "elsewhere") / "tokenizer.json"
    manifest = json.loads((folder / "manifest.json").read_text())
    name = {"parent": "../elsewhere/tokenizer.json", "absolute": str(outside), "symlink": "tokenizer/tokenizer.json"}
    if how == "symlink":
        (folder / "tokenizer" / "tokenizer.json").unlink()
        (folder / "tokenizer" / "tokenizer.json").symlink_to(outside)
    manifest["files"]["tokenizer"] = name[how]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportFolderError, match=rf"manifest.json: files.tokenizer '{name[how]}' resolves to "
                                                rf"{outside}, outside {folder}"):
        OnnxVLM(folder)


def test_an_exported_graph_that_links_out_of_its_folder_is_refused(exported: Path, tmp_path: Path) -> None:
    from mmgpt.runtime import ExportFolderError, OnnxVLM

    folder = shutil.copytree(exported, tmp_path / "onnx")
    shutil.move(folder / "prefix.onnx", tmp_path / "prefix.onnx")
    (folder / "prefix.onnx").symlink_to(tmp_path / "prefix.onnx")
    with pytest.raises(ExportFolderError, match=rf"the prefix graph 'prefix.onnx' resolves to {tmp_path}/prefix.onnx, "
                                                "outside"):
        OnnxVLM(folder)


# 7. weights that hold NaN or infinity are refused at load, as training refuses to save them


def poison(weights: Path, pick: Callable[[str], bool]) -> str:
    """Set the first float tensor of `weights` whose name `pick` accepts to NaN (inf in its first value)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    key = next(k for k, v in tensors.items() if pick(k) and v.is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    tensors[key].view(-1)[0] = float("inf")
    save_file(tensors, str(weights), metadata=metadata)
    return key


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path: Path, kind: str,
                                                               capsys: pytest.CaptureFixture) -> None:
    _, folder = saved_model(tmp_path)
    if kind == "int8":
        from mmgpt.compress.quantize import quantize

        folder = quantize(folder, tmp_path / "int8")
    key = poison(folder / "model.safetensors", lambda k: "scale" in k if kind == "int8" else "generator." in k)
    with pytest.raises(ModelLoadError, match=rf"{folder}/model.safetensors: tensor '{key}' holds \d+ NaN or "
                                             "infinite value"):
        MMGPT.from_pretrained(folder)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    assert cli.main(["answer", "--model", str(folder), "--image", str(tmp_path / "img.png"), "q"]) == 2
    assert key in capsys.readouterr().err
