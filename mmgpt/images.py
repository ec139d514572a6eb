"""Robust image loading: a path, bytes, PIL image or numpy array in, an RGB PIL image out.

Every failure is an ImageError whose message reads "problem: source (detail)", so callers can
skip bad images and count them by kind (the text before the first colon).
"""
from __future__ import annotations

import io
import logging
import math
import os
import struct
import threading
import warnings
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# mmgpt's own limit, checked against the header before anything is decoded; 40 MP is a 7300x5500 photo
# (120 MB as RGB), well above any encoder's input, far below what a crafted file can claim
DEFAULT_MAX_PIXELS = 40_000_000
ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray
_ALLOWED = "str, os.PathLike, bytes, PIL.Image.Image or numpy.ndarray"
_WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An image that cannot be used; str() is 'problem: source (detail)'."""

    def __init__(self, problem: str, source: str, detail: str = "") -> None:
        super().__init__(problem, source, detail)  # all in args, so the error survives pickling
        self.problem, self.source, self.detail = problem, source, detail

    def __str__(self) -> str:
        return f"{self.problem}: {self.source}" + (f" ({self.detail})" if self.detail else "")


class UnsupportedImageType(ImageError, TypeError):
    """The input is not one of the supported python types."""


def load_image(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load any supported image input as an RGB PIL image, or raise ImageError."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be an int >= 1, got {max_pixels!r}")
    if isinstance(image, (str, os.PathLike)):
        return _load_file(os.fsdecode(image), max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        if not len(image):
            raise ImageError("empty file", "<bytes>", "0 bytes")
        return _decode(io.BytesIO(bytes(image)), "<bytes>", max_pixels)
    if isinstance(image, Image.Image):
        _check_size(image.size, "<PIL.Image>", max_pixels)
        try:
            _load_strictly(image)  # a lazily opened image may still fail to decode
            image = ImageOps.exif_transpose(image)
        except Exception as e:
            raise ImageError("truncated or corrupt image", "<PIL.Image>", str(e)) from e
        return to_rgb(image, "<PIL.Image>")
    if isinstance(image, np.ndarray):
        return array_to_rgb(image)
    kind = type(image)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    raise UnsupportedImageType("unsupported image type", f"<{name}>", f"expected {_ALLOWED}")


def _load_file(path: str, max_pixels: int) -> Image.Image:
    if not os.path.exists(path):
        raise ImageError("file not found", path)
    if os.path.isdir(path):
        raise ImageError("is a directory, not an image file", path)
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise ImageError("empty file", path, "0 bytes")
        with open(path, "rb") as f:
            return _decode(f, path, max_pixels)
    except ImageError:
        raise
    except OSError as e:  # permissions, I/O errors: decoding errors are already ImageErrors
        raise ImageError("cannot read file", path, e.strerror or str(e)) from e


def _check_size(size: tuple[int, int], source: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError("too many pixels (possible decompression bomb)", source,
                         f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")


def _decode(fp: Any, source: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL warns between 1x and 2x its global limit; our own max_pixels decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                _check_size(im.size, source, max_pixels)  # header only: nothing decoded yet
                if im.format == "PNG":
                    _check_png_data(fp, source)
                _load_strictly(im)  # force a full decode so truncation is caught here, not in training
                im = ImageOps.exif_transpose(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # beyond 2x PIL's limit: PIL refuses before we see the size
        raise ImageError("too many pixels (possible decompression bomb)", source, str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageError("not an image", source, "unrecognised file format") from e
    except Exception as e:  # decoders of untrusted bytes raise OSError, SyntaxError, struct.error, ...
        raise ImageError("truncated or corrupt image", source, f"{type(e).__name__}: {e}") from e
    return to_rgb(im, source)


_strict_lock = threading.Lock()
_strict_loads = 0
_tolerance_saved = False


def _load_strictly(im: Image.Image) -> None:
    """im.load() with PIL's LOAD_TRUNCATED_IMAGES off, even if other code turned it on globally."""
    global _strict_loads, _tolerance_saved
    # PIL reads the flag from its module at decode time, so it can only be overridden there; the count
    # keeps it off until the last concurrent load ends, then puts back what the other code chose
    with _strict_lock:
        if _strict_loads == 0:
            _tolerance_saved = ImageFile.LOAD_TRUNCATED_IMAGES
            if _tolerance_saved:
                logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; mmgpt turns it off while it decodes, "
                               "so truncated images are still rejected")
        _strict_loads += 1
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        im.load()
    finally:
        with _strict_lock:
            _strict_loads -= 1
            if _strict_loads == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _tolerance_saved


# (x0, y0, dx, dy) of the seven Adam7 interlace passes
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
_INFLATE_STEP = 1 << 20


