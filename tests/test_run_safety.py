"""Training runs: output folders, crash-safe checkpoints, NaN and inf guards, the default model."""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_save_safety import kill_at_random
from test_train import make_jsonl, tiny_config
from tiny import one_thread  # noqa: F401  (autouse fixture)

import mmgpt.inference as inference
from mmgpt.model import MMGPT
from mmgpt.training.checkpoint import STATE_NAME, OutputDirInUse, checkpoint_dirs, run_id_of, save_checkpoint
from mmgpt.training.config import is_default_job
from mmgpt.training.loop import parse_args, run_training
from mmgpt.training.nonfinite import NonFiniteTraining


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_jsonl(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def pointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where answer()'s default model is recorded, private to each test."""
    path = tmp_path / "cache" / "default_model.txt"
    monkeypatch.setattr(inference, "_POINTER", path)
    return path


ROOT = Path(__file__).resolve().parents[1]


def state_of(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_NAME).read_text())


# ----------------------------------------------------------------------------- 1. output folders


@pytest.mark.slow
def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=4, save_every=2))])
    before = {p.name: run_id_of(p) for p in checkpoint_dirs(out)}
    assert list(before) == ["step_2", "step_4"]
    config = tiny_config(tmp_path, data, out, max_steps=2, save_every=1)
    with pytest.raises(OutputDirInUse) as info:
        run_training(["--config", str(config)])
    message = str(info.value)
    for expected in (str(out), "--resume latest", "--overwrite", "output_dir="):
        assert expected in message, message
    # nothing of the earlier run was touched
    assert {p.name: run_id_of(p) for p in checkpoint_dirs(out)} == before
    assert MMGPT.from_pretrained(out / "model").num_parameters() > 0


@pytest.mark.slow
def test_overwrite_clears_the_old_run_and_resume_latest_finds_the_new_one(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=6, save_every=3))])
    old_ids = {run_id_of(p) for p in checkpoint_dirs(out)}
    config = tiny_config(tmp_path, data, out, max_steps=4, save_every=1, keep_checkpoints=2, stop_at_step=2)
    assert run_training(["--config", str(config), "--overwrite"]) == {"stopped_at_step": 2}
    found = checkpoint_dirs(out)
    # the new run keeps its own two newest checkpoints: nothing of the old run survives, nothing of the new is lost
    assert [p.name for p in found] == ["step_1", "step_2"]
    (new_id,) = {run_id_of(p) for p in found}
    assert new_id not in old_ids
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    # the resumed run continues the new run (its id), and rotation then drops only its own old checkpoints
    run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=4, save_every=1, keep_checkpoints=2)),
          "--resume", "latest"])
    assert [(p.name, run_id_of(p)) for p in checkpoint_dirs(out)] == [("step_3", new_id), ("step_4", new_id)]
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config), "--overwrite", "--resume", "latest"])


def test_an_output_dir_mmgpt_did_not_write_is_refused_even_with_overwrite(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "project"
    (out / "model").mkdir(parents=True)
    (out / "model" / "notes.txt").write_text("mine")
    (out / "metrics.json").write_text('{"mine": 1}')
    (out / "config.yaml").write_text("mine: true\n")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for extra in ([], ["--overwrite"]):
        with pytest.raises(FileExistsError, match=f"{out} is a folder that mmgpt did not write .* even with"):
            run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=2)), *extra])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt is a file, not a folder"):
        run_training(["--config", str(tiny_config(tmp_path, data, tmp_path / "notes.txt", max_steps=2)), "--overwrite"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_users_own_config_next_to_their_files_never_makes_the_folder_a_run(tmp_path: Path, data: Path) -> None:
    # the user keeps their config in the folder it trains into: a config.yaml naming output_dir and a model
    out = tmp_path / "project"
    (out / "model").mkdir(parents=True)
    (out / "checkpoints").mkdir()
    (out / "model" / "weights.bin").write_text("mine")
    (out / "checkpoints" / "important.txt").write_text("mine")
    (out / "metrics.json").write_text('{"mine": 1}')
    mine = f"# my settings\nbase: {tiny_config(tmp_path, data, tmp_path / 'elsewhere', max_steps=2)}\n" \
           f"output_dir: {out}\nmodel:\n  fusion: {{type: product}}\n"
    (out / "config.yaml").write_text(mine)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for extra in ([], ["--overwrite"]):
        with pytest.raises(FileExistsError, match=f"{out} is a folder that mmgpt did not write"):
            run_training(["--config", str(out / "config.yaml"), *extra])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a run folder whose model/ or checkpoints/ holds what no run writes keeps them under --overwrite as well
    run = tmp_path / "run"
    run_training(["--config", str(tiny_config(tmp_path, data, run, max_steps=2, save_every=0))])
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "important.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"checkpoints is not what a run writes there .* never deletes it"):
        run_training(["--config", str(tiny_config(tmp_path, data, run, max_steps=2, save_every=0)), "--overwrite"])
    assert (run / "checkpoints" / "important.txt").read_text() == "mine"
    assert MMGPT.from_pretrained(run / "model").num_parameters() > 0


def test_a_run_folder_from_before_markers_is_still_resumed_and_guarded(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    assert run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=4, save_every=2,
                         stop_at_step=2))]) == \
        {"stopped_at_step": 2}
    (out / ".mmgpt-output.json").unlink()  # as earlier versions of mmgpt left a run folder
    with pytest.raises(OutputDirInUse):
        run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=4, save_every=2))])
    run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=4, save_every=2)), "--resume", "latest"])
    assert [p.name for p in checkpoint_dirs(out)] == ["step_2", "step_4"]
    assert (out / ".mmgpt-output.json").is_file() and (out / "model" / ".mmgpt-output.json").is_file()


