"""Crash-safe folder saving: write a temp folder, swap it in with renames, clean what a crash left behind.

A saved folder (a model, a checkpoint) is replaced in two renames, `folder -> .folder.old` then
`temp -> folder`. rename(2) is atomic on POSIX, so at every instant either `folder` or, between the two
renames, `.folder.old` holds a complete copy; readers fall back to `.folder.old` when `folder` is missing
(`existing_copy`). A user's folder may carry any name, so cleanup never goes by name alone: every temp
folder, and every trash folder a deletion goes through, holds a marker file (`TEMP_MARKER`, naming the
folder itself) from the instant after it is created until everything else in it is gone, and
`remove_leftovers` deletes only marked (or empty) folders. The aside `.folder.old` is deleted only when
the caller recognises it as its own; otherwise the save refuses and names it. So a kill at any point
leaves nothing that blocks or confuses a later save, and no save deletes what mmgpt did not write.
JSON files (metrics, trainer state) are written strict (NaN as null) through a temp file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ASIDE_SUFFIX = ".old"
TRASH_MARK = ".trash-"
# the file that marks a temp or trash folder as mmgpt's, holding {"format": TEMP_FORMAT, "name": <its folder>}
TEMP_MARKER = ".mmgpt-temp"
TEMP_FORMAT = "mmgpt-temp"
# the random part of mkdtemp's names, which temp and trash folders end in
RANDOM_SUFFIX = "[a-z0-9_]{8}"


class FolderInTheWay(FileExistsError):
    """A folder that a save would have to delete, but that mmgpt cannot tell it wrote; the message names it."""


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


def _mark(folder: Path) -> None:
    text = json.dumps({"format": TEMP_FORMAT, "name": folder.name,
                       "note": "written by mmgpt while saving; deleted with this folder if a save was killed"})
    # one write; a kill before it leaves an empty marker, which _holds_nothing_to_lose accepts
    fd = os.open(folder / TEMP_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def is_marked(folder: Path) -> bool:
    """Whether `folder` is a temp or trash folder mmgpt made: its marker names this very folder."""
    try:
        marker = json.loads((folder / TEMP_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    # the name check: a published folder that kept its marker (or a copy of one) is not a leftover
    return isinstance(marker, dict) and marker.get("format") == TEMP_FORMAT and marker.get("name") == folder.name


def make_temp_folder(parent: Path, prefix: str) -> Path:
    """A new marked folder `parent/PREFIX` + 8 random characters (mkdtemp), which remove_leftovers may delete."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    _mark(folder)
    return folder


def make_marked_folder(folder: Path) -> Path:
    """Create `folder` (a temp folder with a fixed name) marked as mmgpt's; FolderInTheWay if something is there."""
    try:
        folder.mkdir()
    except FileExistsError:
        raise FolderInTheWay(f"{folder} is in the way: mmgpt writes a temp folder there but did not write this "
                             "one (it has no mmgpt marker), so it never deletes it; move it elsewhere and try again"
                             ) from None
    _mark(folder)
    return folder


def _unmark(folder: Path) -> None:
    (folder / TEMP_MARKER).unlink(missing_ok=True)


def _remove_marked(folder: Path) -> None:
    # everything but the marker first, so a kill part-way leaves a folder that is still recognisably a leftover
    for path in folder.iterdir():
        if path.name == TEMP_MARKER:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    _unmark(folder)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _holds_nothing_to_lose(path: Path) -> bool:
    # empty, or only a marker that a kill cut short: mmgpt made that file, and nothing else is in the folder
    return path.is_dir() and not path.is_symlink() and all(p.name == TEMP_MARKER for p in path.iterdir())


def check_aside(folder: Path, is_ours: Callable[[Path], bool]) -> None:
    """Raise FolderInTheWay if `.NAME.old` beside `folder` holds something that `is_ours` does not recognise.

    A save puts the previous `folder` there and deletes whatever it finds there; anything but an empty folder or
    one `is_ours` recognises (a copy an earlier killed save left) could be the user's.
    """
    aside = aside_path(folder)
    if not (aside.exists() or aside.is_symlink()) or _holds_nothing_to_lose(aside) or is_ours(aside):
        return
    raise FolderInTheWay(f"{aside} is in the way: mmgpt puts the previous {folder.name} there while it saves, but did "
                         f"not write this folder, so it never deletes it; move it elsewhere and save again")


