"""Helpers for tests of the built-in generated data sets."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mmgpt.data.shapes import SPLITS


def fingerprint(files: dict[str, Path], extra: Sequence[str] = ()) -> str:
    """Hash of every split file's bytes, every image's decoded pixels and the `extra` files of the folder."""
    h = hashlib.sha256()
    folder = files["train"].parent
    for split in SPLITS:
        h.update(files[split].read_bytes())
        for png in sorted((folder / "images" / split).iterdir()):
            with Image.open(png) as im:
                h.update(png.name.encode() + np.asarray(im).tobytes())
    for name in extra:
        h.update((folder / name).read_bytes())
    return h.hexdigest()
