"""Crash-safe folder saving: write a temp folder, swap it in with renames, clean what a crash left behind.

A saved folder (a model, a checkpoint) is replaced in two renames, `folder -> .folder.old` then
`temp -> folder`. rename(2) is atomic on POSIX, so at every instant either `folder` or, between the two
renames, `.folder.old` holds a complete copy; readers fall back to `.folder.old` when `folder` is missing
(`existing_copy`). Temp and half-deleted folders carry names that `remove_leftovers` recognises, so a
kill at any point leaves nothing that blocks or confuses a later save. JSON files (metrics, trainer
state) are written strict (NaN as null) through a temp file.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ASIDE_SUFFIX = ".old"
TRASH_MARK = ".trash-"


def aside_path(folder: Path) -> Path:
    """Where the previous copy of `folder` waits while the new one is renamed in: `.NAME.old`."""
    return folder.with_name(f".{folder.name}{ASIDE_SUFFIX}")


def existing_copy(folder: Path, is_complete: Callable[[Path], bool]) -> Path | None:
    """`folder` if complete, else its aside copy if complete (a save was killed between its renames), else None."""
    for candidate in (folder, aside_path(folder)):
        if candidate.is_dir() and is_complete(candidate):
            return candidate
    return None


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk, so a rename never publishes unwritten data."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [folder]:
        if path.is_symlink():
            continue
        _fsync(path)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # e.g. a folder on a platform that cannot open folders: nothing more to do
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on folders
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where /proc allows (os.umask can only swap it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def match_umask(folder: Path) -> None:
    """Give `folder` and everything in it a normal file's and folder's mode under the umask (0644/0755 with 022).

    mkdtemp makes its folder 0700 and some writers make their files 0600 (a temp file renamed into place):
    a saved model or checkpoint is meant to be shared like any file the user writes.
    """
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def swap_in(new: Path, folder: Path) -> None:
    """Put the complete folder `new` at `folder`, keeping the previous copy loadable until the new one is there."""
    aside = aside_path(folder)
    if folder.exists():
        # `folder` is complete, so an aside copy is a leftover of an earlier crash
        discard(aside)
        os.replace(folder, aside)
    os.replace(new, folder)
    _fsync(folder.parent)
    discard(aside)


def discard(path: Path) -> None:
    """Delete a folder so that its name disappears at once (renamed to a trash name first, then removed)."""
    if path.is_symlink():
        path.unlink()
        return
    if not path.exists():
        return
    trash = path.with_name(f".{path.name.lstrip('.')}{TRASH_MARK}{secrets.token_hex(4)}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(parent: Path, name_pattern: str) -> list[Path]:
    """Delete the folders in `parent` whose names fully match `name_pattern` (temp and trash folders)."""
    removed = []
    if not parent.is_dir():
        return removed
    pattern = re.compile(name_pattern)
    for path in parent.iterdir():
        if pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def leftover_pattern(name: str) -> str:
    """Names of the temp and trash folders that a killed `replacing_folder` of folder `name` can leave."""
    # ".NAME.XXXXXXXX" is the temp name model folders had before the "tmp-" prefix
    return rf"\.{re.escape(name)}\.(tmp-)?[a-z0-9_]{{8}}|\.{re.escape(name)}(\.old)?\.trash-[0-9a-f]{{8}}"


@contextlib.contextmanager
def replacing_folder(folder: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `folder`; when the block succeeds it replaces `folder` crash-safely.

    Call it holding `folder_lock(folder.parent)`, so two writers never clean each other's temp folders.
    What earlier killed writers left is removed first; the new copy gets the umask's permissions and is
    flushed to disk before it is renamed in.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder.parent, leftover_pattern(folder.name))
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        match_umask(tmp)
        fsync_tree(tmp)
        swap_in(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (a directory), so two savers never clean each other's temp folders.

    flock is released by the kernel when the process dies, so a killed save never leaves it held.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: saves are not serialised
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, so json.dumps writes strict JSON (null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` as UTF-8 to a temp file in the same folder, then os.replace it onto `path`.

    A reader (or a crash) sees the old file or the new one, never a part; characters UTF-8 cannot hold
    (lone surrogates from a broken decoder) are written as backslash escapes instead of failing the write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8", errors="backslashreplace")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # unique per writer
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, value: Any, indent: int | None = None) -> None:
    """Write strict JSON (NaN and infinities as null) atomically, so a reader never sees half a file."""
    write_text_atomic(path, json.dumps(json_safe(value), indent=indent, allow_nan=False))
