"""A run's folder: checkpoints (complete or absent, rotated per run), resuming, stopping on a signal.

Every checkpoint's trainer_state.json (a TrainState) records the id of the run that wrote it; rotation
only ever removes checkpoints of the current run, and a fresh run refuses a folder that holds another one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgpt.outputs import check_output_folder, output_kind
from mmgpt.saving import (
    ASIDE_SUFFIX,
    RANDOM_SUFFIX,
    TRASH_MARK,
    aside_path,
    check_aside,
    discard,
    fsync_tree,
    leftover_pattern,
    make_marked_folder,
    match_umask,
    remove_leftovers,
    swap_in,
    write_json,
)

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
# what save_checkpoint's temp and trash folders are called; a kill can leave any of them behind
CHECKPOINT_LEFTOVERS = rf"\.tmp_step_\d+|\.step_\d+(\.old)?{re.escape(TRASH_MARK)}{RANDOM_SUFFIX}"
# what a run writes into output_dir besides config.yaml; --overwrite deletes these ("mmgpt" = TensorBoard logs)
RUN_OUTPUTS = ("checkpoints", "model", "tokenizer", "mmgpt", "metrics.json", "history.json", "loss.png")


class OutputDirInUse(ValueError):
    """A fresh run was started in an output_dir that already holds another run's checkpoints or model."""


def new_run_id() -> str:
    """A fresh id for a training run; every checkpoint records it, and a resumed run keeps it."""
    return uuid.uuid4().hex[:12]


@dataclass
class TrainState:
    """Where a run stands: saved as trainer_state.json (these keys, in this order) with every checkpoint."""

    step: int = 0
    epoch: int = 0
    # batches of `epoch` already consumed, so a resumed run skips exactly those
    batches_in_epoch: int = 0
    # {"train": [[step, loss], ...], "eval": [[step, loss], ...]}
    history: dict[str, list] = field(default_factory=lambda: {"train": [], "eval": []})
    bad_images_runtime: int = 0
    # only the main process writes checkpoints, so only its id is ever recorded
    run_id: str | None = field(default_factory=lambda: new_run_id())
    default_job: bool = False
    nonfinite_steps: int = 0
    # images tried during training (bad ones included), the base of the running data.max_bad_fraction check
    images_read_runtime: int = 0
    # with a streamed dataset: each process's position in its data (mmgpt.data.streaming), else None
    data_state: list | None = None
    # the CPU threads mmgpt chose for this run (cpu_threads: 0) at its first step, kept by a resumed run because
    # a thread count can change how a CPU rounds; 0 = not chosen
    cpu_threads: int = 0
    # the training loss and answer tokens summed (over processes) since the last log line, and its steps: a resumed
    # run's next log line then averages the same steps as an uninterrupted run's
    loss_window: list = field(default_factory=lambda: [0.0, 0.0, 0])

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as trainer_state.json."""
        return dataclasses.asdict(self)

    @classmethod
    def resume(cls, checkpoint: Path, default_job: bool) -> TrainState:
        """The state saved in `checkpoint`; `default_job` says whether the resumed run's config is the main job.

        ValueError when its step, epoch or batch position is not a count.
        """
        saved = json.loads((checkpoint / STATE_NAME).read_text())
        # checkpoints from before run ids have none: the resumed run stays id-less, and rotates them along
        saved.setdefault("run_id", None)
        # a run that was the main job only in part (other settings before the resume) is not the main job
        saved["default_job"] = saved.get("default_job", False) and default_job
        names = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{key: value for key, value in saved.items() if key in names})
        counts = {"step": state.step, "epoch": state.epoch, "batches_in_epoch": state.batches_in_epoch}
        wrong = [k for k, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if wrong:
            raise ValueError(f"{STATE_NAME} has {', '.join(f'{k}={counts[k]!r}' for k in wrong)}, not counts")
        return state


# a repeated stop signal sooner than this after the first is the same request
REPEAT_GRACE_S = 2.0


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (then checkpoints and exits)."""

    def __init__(self) -> None:
        self.requested = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            # Ctrl-C reaches each rank twice, from the terminal and forwarded by a multi-process launcher,
            # within moments: only a later signal means "now"
            if time.monotonic() - self._first < REPEAT_GRACE_S:
                return
            raise KeyboardInterrupt
        logger.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)
        self.requested = True
        self._first = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _is_checkpoint(folder: Path) -> bool:
    return (folder / STATE_NAME).is_file()


def _is_model_output(folder: Path) -> bool:
    return output_kind(folder) == "model"


def _only_checkpoints(folder: Path) -> bool:
    """Whether `folder` holds nothing but checkpoints of a run and what writing them leaves behind."""
    return all(p.name.startswith(".") or re.fullmatch(r"step_\d+", p.name) and (p / STATE_NAME).is_file()
               for p in folder.iterdir())


