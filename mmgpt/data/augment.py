"""Label-preserving image augmentations on preprocessed pixel tensors, chosen per dataset.

A dataset opts in with ``augment: [hflip, rot90]`` in its spec; only datasets whose answers do not
depend on orientation should (easy-VQA's shapes and colours do not; captions that say "top left" do).
The random choice is a pure function of (seed, epoch, key), the key naming the image, so a resumed run
and any number of processes see exactly the augmentations one uninterrupted process would.
Operating on the cached (3, H, W) tensor keeps the cost to a copy: no image is decoded again.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mmgpt.registry import registrar

Augmentation = Callable[[torch.Tensor, random.Random], torch.Tensor]
AUGMENTATIONS: dict[str, Augmentation] = {}
register_augmentation = registrar(AUGMENTATIONS, "augmentation")


@register_augmentation("hflip")
def hflip(pixels: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Mirror left-right with probability 1/2."""
    return pixels.flip(-1) if rng.random() < 0.5 else pixels


@register_augmentation("vflip")
def vflip(pixels: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Mirror top-bottom with probability 1/2."""
    return pixels.flip(-2) if rng.random() < 0.5 else pixels


@register_augmentation("rot90")
def rot90(pixels: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Rotate by 0, 90, 180 or 270 degrees (square images only: the model's input size must not change)."""
    if pixels.shape[-1] != pixels.shape[-2]:
        raise ValueError(f"augmentation 'rot90' needs square images, got {tuple(pixels.shape[-2:])}")
    return torch.rot90(pixels, rng.randrange(4), dims=(-2, -1))


@register_augmentation("translate")
def translate(pixels: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Shift by up to 1/16 of the size each way, filling from the nearest edge (plain backgrounds stay plain)."""
    height, width = pixels.shape[-2:]
    max_dy, max_dx = height // 16, width // 16
    dy, dx = rng.randint(-max_dy, max_dy), rng.randint(-max_dx, max_dx)
    if dy == dx == 0:
        return pixels
    padded = F.pad(pixels[None], (max_dx, max_dx, max_dy, max_dy), mode="replicate")[0]
    top, left = max_dy - dy, max_dx - dx
    return padded[..., top : top + height, left : left + width]


def check_augmentations(names: Sequence[str], where: str) -> list[str]:
    """Validate augmentation names, naming the field and the available ones on a typo."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"{where}: unknown augmentation {unknown[0]!r}; available: {', '.join(sorted(AUGMENTATIONS))}")
    return list(names)


def augment(pixels: torch.Tensor, names: Sequence[str], seed: int, epoch: int, key: int | str) -> torch.Tensor:
    """Apply `names` in order to one (3, H, W) tensor, with randomness fixed by (seed, epoch, key)."""
    if not names:
        return pixels
    # string seeding goes through SHA-512: stable across processes and Python runs, unlike hash()
    rng = random.Random(f"augment:{seed}:{epoch}:{key}")
    for name in names:
        pixels = AUGMENTATIONS[name](pixels, rng)
    return pixels
