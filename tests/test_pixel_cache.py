"""The on-disk cache of checked images: never a change in what is trained on, never trusted when damaged."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_train import make_jsonl, tiny_config
from tiny import build
from tiny import tiny_config as tiny_model_config

import mmgpt.data.dataset as dataset
from mmgpt.data.dataset import check_images
from mmgpt.data.example import Example
from mmgpt.data.pixel_cache import PixelCache, wait_for_writes
from mmgpt.training.loop import run_training


@pytest.fixture(scope="module")
def processor():
    return build(tiny_model_config()).processor


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Six small PNGs of different colours and a path that does not exist (a bad image)."""
    paths = []
    for i in range(6):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        # stored uncompressed: an image of the same size has a file of the same size
        Image.new("RGB", (40, 30), (40 * i, 255 - 30 * i, 7 * i)).save(path, compress_level=0)
        paths.append(path)
    return paths + [tmp_path / "img" / "missing.png"]


def _examples(paths: list[Path]) -> list[Example]:
    # two questions per image: each image is checked once
    return [Example(image=str(p), prompt=q, answer="a", task="vqa") for p in paths for q in ("q1", "q2")]


def _check(processor, paths: list[Path], cache: PixelCache | None):
    checked = check_images(_examples(paths), processor.image_tensor, cache=True, max_bad_fraction=1.0,
                           progress=False, pixel_cache=cache)
    wait_for_writes()  # the entry is written in the background
    return checked


def _same(a: tuple, b: tuple) -> bool:
    (kept_a, report_a), (kept_b, report_b) = a, b
    return (report_a.bad == report_b.bad and report_a.total == report_b.total and len(kept_a) == len(kept_b)
            and all(x.prompt == y.prompt and torch.equal(x.image, y.image) for x, y in zip(kept_a, kept_b)))


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("decoded images although the cache holds them")

    monkeypatch.setattr(dataset, "_decode_each", fail)


def _entries(root: Path) -> list[Path]:
    return sorted(root.glob("*.safetensors"))