def _step_of(path: Path) -> int:
    return int(re.search(r"step_(\d+)", path.name).group(1))


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of output_dir, oldest first (any run's; see run_id_of)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = {}
    for path in root.iterdir():
        match = re.fullmatch(r"\.?step_(\d+)(\.old)?", path.name)
        if match and bool(match.group(2)) == path.name.startswith(".") and (path / STATE_NAME).is_file():
            # a `.step_N.old` counts only while `step_N` is missing: a replacement was killed between its renames
            if not match.group(2) or int(match.group(1)) not in found:
                found[int(match.group(1))] = path
    return [found[step] for step in sorted(found)]


def run_id_of(checkpoint: Path) -> str | None:
    """The id of the run that wrote `checkpoint` (None for checkpoints written before runs had ids)."""
    try:
        return json.loads((checkpoint / STATE_NAME).read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """'latest' (or 'auto') -> newest checkpoint of output_dir; a path -> that checkpoint."""
    if resume in ("latest", "auto"):
        found = checkpoint_dirs(output_dir)
        if not found and resume == "latest":
            raise FileNotFoundError(f"--resume latest: no checkpoint in {Path(output_dir) / 'checkpoints'}")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no {STATE_NAME})")
    return path


def previous_run(output_dir: str | Path) -> list[str]:
    """What an earlier run left in output_dir that a fresh run would mix with: its checkpoints and final model."""
    from mmgpt.model_folder import is_model_folder, saved_model_folder

    output_dir = Path(output_dir)
    found = []
    checkpoints = checkpoint_dirs(output_dir)
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint(s), the newest {checkpoints[-1]}")
    model = saved_model_folder(output_dir / "model")
    if is_model_folder(model):
        found.append(f"a finished model in {model}")
    return found


def check_output_dir(output_dir: str | Path, resuming: bool, overwrite: bool) -> None:
    """Refuse a fresh run in an output_dir that holds another run, unless it resumes that run or overwrites it.

    A file, or a non-empty folder that is not an mmgpt run folder, is refused even then (mmgpt.outputs), so
    --overwrite (clear_run) only ever deletes what a run wrote.
    """
    check_output_folder(output_dir, "run", reuse=True)
    check_aside(Path(output_dir) / "model", _is_model_output)  # refused now, not when the model is saved at the end
    if resuming or overwrite:
        return
    found = previous_run(output_dir)
    if found:
        resume = "continue that run with --resume latest, " if checkpoint_dirs(output_dir) else ""
        raise OutputDirInUse(
            f"output_dir {output_dir} already holds a run ({'; '.join(found)}), and a fresh run there would mix "
            f"with it: {resume}train into a new folder (e.g. output_dir=runs/new), or start over with --overwrite "
            "(deletes its checkpoints, model and logs first)"
        )


def clear_run(output_dir: str | Path) -> list[Path]:
    """Delete what an earlier run wrote into output_dir (RUN_OUTPUTS and the model's leftovers); returns what went."""
    output_dir = Path(output_dir)
    check_aside(output_dir / "model", _is_model_output)
    # the folders are deleted whole: each must be what a run writes there, whatever else the folder holds
    for name, is_ours in (("model", _is_model_output), ("checkpoints", _only_checkpoints)):
        path = output_dir / name
        if path.is_dir() and any(path.iterdir()) and not is_ours(path):
            raise FileExistsError(f"{path} is not what a run writes there (mmgpt did not write it): --overwrite "
                                  "never deletes it; move it away, or train into another output_dir")
    removed = []
    for path in [output_dir / name for name in RUN_OUTPUTS] + [aside_path(output_dir / "model")]:
        if path.is_dir() and not path.is_symlink():
            discard(path)
            removed.append(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(path)
    folders = [name for name in RUN_OUTPUTS if "." not in name]
    removed += remove_leftovers(output_dir, "|".join(leftover_pattern(name) for name in folders))
    return removed


def tied_aliases(model: Any) -> set[str]:
    """State-dict names that are a second name of one Parameter (a tied lm_head): the module ties them on load."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}


def _drop_tied_aliases(accelerator: Any) -> Callable[[list, list, str], None]:
    """A save_state pre-hook that leaves each model's tied aliases out of its weights.

    safetensors cannot hold one storage twice, so accelerate would drop them anyway, with a warning on every
    checkpoint; loading re-ties them, because the alias is the same Parameter in the model.
    """
    def hook(models: list, weights: list, output_dir: str) -> None:
        for model, state in zip(models, weights):
            for name in tied_aliases(accelerator.unwrap_model(model)):
                state.pop(name, None)

    return hook


def save_checkpoint(accelerator: Any, output_dir: str | Path, step: int, state: dict, keep: int,
                    write_extra: Callable[[Path, bool], None] | None = None) -> Path:
    """accelerator.save_state into a temp folder, then renamed into place: a checkpoint is complete or absent.

    `write_extra(folder, write)` writes further files (the weight average) into it; every rank calls it (a
    sharded average is gathered first), with `write` True on the main process.

    Rotation keeps the newest `keep` checkpoints of this run (state["run_id"]) and never touches another
    run's. A kill at any instant leaves the earlier checkpoints intact; the next save removes its leftovers.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root, CHECKPOINT_LEFTOVERS)
        for aside in root.glob(f".step_*{ASIDE_SUFFIX}"):
            if _is_checkpoint(root / aside.name[1 : -len(ASIDE_SUFFIX)]) and _is_checkpoint(aside):
                discard(aside)
        make_marked_folder(tmp)
    accelerator.wait_for_everyone()
    hook = accelerator.register_save_state_pre_hook(_drop_tied_aliases(accelerator))
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    finally:
        hook.remove()
    if write_extra is not None:
        write_extra(tmp, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # the state file last: it is what marks a checkpoint complete
        write_json(tmp / STATE_NAME, state)
        match_umask(tmp)  # safetensors' files arrive 0600
        fsync_tree(tmp)
        swap_in(tmp, final, _is_checkpoint)
        # the newest `keep` of this run up to this step; a later step of this run (a resume from an older
        # checkpoint) is left alone
        older = [c for c in checkpoint_dirs(output_dir) if _step_of(c) < step and run_id_of(c) == state["run_id"]]
        for old in older[: max(len(older) - (keep - 1), 0)]:
            discard(old)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final
