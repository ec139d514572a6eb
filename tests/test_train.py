"""train.py end to end on tiny data: DDP equivalence, exact resume, bad images."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from mmgpt.data.dataset import TooManyBadImages
from mmgpt.training.loop import run_training

REPO = Path(__file__).resolve().parent.parent
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}


def make_jsonl(folder: Path, n: int = 48) -> Path:
    """n tiny images of a coloured square, with 'what color' questions."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    names = list(COLORS)
    for i in range(n):
        color = names[i % len(names)]
        image = Image.new("RGB", (32, 32), (255, 255, 255))
        image.paste(COLORS[color], (4 + i % 8, 4, 20 + i % 8, 20))
        image.save(folder / "img" / f"{i}.png")
        lines.append({"image": f"img/{i}.png", "prompt": "what color is the square?", "answer": color, "id": i})
    path = folder / "data.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def tiny_config(folder: Path, data: Path, output: Path, **overrides) -> Path:
    """A seconds-long training config; the image encoder has no batch norm, so DDP equals one process exactly."""
    config = {
        "output_dir": str(output),
        "seed": 0,
        "batch_size": 8,
        "max_steps": 6,
        "eval_every": 0,
        "save_every": 0,
        "log_every": 1,
        # fp32 throughout: bf16 rounds a batch of 8 differently from two of 4, so autocast would hide
        # a DDP averaging bug inside rounding noise (tests/test_image_autocast.py covers autocast)
        "image_encoder_autocast": "no",
        "model": {
            "text_encoder": {"type": "lm_embeddings", "max_length": 16},
            "image_encoder": {
                "type": "timm",
                "name": "vit_tiny_patch16_224",
                "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
            },
            "fusion": {"type": "cross_attention", "dim": 32, "num_layers": 1, "num_heads": 2},
            "generator": {"kwargs": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                                        "max_position_embeddings": 64}},
            "tokenizer": {"vocab_size": 300},
            "max_answer_length": 8,
        },
        "data": {
            # augmented, so that exact resume and DDP equivalence cover the augmentation's randomness too
            "train": [{"format": "jsonl", "path": str(data), "name": "train", "augment": ["hflip", "rot90"]}],
            "eval": [{"format": "jsonl", "path": str(data), "name": "eval", "max_examples": 8}],
            "eval_max_examples": 8,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 2},
    }
    for key, value in overrides.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = folder / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch_two_processes(config: Path, cwd: Path, *train_args: str,
                         launch_args: tuple[str, ...] | None = None) -> subprocess.CompletedProcess:
    """train.py --config CONFIG [TRAIN_ARGS] under `accelerate launch LAUNCH_ARGS` (default: 2 CPU processes, DDP)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "LOCAL_RANK", "RANK", "WORLD_SIZE"))}
    # accelerate's --cpu flag selects its single-process launcher; --multi_gpu on a machine without
    # GPUs starts real CPU processes (gloo), which is what multi-process training on CPU needs
    if launch_args is None:
        launch_args = ("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                       "--dynamo_backend", "no")
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args,
               str(REPO / "train.py"), "--config", str(config), *train_args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def weights(output: Path) -> dict[str, torch.Tensor]:
    """The final model's weights."""
    return load_file(str(output / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_jsonl(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_training_writes_a_loadable_model_and_learns(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    result = run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=30, **{"optim.lr": 1e-2}))])
    history = json.loads((out / "history.json").read_text())["train"]
    assert len(history) == 30
    assert history[-1][1] < history[0][1] * 0.5, history
    assert (out / "config.yaml").is_file() and (out / "metrics.json").is_file()
    assert "eval/loss" in result["metrics"] and "eval/vqa_exact_match" in result["metrics"]
    from mmgpt.model import MMGPT

    model = MMGPT.from_pretrained(out / "model")
    assert model.num_parameters() > 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["max_steps"] == 30


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path, data: Path) -> None:
    single = tmp_path / "single"
    run_training(["--config", str(tiny_config(tmp_path, data, single, batch_size=8))])
    double = tmp_path / "double"
    config = tiny_config(tmp_path, data, double, batch_size=4)
    proc = launch_two_processes(config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr, "two processes were expected"
    a, b = weights(single), weights(double)
    assert a.keys() == b.keys()
    # the attention key bias has a zero gradient in exact arithmetic, so Adam turns float rounding
    # into lr-sized steps there; everything else agrees far more tightly
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=f"{name} differs")
    losses_a = [loss for _, loss in json.loads((single / "history.json").read_text())["train"]]
    losses_b = [loss for _, loss in json.loads((double / "history.json").read_text())["train"]]
    assert losses_a == pytest.approx(losses_b, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("ema_decay", "autocast"), [(0.0, "no"), (0.9, "auto")], ids=["weights", "ema_bf16"])