def test_a_warm_cache_gives_what_decoding_gives(tmp_path: Path, processor, images: list[Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cache = PixelCache.for_processor(processor, tmp_path / "cache")
    uncached = _check(processor, images, None)
    cold = _check(processor, images, cache)
    assert len(_entries(tmp_path / "cache")) == 1
    _no_decoding(monkeypatch)
    warm = _check(processor, images, cache)
    assert _same(uncached, cold) and _same(cold, warm)
    assert warm[1].num_bad == 1 and "file not found" in next(iter(warm[1].bad.values()))


@pytest.mark.parametrize("damage", ["truncate", "flip a pixel byte", "flip a record byte", "empty", "foreign"])
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path: Path, processor, images: list[Path], damage: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    cache = PixelCache.for_processor(processor, tmp_path / "cache")
    expected = _check(processor, images, None)
    _check(processor, images, cache)
    (entry,) = _entries(tmp_path / "cache")
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip a pixel byte":
        data[-5] ^= 0x01
    elif damage == "flip a record byte":
        at = data.index(b"missing.png")  # inside the records of the bad image's reason
        data[at] = ord("M")
    elif damage == "empty":
        data = bytearray()
    else:  # another dataset's complete, valid entry under this one's name
        other = PixelCache.for_processor(processor, tmp_path / "other")
        _check(processor, images[:3], other)
        data = bytearray(_entries(tmp_path / "other")[0].read_bytes())
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="mmgpt.data.pixel_cache"):
        rebuilt = _check(processor, images, cache)
    assert _same(rebuilt, expected)
    assert any("is damaged" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmgpt.data.pixel_cache"):
        assert _same(_check(processor, images, cache), expected)
    assert not [r for r in caplog.records if r.name == "mmgpt.data.pixel_cache"]  # the rebuilt entry is sound


def test_a_changed_image_is_a_miss_not_stale_pixels(tmp_path: Path, processor, images: list[Path]) -> None:
    cache = PixelCache.for_processor(processor, tmp_path / "cache")
    _check(processor, images, cache)
    changed = images[2]
    stat = changed.stat()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(changed, compress_level=0)
    # the same size and modification time as before: only the content tells
    assert changed.stat().st_size == stat.st_size
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = _check(processor, images, cache)
    assert _same(after, _check(processor, images, None))
    new = processor.image_tensor(Image.new("RGB", (40, 30), (1, 2, 3)))
    assert any(torch.equal(e.image, new) for e in after[0])
    assert len(_entries(tmp_path / "cache")) == 2


def test_a_changed_transform_is_a_miss(tmp_path: Path, processor, images: list[Path]) -> None:
    other = build(tiny_model_config(image="vit")).processor  # another transform config
    first = PixelCache.for_processor(processor, tmp_path / "cache")
    second = PixelCache.for_processor(other, tmp_path / "cache")
    assert first.key([str(p) for p in images]) != second.key([str(p) for p in images])
    assert first.key(["a.png", "b.png"]) != first.key(["b.png", "a.png"])


def test_in_memory_images_are_not_cached(tmp_path: Path, processor) -> None:
    cache = PixelCache.for_processor(processor, tmp_path / "cache")
    examples = [Example(image=Image.new("RGB", (8, 8)), prompt="q", answer="a", task="vqa")]
    kept, _ = check_images(examples, processor.image_tensor, True, 1.0, progress=False, pixel_cache=cache)
    assert len(kept) == 1 and not (tmp_path / "cache").exists()


def test_concurrent_writers_leave_one_sound_entry(tmp_path: Path, processor, images: list[Path]) -> None:
    cache = PixelCache.for_processor(processor, tmp_path / "cache")
    expected = _check(processor, images, None)
    results, errors = [], []

    def run() -> None:
        try:
            results.append(_check(processor, images, cache))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(_same(r, expected) for r in results)
    assert len(_entries(tmp_path / "cache")) == 1
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_least_recently_used_entries_go_when_the_cache_is_full(tmp_path: Path, processor, images: list[Path]) -> None:
    cache = PixelCache.for_processor(processor, tmp_path / "cache")
    _check(processor, images[:2], cache)
    (first,) = _entries(tmp_path / "cache")
    cache.max_bytes = first.stat().st_size * 2 + 1  # room for two entries of this size
    os.utime(first, (1, 1))  # long unused
    _check(processor, images[2:4], cache)
    _check(processor, images[4:6], cache)
    assert len(_entries(tmp_path / "cache")) == 2 and not first.exists()


def test_an_entry_pruned_by_another_process_while_read_is_still_used(tmp_path: Path, processor, images: list[Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import mmgpt.data.pixel_cache as pixel_cache

    cache = PixelCache.for_processor(processor, tmp_path / "cache")
    cold = _check(processor, images, cache)
    (entry,) = _entries(tmp_path / "cache")
    checksum = pixel_cache._checksum

    def pruned_meanwhile(*args):  # runs once the entry is read: another run's prune deletes it right then
        entry.unlink(missing_ok=True)
        return checksum(*args)

    monkeypatch.setattr(pixel_cache, "_checksum", pruned_meanwhile)
    _no_decoding(monkeypatch)
    assert _same(cold, _check(processor, images, cache))  # the pixels read are sound: used, not a crash


def test_a_run_with_warm_caches_trains_byte_identical_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MMGPT_CACHE", str(tmp_path / "mmgpt-cache"))
    data = make_jsonl(tmp_path / "data", n=16)
    cold, warm = tmp_path / "cold", tmp_path / "warm"
    with caplog.at_level(logging.INFO):
        run_training(["--config", str(tiny_config(tmp_path, data, cold, max_steps=4))])
    assert any(r.getMessage().startswith("first step after ") for r in caplog.records)
    wait_for_writes()
    assert _entries(tmp_path / "mmgpt-cache" / "images")
    assert list((tmp_path / "mmgpt-cache" / "tokenizers").glob("*.json"))
    _no_decoding(monkeypatch)
    # the tokenizer comes from $MMGPT_CACHE/tokenizers too
    monkeypatch.setattr("mmgpt.tokenizer.train_tokenizer", lambda *a, **k: pytest.fail("trained the tokenizer again"))
    run_training(["--config", str(tiny_config(tmp_path, data, warm, max_steps=4))])
    model = Path("model") / "model.safetensors"
    assert (cold / model).read_bytes() == (warm / model).read_bytes()
    tokenizer_files = sorted(p.name for p in (cold / "tokenizer").iterdir())
    assert tokenizer_files and all((cold / "tokenizer" / n).read_bytes() == (warm / "tokenizer" / n).read_bytes()
                                   for n in tokenizer_files)
