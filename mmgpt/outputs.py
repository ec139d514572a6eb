"""Output folders: mmgpt replaces only what it wrote, and only when asked to.

Every folder a command writes (a model, an export, a run, a fusion comparison, an explanation) carries a
marker file, `.mmgpt-output.json` = {"format": "mmgpt-KIND", ...}, that no folder of the user's holds by
accident. `check_output_folder` is the one guard every writer calls: a missing or empty folder is written;
an earlier mmgpt folder of the same kind is replaced only with `overwrite` (continued with `reuse`); a file,
or a non-empty folder without the marker, is refused with its name, even with `overwrite`, since deleting
a folder mmgpt did not write could lose anything. Folders written before the marker existed are still
recognised by the files mmgpt wrote into them (`LEGACY_KINDS`). `writing_output_folder` writes a whole
folder through mmgpt.saving's temp-folder-then-rename, so a kill at any instant leaves the previous copy.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmgpt.saving import aside_path, folder_lock, replacing_folder, write_json

MARKER_NAME = ".mmgpt-output.json"
FORMAT_PREFIX = "mmgpt-"
MARKER_VERSION = 1
# the kinds of folder mmgpt writes (as their marker's "format" names them after FORMAT_PREFIX) and what they are
KINDS = {"model": "model folder", "onnx": "ONNX export", "run": "run folder", "compare-fusions": "fusion comparison",
         "explain": "explanation folder"}


class OutputExists(FileExistsError):
    """An output path holds something that this write may not replace; the message names it and the way out."""


def _json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _is_legacy_model(folder: Path) -> bool:
    # config.json wraps the model config under "model" (a transformers config.json has no such object)
    config = _json_object(folder / "config.json")
    return (config is not None and isinstance(config.get("model"), dict)
            and (folder / "model.safetensors").is_file())


def _is_legacy_export(folder: Path) -> bool:
    manifest = _json_object(folder / "manifest.json")
    return manifest is not None and manifest.get("format") == f"{FORMAT_PREFIX}onnx"


# keys every config.yaml a run has written holds (train.py writes the whole resolved config)
RESOLVED_RUN_KEYS = frozenset({"output_dir", "seed", "batch_size", "max_steps", "model", "data", "optim"})
RESOLVED_MODEL_KEYS = frozenset({"text_encoder", "image_encoder", "fusion", "projector", "generator", "tokenizer"})


def _is_legacy_run(folder: Path) -> bool:
    # a checkpoint's trainer_state.json records the run id; a run killed before its first checkpoint has only its
    # config.yaml, which names its own output_dir
    if any((folder / "checkpoints").glob("*step_*/trainer_state.json")):
        return True
    if output_kind(folder / "model") == "model":
        return True
    try:
        import yaml

        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    # the config a run writes is resolved: every section, no `base:`. A user's own config kept in the folder (with
    # output_dir pointing there) names only what it changes, so the folder stays the user's
    return (isinstance(config, dict) and "base" not in config and RESOLVED_RUN_KEYS <= set(config)
            and isinstance(config.get("model"), dict) and RESOLVED_MODEL_KEYS <= set(config["model"]))


def _is_legacy_comparison(folder: Path) -> bool:
    report = _json_object(folder / "report.json")
    if report is not None and {"fusions", "summary", "runs"} <= set(report):
        return True
    runs = [p for p in (folder / "runs").glob("*-seed*") if p.is_dir()]
    return bool(runs) and all(_is_legacy_run(p) for p in runs)


def _is_legacy_explanation(folder: Path) -> bool:
    # index.html as mmgpt.explain writes it, and nothing but its token maps beside it
    try:
        page = (folder / "index.html").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return ("<h1>Explanation</h1><div class='explanation'>" in page
            and all(p.name == "index.html" or re.fullmatch(r"token_\d{2,}_\w*\.png", p.name) for p in folder.iterdir()))


# how folders written before the marker are recognised: only by files mmgpt itself writes
LEGACY_KINDS: dict[str, Callable[[Path], bool]] = {
    "model": _is_legacy_model, "onnx": _is_legacy_export, "run": _is_legacy_run,
    "compare-fusions": _is_legacy_comparison, "explain": _is_legacy_explanation,
}


def output_kind(folder: str | Path) -> str | None:
    """The kind of mmgpt output `folder` is ('model', 'onnx', 'run', ...), or None if mmgpt did not write it."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    marker = _json_object(folder / MARKER_NAME)
    if marker is not None:
        found = marker.get("format")
        if isinstance(found, str) and found.startswith(FORMAT_PREFIX) and found[len(FORMAT_PREFIX):] in KINDS:
            return found[len(FORMAT_PREFIX):]
    return next((kind for kind, is_kind in LEGACY_KINDS.items() if is_kind(folder)), None)


