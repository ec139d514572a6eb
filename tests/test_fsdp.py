"""FSDP (configs/accelerate/fsdp.yaml) on 2 CPU processes: the same weights as one process, exact resume, refusals."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_train import REPO, launch_two_processes, make_jsonl, tiny_config, weights

from mmgpt.config import ConfigError
from mmgpt.training.fsdp import check_checkpoint, check_fsdp_settings
from mmgpt.training.loop import run_training

FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp.yaml"
# the README's command: `accelerate launch --config_file configs/accelerate/fsdp.yaml train.py`
FSDP_LAUNCH = ("--config_file", str(FSDP_CONFIG))
# configs/default.yaml's parts, tiny: the batch-normed CNN, cross-attention, a from-scratch generator whose
# output layer is tied to its input embeddings, and the weight average
DEFAULT_PARTS = {
    "model.image_encoder": {"type": "timm", "name": "mmgpt_tiny_cnn_fullres"},
    "model.generator": {"kwargs": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                                   "max_position_embeddings": 64, "tie_word_embeddings": True}},
    "optim.ema_decay": 0.9,
    "max_steps": 4,
    "batch_size": 4,
}


def fsdp_config(tmp_path: Path, data: Path, name: str, **overrides) -> Path:
    """tests/test_train.py's tiny config with DEFAULT_PARTS and `overrides`, writing to tmp_path/name."""
    return tiny_config(tmp_path, data, tmp_path / name, **{**DEFAULT_PARTS, **overrides})


def launch_fsdp(config: Path, cwd: Path, *train_args: str, launch_args: tuple[str, ...] = ()) -> None:
    """Train under FSDP on 2 CPU processes; fails the test with the run's log when it fails or is not FSDP."""
    proc = launch_two_processes(config, cwd, *train_args, launch_args=FSDP_LAUNCH + launch_args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP on CPU processes" in proc.stderr and "2 process(es)" in proc.stderr, proc.stderr[-3000:]
    # each decoder layer is a unit of its own (MMGPT._no_split_modules), the rest one unit
    assert "FSDP units: MMGPT, LlamaDecoderLayer" in proc.stderr, proc.stderr[-3000:]


def train_history(output: Path) -> list:
    return json.loads((output / "history.json").read_text())["train"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_jsonl(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """The default parts trained for 4 steps under FSDP without a stop."""
    folder = tmp_path_factory.mktemp("fsdp")
    launch_fsdp(fsdp_config(folder, data, "full"), folder)
    return folder / "full"


def test_fsdp_matches_one_process_with_the_same_global_batch(tmp_path: Path, data: Path) -> None:
    # the CNN frozen: its batch norm then normalises with fixed statistics, as it does in one process; a
    # trained one normalises each process's half batch by itself (SyncBatchNorm needs a GPU)
    knobs = {"model.image_encoder": {**DEFAULT_PARTS["model.image_encoder"], "freeze": True}}
    single = tmp_path / "single"
    run_training(["--config", str(fsdp_config(tmp_path, data, "single", batch_size=8, **knobs))])
    launch_fsdp(fsdp_config(tmp_path, data, "sharded", **knobs), tmp_path)
    a, b = weights(single), weights(tmp_path / "sharded")
    assert a.keys() == b.keys()
    # the tied output layer is saved once, under one of its two names
    assert ("generator.lm_head.weight" in b) != ("generator.model.embed_tokens.weight" in b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=f"{name} differs")
    losses_a = [loss for _, loss in train_history(single)]
    losses_b = [loss for _, loss in train_history(tmp_path / "sharded")]
    assert losses_a == pytest.approx(losses_b, rel=1e-4)


@pytest.mark.parametrize("state_dict_type", ["SHARDED_STATE_DICT", "FULL_STATE_DICT"])
def test_fsdp_run_resumes_exactly(tmp_path: Path, data: Path, uninterrupted: Path, state_dict_type: str) -> None:
    launch_args = ("--fsdp_state_dict_type", state_dict_type)
    config = fsdp_config(tmp_path, data, "resumed", stop_at_step=2)
    launch_fsdp(config, tmp_path, launch_args=launch_args)
    checkpoint = tmp_path / "resumed" / "checkpoints" / "step_2"
    # a sharded checkpoint holds accelerate's distributed-checkpoint folders, a full one whole tensors
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() == (state_dict_type == "SHARDED_STATE_DICT")
    assert (checkpoint / "ema.safetensors").is_file()
    launch_fsdp(config, tmp_path, "--resume", "latest", launch_args=launch_args)
    assert train_history(tmp_path / "resumed") == train_history(uninterrupted)
    a, b = weights(uninterrupted), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def fsdp_accelerator(version: int = 2, activation_checkpointing: bool = False,
                     state_dict_type: str = "SHARDED_STATE_DICT", fsdp: bool = True) -> SimpleNamespace:
    """What check_fsdp_settings and check_checkpoint read of an Accelerator and its FSDP plugin."""
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import StateDictType

    plugin = SimpleNamespace(fsdp_version=version, activation_checkpointing=activation_checkpointing,
                             state_dict_type=StateDictType[state_dict_type])
    return SimpleNamespace(distributed_type=DistributedType.FSDP if fsdp else DistributedType.MULTI_CPU,
                           state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize(("settings", "message"), [
    ({"version": 1}, "fsdp_version 1 .*set fsdp_version: 2"),
    ({"activation_checkpointing": True}, "fsdp_activation_checkpointing .*gradient_checkpointing=true"),
])
def test_unsupported_fsdp_settings_are_refused_naming_them(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_fsdp_settings(fsdp_accelerator(**settings))
    check_fsdp_settings(fsdp_accelerator())


@pytest.mark.parametrize(("written", "run", "message"), [
    ("pytorch_model_fsdp_0", {"fsdp": False}, "written under FSDP .*SHARDED_STATE_DICT.*fsdp.yaml"),
    ("model.safetensors", {}, "written without FSDP"),
    ("pytorch_model_fsdp.bin", {}, "FULL_STATE_DICT, and this run has SHARDED_STATE_DICT.*--fsdp_state_dict_type"),
    ("pytorch_model_fsdp_0", {"state_dict_type": "FULL_STATE_DICT"}, "--fsdp_state_dict_type SHARDED_STATE_DICT"),
])
def test_a_checkpoint_of_another_layout_is_refused_naming_the_fix(tmp_path: Path, written: str, run: dict,
                                                                  message: str) -> None:
    (tmp_path / "pytorch_model_fsdp_0").mkdir() if written.endswith("_0") else (tmp_path / written).touch()
    with pytest.raises(ConfigError, match=message):
        check_checkpoint(fsdp_accelerator(**run), tmp_path)
    # the layouts a run of each kind loads
    kind = "FULL_STATE_DICT" if written.endswith(".bin") else "SHARDED_STATE_DICT"
    check_checkpoint(fsdp_accelerator(fsdp=written != "model.safetensors", state_dict_type=kind), tmp_path)
