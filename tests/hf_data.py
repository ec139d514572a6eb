"""Small datasets in the formats users bring, written into a folder: Hugging Face (save_to_disk, Parquet) and LLaVA.

Rows are easy-VQA-like (a colored square, "what color is the shape?" -> its color) with PNG bytes, so a tiny
model can learn them and every image is a real, distinct file.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

COLORS = ("red", "green", "blue", "yellow", "black", "gray", "teal", "brown")


def png_bytes(i: int) -> bytes:
    """An 8x8 PNG whose color is COLORS[i % 8], with pixel (0, 0) encoding i so every image is distinct."""
    image = Image.new("RGB", (8, 8), COLORS[i % len(COLORS)])
    image.putpixel((0, 0), (i % 256, i // 256 % 256, 7))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rows(n: int, bad_every: int = 0) -> list[dict]:
    """n rows: image (PNG bytes; every bad_every-th not an image), question, answer, Cauldron-style texts."""
    def image(i: int) -> bytes:
        return b"not an image" if bad_every and i % bad_every == 0 else png_bytes(i)

    return [{"image": {"bytes": image(i), "path": None}, "question": "what color is the shape?",
             "answer": COLORS[i % len(COLORS)], "id": i,
             "texts": [{"user": "what color is the shape?", "assistant": COLORS[i % len(COLORS)]},
                       {"user": "is there a shape?", "assistant": "yes"}]} for i in range(n)]


def hf_dataset(n: int, bad_every: int = 0):
    """The rows as a datasets.Dataset with an Image feature."""
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "id": datasets.Value("int64"),
        "texts": datasets.List({"user": datasets.Value("string"), "assistant": datasets.Value("string")}),
    })
    return datasets.Dataset.from_list(rows(n, bad_every), features=features)


def save_folder(path: Path, n: int = 200) -> Path:
    """A save_to_disk folder of n rows."""
    hf_dataset(n).save_to_disk(str(path))
    return path


def parquet_shards(folder: Path, n: int = 200, shards: int = 4, bad_every: int = 0) -> Path:
    """n rows in `shards` Parquet files train-0000i.parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = hf_dataset(n, bad_every)
    for s in range(shards):
        ds.shard(shards, s, contiguous=True).to_parquet(str(folder / f"train-{s:05d}.parquet"))
    return folder


def llava_json(folder: Path, n: int = 100, jsonl: bool = False) -> Path:
    """A LLaVA-format JSON (or JSONL) of n two-turn conversations over an image folder `folder`/images."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        (folder / "images" / f"{i:04d}.png").write_bytes(png_bytes(i))
        records.append({"id": f"q{i}", "image": f"{i:04d}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat color is the shape?"},
            {"from": "gpt", "value": COLORS[i % len(COLORS)]},
            {"from": "human", "value": "is there a shape?"}, {"from": "gpt", "value": "yes"}]})
    path = folder / ("llava.jsonl" if jsonl else "llava.json")
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n" if jsonl else json.dumps(records))
    return path