def test_rotation_removes_only_checkpoints_of_this_run(tmp_path: Path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator()
    layer = torch.nn.Linear(3, 2)
    model, optimizer = accelerator.prepare(layer, torch.optim.AdamW(layer.parameters()))
    foreign = tmp_path / "checkpoints" / "step_50"
    foreign.mkdir(parents=True)
    (foreign / STATE_NAME).write_text(json.dumps({"step": 50, "run_id": "another run"}))
    for step in range(1, 5):
        save_checkpoint(accelerator, tmp_path, step, {"step": step, "run_id": "this run"}, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_3", "step_4", "step_50"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3", "step_4", "step_50"]


# ----------------------------------------------------------------------------- 2. crash-safe checkpoints


@pytest.mark.slow
def test_kill_9_at_any_point_of_save_checkpoint_keeps_complete_checkpoints(tmp_path: Path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator()
    layer = torch.nn.Linear(8, 4)
    model, optimizer = accelerator.prepare(layer, torch.optim.AdamW(layer.parameters()))
    rng = random.Random(1)
    root = tmp_path / "checkpoints"
    save_checkpoint(accelerator, tmp_path, 999, {"step": 999, "run_id": "r"}, keep=2)
    interrupted = 0
    for round_ in range(30):
        base = 1000 * (round_ + 1)
        kill_at_random(lambda i, base=base: save_checkpoint(accelerator, tmp_path, base + i,
                                                            {"step": base + i, "run_id": "r"}, keep=2), 0.06, rng)
        interrupted += any(not p.name.startswith("step_") for p in root.iterdir())
        found = checkpoint_dirs(tmp_path)
        # the checkpoint of the previous round, or newer complete ones
        assert found and int(found[-1].name.split("_")[-1].split(".")[0]) >= base - 1, (round_, found)
        for checkpoint in found:
            assert state_of(checkpoint)["step"] == int(checkpoint.name.split("_")[-1].split(".")[0])
            assert load_file(str(checkpoint / "model.safetensors")).keys() == {"weight", "bias"}
            assert (checkpoint / "optimizer.bin").is_file()
        accelerator.load_state(str(found[-1]))
        save_checkpoint(accelerator, tmp_path, base + 999, {"step": base + 999, "run_id": "r"}, keep=2)
        names = sorted(p.name for p in root.iterdir())
        assert all(name.startswith("step_") for name in names) and len(names) <= 2, (round_, names)
        assert checkpoint_dirs(tmp_path)[-1].name == f"step_{base + 999}"
    assert interrupted >= 5, "the kills should land inside saves"


# ----------------------------------------------------------------------------- 3. NaN and inf during training


def poison_step(monkeypatch: pytest.MonkeyPatch, bad_steps: set[int]) -> None:
    """Make the loss NaN on the given (1-based) optimizer steps of a one-micro-batch run."""
    original = MMGPT.forward
    calls = {"n": 0}

    def forward(self: MMGPT, *args: object, **kwargs: object):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in bad_steps:
                out.loss_sum = out.loss_sum * math.nan
        return out

    monkeypatch.setattr(MMGPT, "forward", forward)


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, pointer: Path
) -> None:
    poison_step(monkeypatch, {3})
    monkeypatch.setattr("mmgpt.training.loop.is_default_job", lambda cfg: True)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteTraining, match=r"step 3: the loss is nan .*step_2"):
        run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=5, save_every=1))])
    assert [p.name for p in checkpoint_dirs(out)] == ["step_1", "step_2"]
    for checkpoint in checkpoint_dirs(out):
        assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint / "model.safetensors")).values())
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    assert not pointer.exists(), "a failed run never becomes the default model"


