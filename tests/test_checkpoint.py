"""TrainState: what trainer_state.json holds, and resuming from checkpoints written before some of its keys."""
from __future__ import annotations

import json
from pathlib import Path

from mmgpt.training.checkpoint import STATE_NAME, TrainState


def test_train_state_is_written_with_the_keys_of_trainer_state_json() -> None:
    state = TrainState(step=3, epoch=1, batches_in_epoch=2, default_job=True)
    data = json.loads(json.dumps(state.to_dict()))
    assert list(data) == ["step", "epoch", "batches_in_epoch", "history", "bad_images_runtime", "run_id",
                          "default_job", "nonfinite_steps", "images_read_runtime", "data_state", "cpu_threads",
                          "loss_window"]
    assert data["history"] == {"train": [], "eval": []} and len(data["run_id"]) == 12
    assert TrainState(**data) == state
    assert TrainState().run_id != TrainState().run_id, "every fresh run gets its own id"


def test_a_checkpoint_from_before_run_ids_resumes(tmp_path: Path) -> None:
    old = {"step": 40, "epoch": 2, "batches_in_epoch": 5, "history": {"train": [[20, 1.5], [40, 1.2]], "eval": []},
           "bad_images_runtime": 1}
    (tmp_path / STATE_NAME).write_text(json.dumps(old))
    state = TrainState.resume(tmp_path, default_job=True)
    assert (state.step, state.epoch, state.batches_in_epoch, state.bad_images_runtime) == (40, 2, 5, 1)
    assert state.history == old["history"]
    # no id: the resumed run stays id-less; it was not recorded as the main job, so it is not one now
    assert state.run_id is None and state.default_job is False and state.nonfinite_steps == 0
    assert state.loss_window == [0.0, 0.0, 0]  # no unlogged steps: the next log line averages only new ones
    (tmp_path / STATE_NAME).write_text(json.dumps({**old, "run_id": "abc", "default_job": True}))
    assert TrainState.resume(tmp_path, default_job=True).default_job is True
    assert TrainState.resume(tmp_path, default_job=False).default_job is False
