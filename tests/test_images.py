"""mmgpt.images.load_image: bad files fail with a clear ImageError, unusual modes load with correct pixels."""
from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_images import make_bad_images, make_unusual_images, png_with_header_size
from PIL import Image, ImageFile

from mmgpt.images import ImageError, UnsupportedImageType, load_image

BAD_PROBLEMS = {
    "missing": "file not found",
    "directory": "directory",
    "zero_byte": "empty file",
    "truncated_png": "truncated",
    "truncated_jpg": "truncated",
    "not_an_image": "not an image",
    "bomb": "decompression bomb",
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return make_bad_images(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def unusual(tmp_path_factory) -> dict[str, Path]:
    return make_unusual_images(tmp_path_factory.mktemp("unusual"))


def pixels(image) -> np.ndarray:
    im = load_image(image)
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def close(actual, expected, tol: int = 1) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, dtype=int) - np.asarray(expected, dtype=int)) <= tol))


@pytest.mark.parametrize("kind", sorted(BAD_PROBLEMS))
def test_bad_file_raises_image_error_naming_file_and_problem(bad, kind):
    with pytest.raises(ImageError) as info:
        load_image(bad[kind])
    message = str(info.value)
    assert str(bad[kind]) in message
    assert BAD_PROBLEMS[kind] in message
    assert message.startswith(info.value.problem + ":")  # counted by kind in the training report
    assert info.value.source == str(bad[kind])


def test_every_bad_kind_is_covered(bad):
    assert set(bad) == set(BAD_PROBLEMS)


@pytest.mark.parametrize("kind", ["zero_byte", "truncated_png", "truncated_jpg", "not_an_image", "bomb"])
def test_bad_bytes_name_bytes_as_source(bad, kind):
    with pytest.raises(ImageError, match="<bytes>") as info:
        load_image(bad[kind].read_bytes())
    assert BAD_PROBLEMS[kind] in str(info.value)


def test_bad_pathlike_and_str_paths_give_same_error(bad):
    with pytest.raises(ImageError) as a:
        load_image(bad["truncated_png"])
    with pytest.raises(ImageError) as b:
        load_image(str(bad["truncated_png"]))
    assert str(a.value) == str(b.value)


def test_pil_globals_untouched(bad):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for path in bad.values():
        with pytest.raises(ImageError):
            load_image(path)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before == (89_478_485, False)


def test_bomb_below_pil_error_threshold_is_ours_and_warning_free(tmp_path):
    # 10000x10000 lies between PIL's warning and error limits: PIL only warns, we must refuse.
    path = png_with_header_size(tmp_path / "mid.png", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="decompression bomb") as info:
            load_image(path)
    assert "10000x10000" in str(info.value) and str(path) in str(info.value)


def test_max_pixels_checked_before_decoding(tmp_path):
    # The header says 300x300 but the data is unreadable: a size error proves no decode was attempted.
    path = png_with_header_size(tmp_path / "big.png", 300, 300)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path, max_pixels=300 * 300 - 1)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path, max_pixels=300 * 300)


def test_max_pixels_applies_to_good_images(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (20, 10), "red").save(path)
    assert load_image(path, max_pixels=200).size == (20, 10)
    with pytest.raises(ImageError, match="20x10 = 200 pixels > max_pixels 199"):
        load_image(path, max_pixels=199)


def test_palette_transparency_composited_on_white(unusual):
    a = pixels(unusual["palette_transparent"])
    assert a.shape == (4, 8, 3)
    assert close(a[:, :4], (255, 255, 255), 0)  # transparent index, black underneath
    assert close(a[:, 4:], (255, 0, 0), 0)


def test_rgba_half_alpha_on_white(unusual):
    a = pixels(unusual["rgba"])
    assert close(a[:, :4], (255, 128, 128))
    assert close(a[:, 4:], (255, 255, 255), 0)  # fully transparent blue shows white


def test_la_alpha_on_white(unusual):
    a = pixels(unusual["la"])
    assert close(a[:, :4], (0, 0, 0), 0) and close(a[:, 4:], (255, 255, 255), 0)


def test_cmyk_jpeg(unusual):
    assert close(pixels(unusual["cmyk"]), (255, 0, 0), 8)


def test_16bit_png_scaled_not_clipped(unusual):
    a = pixels(unusual["gray16"])
    assert a[0, :, 0].tolist() == [0, 128, 255] and close(a, a[..., :1])