def _png_raw_size(width: int, height: int, bit_depth: int, color_type: int, interlace: int) -> int:
    """Bytes of filtered scanlines a complete PNG image stream inflates to."""
    bits = bit_depth * _PNG_CHANNELS.get(color_type, 1)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = math.ceil(max(width - x0, 0) / dx), math.ceil(max(height - y0, 0) / dy)
        if w and h:
            total += h * (1 + (w * bits + 7) // 8)
    return total


def _check_png_data(fp: Any, source: str) -> None:
    """Raise ImageError unless the IDAT stream holds every scanline the header promises.

    PIL accepts a zlib stream that ends early and fills the rest of the canvas with zeros, so a file of a
    few hundred bytes can claim a huge canvas and decode; inflating to count (in bounded steps, never
    holding the pixels) catches it before PIL allocates anything.
    """
    start = fp.tell()
    try:
        fp.seek(0)
        data = fp.read(8 + 8 + 13)
        width, height, bit_depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
        expected = _png_raw_size(width, height, bit_depth, color_type, interlace)
        fp.seek(8)
        inflater, produced, seen_idat = zlib.decompressobj(), 0, False
        while produced < expected and not inflater.eof:
            header = fp.read(8)
            if len(header) < 8:
                break
            length, kind = struct.unpack(">I4s", header)
            if kind != b"IDAT":
                if seen_idat:
                    break  # the image stream is one run of consecutive IDAT chunks
                fp.seek(length + 4, os.SEEK_CUR)
                continue
            seen_idat = True
            remaining = length
            while remaining and produced < expected and not inflater.eof:
                chunk = fp.read(min(remaining, _INFLATE_STEP))
                if not chunk:
                    break
                remaining -= len(chunk)
                while chunk and produced < expected:
                    produced += len(inflater.decompress(chunk, _INFLATE_STEP))
                    chunk = inflater.unconsumed_tail
            fp.seek(remaining + 4, os.SEEK_CUR)  # rest of the chunk (when enough was inflated) and its CRC
    except (zlib.error, struct.error) as e:
        raise ImageError("truncated or corrupt image", source, f"PNG pixel data: {e}") from e
    finally:
        fp.seek(start)
    if produced < expected:
        raise ImageError("truncated or corrupt image", source,
                         f"PNG pixel data ends after {produced} of {expected} bytes for {width}x{height}")


def to_rgb(im: Image.Image, source: str = "<PIL.Image>") -> Image.Image:
    """Convert a decoded image of any mode to RGB, compositing transparency onto white."""
    mode = im.mode
    if im.width == 0 or im.height == 0:
        raise ImageError("empty image", source, f"size {im.width}x{im.height}")
    if mode == "RGB":
        return im.copy()
    if mode in ("1", "L", "CMYK", "YCbCr", "RGBX"):
        return im.convert("RGB")
    if mode == "P" and "transparency" not in im.info:
        return im.convert("RGB")
    if mode in ("P", "PA", "RGBA", "LA", "La", "RGBa"):
        # Plain convert("RGB") drops alpha and shows whatever colour hides under transparent pixels.
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, _WHITE + (255,)), rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _gray_to_rgb(np.asarray(im), mode, source)
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ImageError("unsupported image mode", source, f"mode {mode!r}") from e


def _gray_to_rgb(a: np.ndarray, mode: str, source: str) -> Image.Image:
    if mode.startswith("I;16"):
        a8 = _scale(a.astype(np.float64), 65535.0)
    elif mode.startswith("I"):
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= 65535:  # 16-bit samples in a 32-bit container, as PIL decodes many 16-bit files
            a8 = _scale(a.astype(np.float64), 65535.0)
        else:  # signed or wider data has no canonical white level: stretch to its own range
            logger.debug("%s: mode I values %d..%d stretched to 0..255", source, lo, hi)
            a8 = _scale(a.astype(np.float64) - lo, max(hi - lo, 1))
    else:
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ImageError("float values not finite", source, "NaN or infinity in a mode F image")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise ImageError("float values outside [0, 1] or [0, 255]", source, f"min {lo:g}, max {hi:g}")
        a8 = _scale(a, 1.0 if hi <= 1 else 255.0)  # [0, 1] like numpy images, else PIL's own 0..255 scale
    return Image.fromarray(a8).convert("RGB")


def _scale(a: np.ndarray, white: float) -> np.ndarray:
    return np.clip(np.rint(a * (255.0 / white)), 0, 255).astype(np.uint8)


def array_to_rgb(a: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 array (uint8, uint16, bool, float in [0, 1]) -> RGB PIL image."""
    src = "<numpy array>"
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        hint = "; channels-first? use a.transpose(1, 2, 0)" if a.ndim == 3 and a.shape[0] in (1, 3, 4) else ""
        raise ImageError("unsupported array shape", src, f"shape {a.shape}; expected HxW, HxWx1, HxWx3 or HxWx4{hint}")
    if a.size == 0:
        raise ImageError("empty array", src, f"shape {a.shape}")
    if a.dtype == np.uint8:
        a8 = a
    elif a.dtype == np.uint16:
        a8 = _scale(a.astype(np.float64), 65535.0)
    elif a.dtype == np.bool_:
        a8 = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        lo, hi = float(np.min(a)), float(np.max(a))  # NaN propagates into lo/hi and fails the check
        if not (lo >= 0.0 and hi <= 1.0):
            raise ImageError("float values outside [0, 1]", src, f"min {lo:g}, max {hi:g}")
        a8 = _scale(a.astype(np.float64), 1.0)
    else:
        raise ImageError("unsupported array dtype", src,
                         f"{a.dtype}; expected uint8, uint16, bool or float in [0, 1] (try a.astype(np.uint8))")
    if a8.ndim == 3 and a8.shape[2] == 1:
        a8 = a8[:, :, 0]
    return to_rgb(Image.fromarray(np.ascontiguousarray(a8)), src)  # uint8 HxW / HxWx3 / HxWx4: L / RGB / RGBA


def tile_views(image: Image.Image, tile_size: tuple[int, int], rows: int, cols: int) -> list[Image.Image]:
    """The whole image, then rows x cols tiles of `tile_size` (H, W) cut from it resized to the grid, row by row."""
    height, width = tile_size
    grid = image.resize((cols * width, rows * height), Image.Resampling.BICUBIC)
    return [image] + [grid.crop((c * width, r * height, (c + 1) * width, (r + 1) * height))
                      for r in range(rows) for c in range(cols)]
