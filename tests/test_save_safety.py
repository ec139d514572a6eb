"""save_pretrained is crash-safe: kill -9 at any instant leaves a loadable model and never blocks the next save."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny import build, one_thread, tiny_config  # noqa: F401  (autouse fixture)

import mmgpt.inference as inference
from mmgpt.model import MMGPT


def kill_at_random(work: Callable[[int], None], seconds: float, rng: random.Random) -> None:
    """Run work(0), work(1), ... in a forked child and kill -9 it after a random time; the child must not fail."""
    read, write = os.pipe()
    started_read, started_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.close(started_read)
        try:
            os.write(started_write, b"1")
            for i in range(10**6):
                work(i)
        except BaseException:
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(3)
    os.close(write)
    os.close(started_write)
    # on a busy machine the child may not run for a while: count the random delay from its first save
    os.read(started_read, 1)
    os.close(started_read)
    time.sleep(rng.uniform(0, seconds))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode()
    assert os.WIFSIGNALED(status) and not error, f"the saving child failed by itself:\n{error}"


def mark_of(model: MMGPT) -> float:
    """The value `marked` set."""
    return float(model.projector[2].bias[0].detach())


def marked(model: MMGPT, value: float) -> MMGPT:
    """`model` with one weight set to `value`, so a loaded copy tells which save it came from."""
    with torch.no_grad():
        model.projector[2].bias[0] = value
    return model


@pytest.mark.slow
def test_kill_9_at_any_point_of_save_pretrained_never_loses_the_model(tmp_path: Path) -> None:
    model = build(tiny_config()).eval()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    folder = tmp_path / "model"
    marked(model, -1.0).save_pretrained(folder)
    last_saved, interrupted, rng = -1.0, 0, random.Random(0)
    for round_ in range(40):
        first = 1000.0 * (round_ + 1)
        kill_at_random(lambda i, first=first: marked(model, first + i).save_pretrained(folder), 0.03, rng)
        interrupted += any(p.name != "model" for p in tmp_path.iterdir())
        # the previous model or a newer complete one, never a mixture and never nothing
        loaded = MMGPT.from_pretrained(folder)
        mark = mark_of(loaded)
        assert mark == last_saved or first <= mark < first + 1000, (round_, mark)
        for key, value in loaded.state_dict().items():
            if key != "projector.2.bias":
                assert torch.equal(value, reference[key]), key
        # whatever the kill left behind, the next save works and cleans it up
        last_saved = -float(round_ + 2)
        marked(model, last_saved).save_pretrained(folder)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], round_
        assert mark_of(MMGPT.from_pretrained(folder)) == last_saved
    assert interrupted >= 5, "the kills should land inside saves"


def test_a_model_left_aside_by_a_crash_loads_and_never_blocks_a_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build(tiny_config()).eval()
    folder = tmp_path / "model"
    marked(model, 1.0).save_pretrained(folder)
    # killed between `model -> .model.old` and `temp -> model`: only the aside copy and a temp folder remain
    os.replace(folder, tmp_path / ".model.old")
    (tmp_path / ".model.k3j5h2g8").mkdir()
    assert mark_of(MMGPT.from_pretrained(folder)) == 1.0
    monkeypatch.delenv("MMGPT_MODEL", raising=False)
    monkeypatch.setattr(inference, "DEFAULT_RUN_MODEL", folder)
    assert inference.default_model_path() == folder
    marked(model, 2.0).save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # a stale aside next to a complete model (killed before deleting it) does not block the next save either
    shutil.copytree(folder, tmp_path / ".model.old")
    marked(model, 3.0).save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert mark_of(MMGPT.from_pretrained(folder)) == 3.0


def test_saving_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    model = build(tiny_config()).eval()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is a folder that mmgpt did not write"):
        model.save_pretrained(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_saving_never_replaces_a_file_or_another_librarys_model_and_an_earlier_model_only_when_allowed(
    tmp_path: Path,
) -> None:
    model = build(tiny_config()).eval()
    (tmp_path / "weights.bin").write_text("keep me")
    with pytest.raises(FileExistsError, match="weights.bin is a file, not a folder"):
        model.save_pretrained(tmp_path / "weights.bin")
    assert (tmp_path / "weights.bin").read_text() == "keep me"
    # a transformers model folder has config.json and model.safetensors too, but no mmgpt config in it
    theirs = tmp_path / "gpt2"
    theirs.mkdir()
    (theirs / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (theirs / "model.safetensors").write_bytes(b"their weights")
    with pytest.raises(FileExistsError, match="gpt2 is a folder that mmgpt did not write"):
        model.save_pretrained(theirs, overwrite=True)
    assert (theirs / "model.safetensors").read_bytes() == b"their weights"
    # an earlier mmgpt model, also one saved before folders were marked, is replaced unless overwrite=False
    marked(model, 1.0).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / ".mmgpt-output.json").unlink()
    with pytest.raises(FileExistsError, match="earlier mmgpt model folder: replace it with --overwrite"):
        marked(model, 2.0).save_pretrained(tmp_path / "m", overwrite=False)
    assert mark_of(MMGPT.from_pretrained(tmp_path / "m")) == 1.0
    marked(model, 3.0).save_pretrained(tmp_path / "m")
    assert mark_of(MMGPT.from_pretrained(tmp_path / "m")) == 3.0
    assert json.loads((tmp_path / "m" / ".mmgpt-output.json").read_text())["format"] == "mmgpt-model"


def test_a_users_folders_named_like_leftovers_survive_every_save(tmp_path: Path) -> None:
    model = build(tiny_config()).eval()
    folder = tmp_path / "model"
    marked(model, 1.0).save_pretrained(folder)
    # the names a killed save's temp and trash folders have, but holding the user's files
    users = [".model.20240101", ".model.tmp-notes123", ".model.trash-deadbeef", ".model.old.trash-cafe1234"]
    for name in users:
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text(f"mine: {name}")
    (tmp_path / ".model.tmp-emptyabc").mkdir()  # an empty one holds nothing to lose
    (tmp_path / ".model.tmp-cutshort").mkdir()  # nor one a kill left with its marker not yet written
    (tmp_path / ".model.tmp-cutshort" / ".mmgpt-temp").touch()
    marked(model, 2.0).save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", *users])
    assert all((tmp_path / name / "notes.txt").read_text() == f"mine: {name}" for name in users)
    assert mark_of(MMGPT.from_pretrained(folder)) == 2.0


@pytest.mark.parametrize("model_exists", [True, False])
def test_a_users_folder_at_the_aside_name_is_kept_and_the_save_says_to_move_it(
    tmp_path: Path, model_exists: bool
) -> None:
    model = build(tiny_config()).eval()
    folder = tmp_path / "model"
    if model_exists:
        marked(model, 1.0).save_pretrained(folder)
    aside = tmp_path / ".model.old"
    aside.mkdir()
    (aside / "config.json").write_text('{"mine": true}')
    with pytest.raises(FileExistsError, match=r"\.model\.old .*did not write.* move it"):
        marked(model, 2.0).save_pretrained(folder)
    assert (aside / "config.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".model.old"] + ["model"] * model_exists)
    if model_exists:
        assert mark_of(MMGPT.from_pretrained(folder)) == 1.0


def test_a_kill_before_the_temp_marker_is_removed_leaves_a_loadable_model_that_saves_again(tmp_path: Path) -> None:
    from mmgpt import saving

    model = build(tiny_config()).eval()
    folder = tmp_path / "model"
    marked(model, 2.0).save_pretrained(folder)
    assert not (folder / saving.TEMP_MARKER).exists()
    # as if killed right after the temp folder was renamed in: its marker, naming the temp folder, is still there
    (folder / saving.TEMP_MARKER).write_text(json.dumps({"format": saving.TEMP_FORMAT, "name": ".model.tmp-k3j5h2g8"}))
    assert mark_of(MMGPT.from_pretrained(folder)) == 2.0
    assert saving.remove_leftovers(tmp_path, ".*") == []  # the published folder is not a leftover
    assert folder.is_dir()
    marked(model, 3.0).save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not (folder / saving.TEMP_MARKER).exists()
    assert mark_of(MMGPT.from_pretrained(folder)) == 3.0


def test_a_command_treats_an_output_left_aside_by_a_crash_as_the_earlier_output(tmp_path: Path) -> None:
    from mmgpt.compress.quantize import quantize
    from mmgpt.outputs import OutputExists

    build(tiny_config()).eval().save_pretrained(tmp_path / "fp32")
    quantize(tmp_path / "fp32", tmp_path / "q8")
    # killed between `q8 -> .q8.old` and `temp -> q8`: readers load the aside copy...
    os.replace(tmp_path / "q8", tmp_path / ".q8.old")
    before = {p.name: p.read_bytes() for p in (tmp_path / ".q8.old").iterdir() if p.is_file()}
    assert MMGPT.from_pretrained(tmp_path / "q8").config.max_images == 1
    # ...so a new output there replaces it only with --overwrite, as it would replace q8 itself
    with pytest.raises(OutputExists, match=r"\.q8\.old holds the earlier output of .*q8 .*--overwrite"):
        quantize(tmp_path / "fp32", tmp_path / "q8")
    assert {p.name: p.read_bytes() for p in (tmp_path / ".q8.old").iterdir() if p.is_file()} == before
    quantize(tmp_path / "fp32", tmp_path / "q8", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32", "q8"]


def test_quantize_and_prune_never_replace_their_own_input(tmp_path: Path) -> None:
    from mmgpt.compress.prune import prune
    from mmgpt.compress.quantize import quantize
    from mmgpt.outputs import OutputExists

    build(tiny_config()).eval().save_pretrained(tmp_path / "fp32")
    before = {p.name: p.read_bytes() for p in (tmp_path / "fp32").iterdir() if p.is_file()}
    with pytest.raises(OutputExists, match="fp32 is the model this command reads: it never replaces its own input"):
        quantize(tmp_path / "fp32", tmp_path / "fp32", overwrite=True)
    with pytest.raises(OutputExists, match="the model this command reads"):
        prune(tmp_path / "fp32", tmp_path / "." / "fp32", 0.5, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "fp32").iterdir() if p.is_file()} == before