def test_grayscale_and_bilevel(unusual):
    assert pixels(unusual["gray8"])[0, :, 1].tolist() == [0, 128, 255]
    a = pixels(unusual["bilevel"])
    assert close(a[:, :4], 0, 0) and close(a[:, 4:], 255, 0)


def test_exif_orientation_applied(unusual):
    with Image.open(unusual["exif_rotated"]) as raw:
        assert raw.size == (64, 32)  # stored sideways
    a = pixels(unusual["exif_rotated"])
    assert a.shape == (64, 32, 3)  # upright: 32 wide, 64 tall
    assert close(a[4:28, 4:28], (255, 0, 0), 8)  # red on top
    assert close(a[36:60, 4:28], (0, 0, 255), 8)  # blue below


def test_unusual_files_also_load_from_bytes(unusual):
    for name, path in unusual.items():
        assert np.array_equal(pixels(path.read_bytes()), pixels(path)), name


@pytest.mark.parametrize("mode,raw,expected", [
    ("I;16", np.array([[0, 32896, 65535]], "<u2").tobytes(), [0, 128, 255]),
    ("I;16B", np.array([[0, 32896, 65535]], ">u2").tobytes(), [0, 128, 255]),
    ("I", np.array([[0, 32896, 65535]], "<i4").tobytes(), [0, 128, 255]),
    ("I", np.array([[-100, 0, 155]], "<i4").tobytes(), [0, 100, 255]),  # signed: stretched
    ("F", np.array([[0.0, 0.5, 1.0]], "<f4").tobytes(), [0, 128, 255]),
    ("F", np.array([[0.0, 128.0, 255.0]], "<f4").tobytes(), [0, 128, 255]),
])
def test_pil_high_bit_depth_modes(mode, raw, expected):
    im = Image.frombytes(mode, (3, 1), raw)
    assert pixels(im)[0, :, 0].tolist() == expected


def test_pil_inputs():
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 255, 0] * 256)
    pa.putpixel((0, 0), (0, 255))
    pa.putpixel((1, 0), (0, 0))
    assert pixels(pa).tolist() == [[[0, 255, 0], [255, 255, 255]]]
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    assert pixels(p).tolist() == [[[255, 255, 255], [0, 0, 255]]]
    rgb = Image.new("RGB", (3, 2), (1, 2, 3))
    out = load_image(rgb)
    assert out is not rgb and pixels(rgb).tolist() == [[[1, 2, 3]] * 3] * 2
    with pytest.raises(ImageError, match="<PIL.Image>.*max_pixels"):
        load_image(rgb, max_pixels=5)


def test_lazily_opened_truncated_pil_image(bad):
    with Image.open(bad["truncated_png"]) as im:
        with pytest.raises(ImageError, match=r"truncated or corrupt image: <PIL.Image>"):
            load_image(im)


@pytest.mark.parametrize("array,expected", [
    (np.array([[0, 128, 255]], np.uint8), [[0, 0, 0], [128] * 3, [255] * 3]),
    (np.array([[[0], [128], [255]]], np.uint8), [[0, 0, 0], [128] * 3, [255] * 3]),
    (np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8), [[255, 0, 0], [0, 255, 0], [0, 0, 255]]),
    (np.array([[[255, 0, 0, 255], [255, 0, 0, 128], [255, 0, 0, 0]]], np.uint8),
     [[255, 0, 0], [255, 127, 127], [255, 255, 255]]),
    (np.array([[0, 32896, 65535]], np.uint16), [[0, 0, 0], [128] * 3, [255] * 3]),
    (np.array([[False, True, True]]), [[0, 0, 0], [255] * 3, [255] * 3]),
    (np.array([[0.0, 0.5, 1.0]], np.float32), [[0, 0, 0], [128] * 3, [255] * 3]),
    (np.array([[[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]]])[:, ::-1], [[0, 0, 255], [255, 128, 0]]),  # not contiguous
])
def test_numpy_inputs(array, expected):
    assert close(pixels(array)[0], expected)


