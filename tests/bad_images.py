"""Test fixtures: files that must fail to load, and files in unusual modes that must load correctly."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels, so the compressed stream is long and cutting it is a real truncation."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose IHDR claims width x height (valid CRC); decoding it would fail, opening must not."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")  # 4-byte length precedes, 13 data bytes + 4-byte CRC follow
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def make_bad_images(folder: Path) -> dict[str, Path]:
    """One path per kind of unusable image, keyed by kind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"missing": folder / "does_not_exist.png"}
    out["directory"] = folder / "a_directory.png"
    out["directory"].mkdir(exist_ok=True)
    out["zero_byte"] = folder / "zero_byte.png"
    out["zero_byte"].write_bytes(b"")
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg")):
        buf = io.BytesIO()
        _noise(64, 64).save(buf, fmt)
        data = buf.getvalue()
        out[f"truncated_{ext}"] = folder / f"truncated.{ext}"
        out[f"truncated_{ext}"].write_bytes(data[: len(data) * 6 // 10])
    out["not_an_image"] = folder / "not_an_image.png"
    out["not_an_image"].write_text("this is a text file with an image name\n")
    out["bomb"] = png_with_header_size(folder / "bomb.png", 20000, 20000)
    return out


def make_unusual_images(folder: Path) -> dict[str, Path]:
    """Images in modes and layouts that naive loading gets wrong; the tests know their correct RGB pixels."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(name: str, im: Image.Image, ext: str = "png", **kw) -> None:
        out[name] = folder / f"{name}.{ext}"
        im.save(out[name], **kw)

    # Palette: left half index 0 (transparent, black underneath), right half index 1 (red).
    pal = Image.new("P", (8, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    pal.paste(1, (4, 0, 8, 4))
    save("palette_transparent", pal, transparency=0)
    rgba = Image.new("RGBA", (8, 4), (255, 0, 0, 128))  # half-transparent red
    rgba.paste((0, 0, 255, 0), (4, 0, 8, 4))  # fully transparent blue
    save("rgba", rgba)
    la = Image.new("LA", (8, 4), (0, 255))  # opaque black
    la.paste((0, 0), (4, 0, 8, 4))  # transparent black
    save("la", la)
    save("cmyk", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "jpg", quality=95)  # red
    save("gray16", Image.fromarray(np.array([[0, 32896, 65535]] * 2, dtype=np.uint16)))
    save("gray8", Image.fromarray(np.array([[0, 128, 255]] * 2, dtype=np.uint8)))
    bw = Image.new("1", (8, 4), 0)
    bw.paste(1, (4, 0, 8, 4))
    save("bilevel", bw)
    # Upright: 32 wide x 64 tall, top half red, bottom half blue. Stored rotated 90 degrees
    # counter-clockwise (64x32, red on the left); EXIF orientation 6 says "rotate clockwise to view".
    upright = Image.new("RGB", (32, 64), (255, 0, 0))
    upright.paste((0, 0, 255), (0, 32, 32, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated", upright.rotate(90, expand=True), "jpg", quality=95, exif=exif)
    return out