def test_skip_nonfinite_steps_skips_and_counts_them(tmp_path: Path, data: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    poison_step(monkeypatch, {2, 4})
    out = tmp_path / "run"
    result = run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=5)), "skip_nonfinite_steps=true"])
    assert result["nonfinite_steps_skipped"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nonfinite_steps_skipped"] == 2
    history = json.loads((out / "history.json").read_text())["train"]
    assert [step for step, _ in history] == [1, 3, 5] and all(math.isfinite(loss) for _, loss in history)
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_metrics_json_is_strict_json(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mmgpt.training.loop.evaluate",
                        lambda *args, **kwargs: {"eval/loss": math.nan, "eval/acc": 0.5})
    out = tmp_path / "run"
    run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=2))])

    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in strict JSON")

    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["metrics"] == {"eval/loss": None, "eval/acc": 0.5}


def test_weights_that_became_nan_are_never_saved(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = torch.optim.AdamW.step

    def step(self: torch.optim.AdamW, *args: object, **kwargs: object):
        result = original(self, *args, **kwargs)
        if self.state and min(s["step"] for s in self.state.values()) >= 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(math.inf)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteTraining, match=r"step \d: \d+ weight tensor\(s\) hold NaN or inf"):
        run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=4, save_every=1)),
              "skip_nonfinite_steps=true"])
    assert [p.name for p in checkpoint_dirs(out)] == ["step_1"]
    assert not (out / "model").exists()


# ----------------------------------------------------------------------------- 4. the default model


def test_a_toy_run_does_not_become_the_default_model(tmp_path: Path, data: Path, pointer: Path) -> None:
    run_training(["--config", str(tiny_config(tmp_path, data, tmp_path / "run", max_steps=2))])
    assert not pointer.exists()


def test_only_the_main_job_counts_as_the_default_run(tmp_path: Path, data: Path) -> None:
    assert is_default_job(parse_args([])[0])
    assert is_default_job(parse_args(["cpu_threads=1", "log_every=5", "data.num_workers=2", "stop_at_step=600"])[0])
    assert is_default_job(parse_args([f"output_dir={Path('runs/default').resolve()}"])[0])
    for override in ("optim.lr=1e-3", "max_steps=10", "output_dir=runs/other", "model.fusion.dim=64",
                     "data.samples_per_epoch=100", "seed=1"):
        assert not is_default_job(parse_args([override])[0]), override
    assert not is_default_job(parse_args(["--config", str(tiny_config(tmp_path, data, tmp_path / "x"))])[0])


@pytest.mark.slow
def test_a_completed_main_job_records_its_model(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, pointer: Path
) -> None:
    monkeypatch.setattr("mmgpt.training.loop.is_default_job", lambda cfg: True)
    out = tmp_path / "run"
    # stopped part-way: not completed, so not recorded
    run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=3, stop_at_step=2))])
    assert not pointer.exists()
    run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=3)), "--resume", "latest"])
    assert Path(pointer.read_text()) == (out / "model").resolve()