def swap_in(new: Path, folder: Path, is_ours: Callable[[Path], bool]) -> None:
    """Put the complete folder `new` at `folder`, keeping the previous copy loadable until the new one is there.

    `is_ours(path)` recognises a copy of `folder` that an earlier killed save left aside (see check_aside).
    """
    aside = aside_path(folder)
    check_aside(folder, is_ours)
    if folder.exists():
        # `folder` is complete, so an aside copy is a leftover of an earlier crash
        discard(aside)
        os.replace(folder, aside)
    os.replace(new, folder)
    _fsync(folder.parent)
    _unmark(folder)  # a kill before this leaves a marker naming the temp folder: ignored, and removed by the next save
    discard(aside)


def discard(path: Path) -> None:
    """Delete a folder so that its name disappears at once (moved into a marked trash folder first, then removed)."""
    if path.is_symlink():
        path.unlink()
        return
    if not path.exists():
        return
    trash = make_temp_folder(path.parent, f".{path.name.lstrip('.')}{TRASH_MARK}")
    os.replace(path, trash / path.name)
    _remove_marked(trash)


def remove_leftovers(parent: Path, name_pattern: str) -> list[Path]:
    """Delete the folders in `parent` whose names fully match `name_pattern` and that mmgpt marked (or are empty)."""
    removed = []
    if not parent.is_dir():
        return removed
    pattern = re.compile(name_pattern)
    for path in parent.iterdir():
        if not pattern.fullmatch(path.name) or not path.is_dir() or path.is_symlink():
            continue
        if is_marked(path) or _holds_nothing_to_lose(path):
            _remove_marked(path)
        else:
            logger.debug("kept %s: named like a leftover, but mmgpt did not mark it as one", path)
            continue
        removed.append(path)
    return removed


def leftover_pattern(name: str) -> str:
    """Names of the temp and trash folders that a killed `replacing_folder` of folder `name` can leave."""
    # ".NAME.XXXXXXXX" is the temp name model folders had before the "tmp-" prefix
    return (rf"\.{re.escape(name)}\.(tmp-)?{RANDOM_SUFFIX}"
            rf"|\.{re.escape(name)}(\.old)?{re.escape(TRASH_MARK)}{RANDOM_SUFFIX}")


@contextlib.contextmanager
def replacing_folder(folder: Path, is_ours: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a temp folder beside `folder` (only its marker in it); when the block succeeds it replaces `folder`.

    Call it holding `folder_lock(folder.parent)`, so two writers never clean each other's temp folders.
    `is_ours(path)` recognises an earlier copy of `folder` (see check_aside): a folder at the aside name that
    it does not recognise is refused before anything is written. What earlier killed writers left is removed
    first; the new copy gets the umask's permissions and is flushed to disk before it is renamed in.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    check_aside(folder, is_ours)
    remove_leftovers(folder.parent, leftover_pattern(folder.name))
    tmp = make_temp_folder(folder.parent, f".{folder.name}.tmp-")
    try:
        yield tmp
        match_umask(tmp)
        fsync_tree(tmp)
        swap_in(tmp, folder, is_ours)
    finally:
        if tmp.is_dir():
            _remove_marked(tmp)


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


def write_json(path: str | Path, value: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None,
               newline: bool = False) -> None:
    """Write strict JSON (NaN and infinities as null) atomically, so a reader never sees half a file.

    mmgpt writes every JSON file through here. `default` turns what JSON lacks (a Path, a tensor) into a JSON
    value; `newline` ends the file with one.
    """
    text = json.dumps(json_safe(value), indent=indent, allow_nan=False, default=default)
    write_text_atomic(path, text + "\n" if newline else text)