def test_interrupted_run_resumes_exactly(tmp_path: Path, data: Path, ema_decay: float, autocast: str) -> None:
    # the second case is the default's setting: EMA on, image encoder under bf16 autocast where native
    # log lines every 3 steps: the stop at step 4 falls inside a window, whose loss the checkpoint must carry
    knobs = {"optim.ema_decay": ema_decay, "image_encoder_autocast": autocast, "log_every": 3}
    full = tmp_path / "full"
    run_training(["--config", str(tiny_config(tmp_path, data, full, max_steps=9, **knobs))])
    resumed = tmp_path / "resumed"
    config = tiny_config(tmp_path, data, resumed, max_steps=9, stop_at_step=4, **knobs)
    assert run_training(["--config", str(config)]) == {"stopped_at_step": 4}
    # the weight average travels in the checkpoint: restarting it from the resumed weights would differ
    assert (resumed / "checkpoints" / "step_4" / "ema.safetensors").is_file() == (ema_decay > 0)
    state = json.loads((resumed / "checkpoints" / "step_4" / "trainer_state.json").read_text())
    # 48 examples / batch 8 = 6 batches per epoch: step 4 is mid-epoch
    assert (state["epoch"], state["batches_in_epoch"]) == (0, 4)
    assert not (resumed / "model").exists()
    config = tiny_config(tmp_path, data, resumed, max_steps=9, **knobs)
    run_training(["--config", str(config), "--resume", "latest"])
    history_full = json.loads((full / "history.json").read_text())["train"]
    history_resumed = json.loads((resumed / "history.json").read_text())["train"]
    assert history_full == history_resumed
    a, b = weights(full), weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_checkpoints_are_complete_or_absent(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "ckpt"
    run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=6, save_every=2, keep_checkpoints=2))])
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_4", "step_6"], names
    for name in names:
        files = {p.name for p in (out / "checkpoints" / name).iterdir()}
        assert "trainer_state.json" in files and "model.safetensors" in files, files
        assert not any(f.endswith((".bin", ".pkl", ".pt")) and "optimizer" not in f and "scheduler" not in f
                       and "random_states" not in f for f in files), files


def _with_bad_images(tmp_path: Path, data: Path) -> tuple[Path, int]:
    from bad_images import make_bad_images, make_unusual_images

    folder = tmp_path / "mixed"
    shutil.copytree(data.parent, folder)
    lines = (folder / "data.jsonl").read_text().splitlines()
    bad = make_bad_images(folder / "bad")
    unusual = make_unusual_images(folder / "unusual")
    for i, path in enumerate(list(bad.values()) + list(unusual.values())):
        lines.append(json.dumps({"image": str(path), "prompt": "what color is the square?", "answer": "red",
                                 "id": 1000 + i}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl", len(bad)


@pytest.mark.slow
def test_bad_images_are_skipped_and_counted(tmp_path: Path, data: Path) -> None:
    mixed, num_bad = _with_bad_images(tmp_path, data)
    out = tmp_path / "bad"
    config = tiny_config(tmp_path, mixed, out, max_steps=3)
    with open(config) as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["max_bad_fraction"] = 0.5
    config.write_text(yaml.safe_dump(cfg))
    result = run_training(["--config", str(config)])
    summary = result["bad_images"]["train"]
    assert summary.startswith(f"{num_bad} of "), summary
    assert (out / "model" / "model.safetensors").is_file()


def test_too_many_bad_images_fail_with_a_clear_message(tmp_path: Path, data: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    mixed, _ = _with_bad_images(tmp_path, data)
    config = tiny_config(tmp_path, mixed, tmp_path / "strict", max_steps=2)
    with pytest.raises(TooManyBadImages, match=r"max_bad_fraction=0\.01"):
        run_training(["--config", str(config)])
    # bad input, so the command says it in one line with status 2, not a traceback
    from mmgpt.cli import main as cli

    assert cli(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mmgpt train: error: ") and "max_bad_fraction=0.01" in err[-1], err[-3:]
    assert not any("Traceback" in line for line in err)


def test_bad_config_key_names_the_key(tmp_path: Path, data: Path) -> None:
    config = tiny_config(tmp_path, data, tmp_path / "x")
    with pytest.raises(ValueError, match="optim.lrr"):
        run_training(["--config", str(config), "optim.lrr=1"])


def test_sigterm_becomes_a_stop_request() -> None:
    import signal

    from mmgpt.training.checkpoint import StopRequest

    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is previous


def test_cpu_threads_default_to_the_cores_per_local_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmgpt.devices import available_cores, set_cpu_threads

    before = torch.get_num_threads()
    try:
        # what `accelerate launch` exports by default must not decide the thread count
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert set_cpu_threads(0) == available_cores() == torch.get_num_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(available_cores() * 2))
        assert set_cpu_threads(0) == 1 == torch.get_num_threads()
        assert set_cpu_threads(3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_negative_cpu_threads_is_refused(tmp_path: Path, data: Path) -> None:
    config = tiny_config(tmp_path, data, tmp_path / "x")
    with pytest.raises(ValueError, match="cpu_threads"):
        run_training(["--config", str(config), "cpu_threads=-1"])


def test_a_repeated_signal_is_the_same_stop_request_only_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    import mmgpt.training.checkpoint as checkpoint

    with checkpoint.StopRequest() as stop:
        # Ctrl-C under a multi-process launcher: the terminal's SIGINT, then the launcher's
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        monkeypatch.setattr(checkpoint, "REPEAT_GRACE_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