def check_output_folder(folder: str | Path, kind: str, overwrite: bool = False, reuse: bool = False) -> None:
    """Raise OutputExists unless `folder` may be written as a `kind` folder (see the module docstring).

    `overwrite`: an earlier mmgpt folder of this kind may be replaced; `reuse`: it may be continued in place
    (a run, a comparison). Neither ever lets a file or a folder mmgpt did not write be replaced.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; available: {', '.join(KINDS)}")
    folder = Path(folder)
    if folder.is_symlink() and not folder.is_dir() or folder.exists() and not folder.is_dir():
        raise OutputExists(f"{folder} is a file, not a folder: mmgpt writes a folder there and never replaces a file "
                           "(even with --overwrite); choose another path, or move the file away")
    if not folder.is_dir() or not any(folder.iterdir()):
        aside = aside_path(folder)
        # a save killed between its two renames left the earlier output aside, where readers still find it
        if aside.is_dir() and output_kind(aside) is not None and not (overwrite or reuse):
            raise OutputExists(f"{aside} holds the earlier output of {folder} (a save was stopped before it "
                               "finished, and readers still load it from there): replace it with --overwrite, "
                               "or choose another path")
        return
    found = output_kind(folder)
    if found is None:
        raise OutputExists(f"{folder} is a folder that mmgpt did not write (no {MARKER_NAME}) and it is not empty: "
                           "mmgpt never deletes it, even with --overwrite; choose another path, or empty it yourself")
    if found != kind:
        raise OutputExists(f"{folder} is an mmgpt {KINDS[found]}, not an mmgpt {KINDS[kind]}, and is never replaced "
                           "by one (even with --overwrite): choose another path")
    if not (overwrite or reuse):
        raise OutputExists(f"{folder} is an earlier mmgpt {KINDS[kind]}: replace it with --overwrite, "
                           "or choose another path")


def check_not_source(out: str | Path, source: str | Path) -> None:
    """Raise OutputExists when `out` is the folder a command reads (`source`): replacing it would lose the input."""
    if Path(out).expanduser().resolve() == Path(source).expanduser().resolve():
        raise OutputExists(f"{out} is the model this command reads: it never replaces its own input (even with "
                           "--overwrite); write the result to another folder")


def check_output_file(path: str | Path, overwrite: bool = False) -> None:
    """Raise OutputExists unless the file `path` may be written: absent, or an existing file with `overwrite`.

    A single file the user named is replaced (atomically) when they pass --overwrite; a folder in its place is
    never touched.
    """
    path = Path(path)
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputExists(f"{path}: {blocking} is a file, not a folder; choose another path")
    if path.is_dir():
        raise OutputExists(f"{path} is a folder, not a file: choose a file path (mmgpt never replaces a folder with "
                           "a file, even with --overwrite)")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExists(f"{path} already exists: replace it with --overwrite, or choose another path")


def add_overwrite_arg(parser: argparse.ArgumentParser, kind: str, option: str = "OUT") -> None:
    """Add --overwrite to a command that writes a `kind` folder, its help saying what it may and may not replace."""
    parser.add_argument(
        "--overwrite", action="store_true",
        help=f"replace {option} if it is an earlier mmgpt {KINDS[kind]} (swapped in only once the new one is "
             f"complete). Without it an existing non-empty {option} is refused. A file, or a non-empty folder mmgpt "
             f"did not write (no {MARKER_NAME}), is never replaced, even with --overwrite".replace("%", "%%"))


def write_marker(folder: Path, kind: str) -> None:
    """Mark `folder` as an mmgpt `kind` folder, so a later write recognises it as replaceable."""
    write_json(folder / MARKER_NAME, {"format": f"{FORMAT_PREFIX}{kind}", "marker_version": MARKER_VERSION,
                                      "note": "written by mmgpt; mmgpt replaces this folder only when asked to "
                                              "(--overwrite)"}, indent=2)


def prepare_output_folder(folder: str | Path, kind: str, overwrite: bool = False, reuse: bool = False) -> Path:
    """Check `folder` (check_output_folder), create it and mark it as a `kind` folder written in place -> it."""
    folder = Path(folder)
    check_output_folder(folder, kind, overwrite=overwrite, reuse=reuse)
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind)
    return folder


@contextlib.contextmanager
def writing_output_folder(folder: str | Path, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder; when the block succeeds it replaces `folder` (checked, marked, crash-safe)."""
    folder = Path(folder).expanduser()
    check_output_folder(folder, kind, overwrite=overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder.parent):
        check_output_folder(folder, kind, overwrite=overwrite)  # again under the lock: another writer may have been
        with replacing_folder(folder, is_ours=lambda aside: output_kind(aside) == kind) as tmp:
            yield tmp
            write_marker(tmp, kind)