@pytest.mark.parametrize("array,match", [
    (np.array([[-0.1, 0.5]]), r"float values outside \[0, 1\]: <numpy array> \(min -0.1, max 0.5\)"),
    (np.array([[0.0, 255.0]], np.float32), r"outside \[0, 1\].*max 255"),
    (np.array([[np.nan, 0.5]]), r"outside \[0, 1\]"),
    (np.zeros((2, 2, 2), np.uint8), r"unsupported array shape.*\(2, 2, 2\).*HxWx4"),
    (np.zeros((3, 8, 8), np.uint8), r"channels-first"),
    (np.zeros((1, 2, 2, 3), np.uint8), r"unsupported array shape.*\(1, 2, 2, 3\)"),
    (np.zeros(5, np.uint8), r"unsupported array shape"),
    (np.zeros((0, 4), np.uint8), r"empty array"),
    (np.zeros((2, 2), np.int64), r"unsupported array dtype.*int64"),
])
def test_bad_numpy_inputs(array, match):
    with pytest.raises(ImageError, match=match):
        load_image(array)


@pytest.mark.parametrize("value,name", [([1, 2], "list"), (None, "NoneType"), (3, "int"),
                                        (io.BytesIO(b"x"), "_io.BytesIO")])
def test_unsupported_types(value, name):
    with pytest.raises(UnsupportedImageType) as info:
        load_image(value)
    assert isinstance(info.value, ImageError) and isinstance(info.value, TypeError)
    message = str(info.value)
    assert message.startswith("unsupported image type") and f"<{name}>" in message
    assert "numpy.ndarray" in message and "PIL.Image.Image" in message and "bytes" in message


def test_image_error_pickles(bad):
    with pytest.raises(ImageError) as info:
        load_image(bad["missing"])
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.source == info.value.source


def test_no_file_handles_leak(unusual, bad):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for path in list(unusual.values()) + [bad["truncated_jpg"], bad["not_an_image"]]:
            try:
                load_image(path)
            except ImageError:
                pass


def _png_stream_ending_early(width: int, height: int, rows: int) -> bytes:
    """A valid PNG header for width x height RGB whose (complete, well-formed) zlib stream holds only `rows` rows."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    scanlines = zlib.compress(b"\x00" * (1 + 3 * width) * rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", scanlines) + chunk(b"IEND", b"")


def test_png_whose_pixel_data_stops_early_is_truncated(tmp_path):
    # PIL itself decodes this into a full 3000x3000 canvas of zeros
    data = _png_stream_ending_early(3000, 3000, rows=10)
    path = tmp_path / "short.png"
    path.write_bytes(data)
    for source, name in ((path, str(path)), (data, "<bytes>")):
        with pytest.raises(ImageError, match="truncated") as info:
            load_image(source)
        assert info.value.source == name and "3000x3000" in str(info.value)
    complete = _png_stream_ending_early(30, 20, rows=20)
    assert load_image(complete).size == (30, 20)
    with pytest.raises(ImageError, match="truncated"):
        load_image(_png_stream_ending_early(30, 20, rows=19))


def test_default_pixel_limit_is_mmgpts_own_and_read_from_the_header(tmp_path):
    import inspect

    from mmgpt.images import DEFAULT_MAX_PIXELS
    from mmgpt.processor import Processor

    assert DEFAULT_MAX_PIXELS < Image.MAX_IMAGE_PIXELS
    assert inspect.signature(Processor).parameters["max_image_pixels"].default == DEFAULT_MAX_PIXELS
    side = int(DEFAULT_MAX_PIXELS**0.5)
    over = png_with_header_size(tmp_path / "over.png", side + 1, side + 1)
    with pytest.raises(ImageError, match=f"too many pixels.*max_pixels {DEFAULT_MAX_PIXELS}") as info:
        load_image(over)
    assert info.value.source == str(over)
    # just under the limit the header passes and the missing data is what fails
    with pytest.raises(ImageError, match="truncated"):
        load_image(png_with_header_size(tmp_path / "under.png", side, side))
    with pytest.raises(ValueError, match="max_pixels must be an int >= 1"):
        load_image(over, max_pixels=0)


def test_truncated_files_fail_even_when_pil_tolerance_is_on_globally(bad, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for kind in ("truncated_png", "truncated_jpg"):
        with pytest.raises(ImageError, match="truncated") as info:
            load_image(bad[kind])
        assert info.value.source == str(bad[kind])
    with pytest.raises(ImageError, match="truncated"):
        load_image(Image.open(bad["truncated_jpg"]))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the other code's choice is put back


def test_importing_mmgpt_leaves_pil_globals_alone():
    import importlib
    import pkgutil

    import mmgpt

    for module in pkgutil.walk_packages(mmgpt.__path__, "mmgpt."):
        importlib.import_module(module.name)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == (89_478_485, False)
