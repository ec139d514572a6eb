"""Checked, preprocessed images of a dataset kept on disk between runs, in ``$MMGPT_CACHE/images``.

`check_images` decodes and transforms every image once per run; for the built-in sets that is most of a
run's start-up. An entry holds the pixels of one dataset for one image transform as one safetensors file
(loaded without pickle), named by a hash of everything the pixels depend on: each image file's path and
content, the transform as the model saves it, the pixel limit, the source of the decoding code and the
versions of the libraries that decode and transform. A changed image is a different entry (a miss), never
stale pixels. Each file carries a checksum of its pixels and records; a truncated, altered or foreign file
is rebuilt with a warning, never trusted. Files are written in a background thread, to a temporary name renamed
into place, so processes that build the same entry at once each leave a complete file. The least recently used entries
are deleted once all of them exceed `MAX_BYTES`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import logging
import os
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when the file layout or what a key covers changes
MAX_BYTES = 4 << 30  # the built-in sets at the default 64 px take about 470 MB
_SUFFIX = ".safetensors"
_STALE_TMP_S = 3600.0
_LIBRARIES = ("PIL", "numpy", "torch", "torchvision", "timm", "transformers")
# (pixels per source, None for a bad one; {source index: reason})
Checked = tuple[list[torch.Tensor | None], dict[int, str]]


_pending: list[tuple[Path, threading.Thread]] = []  # entries this process is writing
_pending_lock = threading.Lock()


def wait_for_writes(path: Path | None = None) -> None:
    """Wait until this process's writes of entry `path` (of every entry: None) are on disk."""
    with _pending_lock:
        writers = [t for p, t in _pending if path is None or p == path]
    for writer in writers:
        writer.join()
    with _pending_lock:
        _pending[:] = [(p, t) for p, t in _pending if t.is_alive()]


def default_root() -> Path:
    """$MMGPT_CACHE/images (~/.cache/mmgpt/images without it)."""
    from mmgpt.data.records import default_cache_root

    return default_cache_root() / "images"


def _digest_files(folder: Path) -> str:
    """sha256 over the names and bytes of the files under `folder`."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _source_file_digest(obj: Any) -> str:
    """sha256 of the file that defines `obj` ('' when it has none)."""
    try:
        return hashlib.sha256(Path(inspect.getfile(obj)).read_bytes()).hexdigest()
    except (TypeError, OSError):
        return ""


def processor_identity(processor: Any) -> str:
    """Everything other than the images that decides the pixels `processor.image_tensor` returns, as text."""
    import mmgpt.images

    transform = processor.image_transform
    with tempfile.TemporaryDirectory() as folder:
        transform.save(Path(folder))
        saved = _digest_files(Path(folder))
    versions = {name: _version(name) for name in _LIBRARIES}
    return json.dumps({"format": FORMAT, "transform": saved, "transform_class": type(transform).__qualname__,
                       "transform_code": _source_file_digest(type(transform)),
                       "decode_code": _source_file_digest(mmgpt.images),
                       "processor_code": _source_file_digest(type(processor)),
                       "max_pixels": processor.max_image_pixels, "tiling": list(getattr(processor, "tiling", (0, 0))),
                       "versions": versions}, sort_keys=True)


def _version(module: str) -> str:
    """The module's __version__ ('' when it is not installed)."""
    try:
        return str(getattr(importlib.import_module(module), "__version__", ""))
    except ImportError:
        return ""


def _content_digest(path: str) -> bytes:
    """blake2b of a file's bytes, or a marker naming why it cannot be read (the check reports it as bad)."""
    h = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        return f"unreadable {type(e).__name__} {e.errno}".encode()
    return h.digest()