def test_training_errors_are_one_line_with_status_2(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mmgpt.cli import main as cli

    poison_step(monkeypatch, {2})
    config = tiny_config(tmp_path, data, tmp_path / "run", max_steps=4)
    assert cli(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mmgpt train: error: step 2: the loss is nan"), "\n".join(err[-6:])
    assert not any("Traceback" in line for line in err)


@pytest.mark.slow
def test_train_py_reports_a_config_error_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "train.py"), "optim.lrr=1", f"output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("train.py: error: unknown config key 'optim.lrr'")
    assert "Traceback" not in done.stderr



def _started(command: list[str], log: Path) -> subprocess.Popen:
    """`command` started with its stderr in `log`, returned once its progress bar passed step 3."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                env={k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK"))})
    deadline = time.monotonic() + 120
    while not re.search(r"\| *([3-9]|\d\d+)/1000000 ", log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(log.read_text()[-3000:])
        time.sleep(0.1)
    return proc


def _stopped(proc: subprocess.Popen, log: Path, signals: list[int]) -> None:
    """Signal `signals` (pids), then require exit status 0 within 20 s and no traceback."""
    for pid in signals:
        os.kill(pid, signal.SIGTERM)
    try:
        returncode = proc.wait(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.slow
def test_sigterm_checkpoints_within_a_step_and_the_run_resumes(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    # log_every far beyond the stop: the stop request must be seen at the next step, not at a log step
    config = tiny_config(tmp_path, data, out, max_steps=10**6, log_every=10**6, save_every=0)
    log = tmp_path / "stderr.txt"
    proc = _started([sys.executable, str(ROOT / "train.py"), "--config", str(config), "cpu_threads=1"], log)
    _stopped(proc, log, [proc.pid])
    (checkpoint,) = checkpoint_dirs(out)
    step = state_of(checkpoint)["step"]
    assert step >= 3
    result = run_training(["--config", str(config), "--resume", "latest", f"max_steps={step + 2}"])
    assert result["step"] == step + 2 and (out / "model" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks through /proc")
def test_sigterm_to_both_ranks_of_a_two_process_run_stops_cleanly(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(tmp_path, data, out, max_steps=10**6, log_every=10**6, batch_size=4)
    log = tmp_path / "stderr.txt"
    proc = _started([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     str(ROOT / "train.py"), "--config", str(config), "cpu_threads=1"], log)
    ranks = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(ranks) == 2, ranks
    _stopped(proc, log, ranks)
    (checkpoint,) = checkpoint_dirs(out)
    assert state_of(checkpoint)["step"] >= 3


def test_a_users_folders_named_like_leftovers_survive_checkpoints_and_overwrite(tmp_path: Path, data: Path) -> None:
    from accelerate import Accelerator

    from mmgpt.outputs import prepare_output_folder
    from mmgpt.training.checkpoint import clear_run

    accelerator = Accelerator()
    layer = torch.nn.Linear(3, 2)
    accelerator.prepare(layer, torch.optim.AdamW(layer.parameters()))
    root = tmp_path / "checkpoints"
    save_checkpoint(accelerator, tmp_path, 1, {"step": 1, "run_id": "r"}, keep=3)
    users = [root / ".step_1.old", root / ".step_1.trash-deadbeef", root / ".tmp_step_9",
             tmp_path / ".model.tmp-notes123", tmp_path / ".checkpoints.20240101"]
    for folder in users:
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    save_checkpoint(accelerator, tmp_path, 2, {"step": 2, "run_id": "r"}, keep=3)
    with pytest.raises(FileExistsError, match=r"\.tmp_step_9 .*did not write.* move it"):
        save_checkpoint(accelerator, tmp_path, 9, {"step": 9, "run_id": "r"}, keep=3)
    assert all((folder / "notes.txt").read_text() == "mine" for folder in users)
    # --overwrite deletes the run's own checkpoints folder, and beside it only what a run's saves left
    clear_run(tmp_path)
    assert all((folder / "notes.txt").read_text() == "mine" for folder in users if folder.parent == tmp_path)
    # a folder of the user's where a run puts its previous model aside is refused before any training
    out = tmp_path / "run"
    prepare_output_folder(out, "run")
    (out / ".model.old").mkdir()
    (out / ".model.old" / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(FileExistsError, match=r"\.model\.old .*did not write.* move it"):
            run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=2)), *extra])
    assert (out / ".model.old" / "notes.txt").read_text() == "mine"


def test_a_run_killed_during_its_final_evaluation_resumes_there(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    config = str(tiny_config(tmp_path, data, out, max_steps=3, save_every=0))
    first = run_training(["--config", config])
    # the last step is kept even with save_every 0...
    assert [p.name for p in checkpoint_dirs(out)] == ["step_3"]
    # ...so a kill during the final evaluation (no model, no metrics yet) loses nothing: the resume evaluates again
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    again = run_training(["--config", config, "--resume", "latest"])
    assert again["step"] == 3 and again["metrics"] == first["metrics"]
    assert MMGPT.from_pretrained(out / "model").num_parameters() > 0


def test_a_damaged_checkpoint_is_named_with_the_earlier_one_to_resume(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    config = str(tiny_config(tmp_path, data, out, max_steps=6, save_every=2, stop_at_step=4))
    assert run_training(["--config", config]) == {"stopped_at_step": 4}
    step_2, step_4 = checkpoint_dirs(out)
    optimizer = next(p for p in step_4.iterdir() if p.name.startswith("optimizer"))
    optimizer.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"checkpoint {step_4} cannot be loaded, it is damaged .*"
                                         rf"--resume {step_2}"):
        run_training(["--config", config, "--resume", "latest"])
    # a resume below the step reached is refused before the run folder's config.yaml changes
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match=rf"max_steps=3 is below step 4, where {step_4} already is"):
        run_training(["--config", config, "--resume", "latest", "max_steps=3"])
    assert (out / "config.yaml").read_text() == saved
    state = json.loads((step_2 / STATE_NAME).read_text())
    (step_2 / STATE_NAME).write_text(json.dumps({**state, "step": "x"}))
    with pytest.raises(ValueError, match=r"trainer_state.json has step='x', not counts"):
        run_training(["--config", config, "--resume", str(step_2)])