def _checksum(records: str, pixels: torch.Tensor) -> str:
    crc = zlib.crc32(records.encode())
    if pixels.numel():
        crc = zlib.crc32(pixels.contiguous().view(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


class PixelCache:
    """Entries of checked, preprocessed images under `root`, for the processor whose identity is `identity`."""

    def __init__(self, identity: str, root: str | Path | None = None, max_bytes: int = MAX_BYTES) -> None:
        self.identity = identity
        self.root = Path(root) if root is not None else default_root()
        self.max_bytes = max_bytes

    @classmethod
    def for_processor(cls, processor: Any, root: str | Path | None = None) -> PixelCache:
        """The cache of what `processor.image_tensor` makes of image files."""
        return cls(processor_identity(processor), root)

    def key(self, sources: Sequence[Any]) -> str | None:
        """The entry name for these sources, in this order; None unless every source is a file path."""
        if not all(isinstance(s, (str, os.PathLike)) for s in sources):
            return None
        h = hashlib.sha256(self.identity.encode())
        for source in sources:
            path = os.fsdecode(source)
            h.update(path.encode("utf-8", "surrogateescape") + b"\0" + _content_digest(path) + b"\0")
        return h.hexdigest()

    def get_or_build(self, sources: Sequence[Any], build: Callable[[], Checked], name: str = "") -> Checked:
        """The checked pixels of `sources` from the cache, else from `build()` (then stored for the next run)."""
        start = time.perf_counter()
        key = self.key(sources)
        if key is None:
            return build()
        wait_for_writes(self.path(key))  # this process may be writing the entry right now
        found = self._read(key, len(sources))
        if found is not None:
            logger.info("%s: %d checked images from the image cache in %.1f s", name or "dataset", len(sources),
                        time.perf_counter() - start)
            return found
        pixels, bad = build()
        good = [p for p in pixels if p is not None]
        if not good or any(p.shape != good[0].shape or p.dtype != good[0].dtype for p in good):
            return pixels, bad  # nothing to keep, or sizes that do not stack
        stacked = torch.stack(good)
        # written beside the run's next steps, so a first run is not slower for keeping its images; the thread is
        # not a daemon, so the interpreter finishes the file before it exits
        writer = threading.Thread(target=self._write, args=(key, stacked, bad, len(sources)),
                                  name="mmgpt-pixel-cache-write")
        with _pending_lock:  # started before it is listed: a waiting thread can always join it
            writer.start()
            _pending.append((self.path(key), writer))
        # rows of one tensor, as a read from the cache returns them, instead of a second copy of every image
        rows = iter(stacked.unbind(0))
        return [None if p is None else next(rows) for p in pixels], bad

    def path(self, key: str) -> Path:
        """The file of entry `key`."""
        return self.root / f"{key}{_SUFFIX}"

    def _read(self, key: str, count: int) -> Checked | None:
        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                pixels = f.get_tensor("pixels")
            records = metadata.get("records", "")
            if metadata.get("checksum") != _checksum(records, pixels):
                raise ValueError("checksum mismatch")
            info = json.loads(records)
            bad = {int(i): str(reason) for i, reason in info["bad"].items()}
            if info["key"] != key or info["count"] != count or pixels.shape[0] != count - len(bad):
                raise ValueError("records do not match the dataset")
        except FileNotFoundError:
            return None
        except (OSError, SafetensorError, ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("image cache %s is damaged (%s: %s); rebuilding it", path, type(e).__name__, e)
            return None
        # most recently used: pruned last. Another run's prune may have deleted it since it was read: the pixels
        # read are checked and sound, so they are used
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        rows = iter(pixels.unbind(0))
        return [None if i in bad else next(rows) for i in range(count)], bad

    def _write(self, key: str, stacked: torch.Tensor, bad: dict[int, str], count: int) -> None:
        records = json.dumps({"key": key, "count": count, "bad": {str(i): r for i, r in sorted(bad.items())}})
        metadata = {"records": records, "checksum": _checksum(records, stacked)}
        tmp = self.root / f".{key}.{uuid.uuid4().hex}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            save_file({"pixels": stacked.contiguous()}, str(tmp), metadata=metadata)
            os.replace(tmp, self.path(key))  # atomic: a reader sees the old file, the new one or none
        except OSError as e:
            logger.warning("could not write the image cache %s: %s", self.path(key), e)
            tmp.unlink(missing_ok=True)
            return
        self._prune(keep=self.path(key))

    def _prune(self, keep: Path) -> None:
        """Delete least recently used entries until all of them fit in max_bytes (never `keep`)."""
        for tmp in self.root.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:  # left by a writer that was killed
                    tmp.unlink()
        entries = []
        for path in self.root.glob(f"*{_SUFFIX}"):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size
                logger.info("image cache: deleted the least recently used %s", path)
