"""mmgpt.data.augment: label-preserving flips and rotations, reproducible per (seed, epoch, position)."""
from __future__ import annotations

import pytest
import torch

from mmgpt.data.augment import augment, check_augmentations
from mmgpt.data.dataset import RobustImages
from mmgpt.data.example import Example
from mmgpt.data.mixture import Mixture
from mmgpt.data.spec import DatasetSpec


def _image(height: int = 4, width: int = 4) -> torch.Tensor:
    return torch.arange(3 * height * width, dtype=torch.float32).reshape(3, height, width)


def _dihedral(pixels: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations and mirror images of a square image."""
    rotations = [torch.rot90(pixels, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [r.flip(-1) for r in rotations]


def test_flips_and_rotations_reach_every_symmetry_of_the_square_and_nothing_else() -> None:
    pixels = _image()
    variants = _dihedral(pixels)
    seen = set()
    for position in range(200):
        out = augment(pixels, ["hflip", "rot90"], seed=0, epoch=0, key=position)
        assert out.shape == pixels.shape
        matches = [i for i, v in enumerate(variants) if torch.equal(out, v)]
        assert len(matches) == 1, f"position {position}: not a rotation or mirror image of the input"
        seen.add(matches[0])
    assert seen == set(range(8))


def test_augmentation_is_a_function_of_seed_epoch_and_position() -> None:
    pixels = _image()
    first = [augment(pixels, ["hflip", "vflip", "rot90"], 3, 1, p) for p in range(32)]
    again = [augment(pixels, ["hflip", "vflip", "rot90"], 3, 1, p) for p in range(32)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other_epoch = [augment(pixels, ["hflip", "vflip", "rot90"], 3, 2, p) for p in range(32)]
    assert not all(torch.equal(a, b) for a, b in zip(first, other_epoch))
    assert augment(pixels, [], 3, 1, 0) is pixels


def test_translate_shifts_the_content_and_fills_from_the_edge() -> None:
    pixels = torch.zeros(3, 32, 32)
    pixels[:, 10:14, 12:16] = 1.0
    shifts = set()
    for position in range(64):
        out = augment(pixels, ["translate"], 0, 0, position)
        assert out.shape == pixels.shape
        # the square keeps its size and only moves, by at most 32 / 16 = 2 pixels
        rows, cols = out[0].nonzero(as_tuple=True)
        assert len(rows) == 16 and float(out.sum()) == float(pixels.sum())
        dy, dx = int(rows.min()) - 10, int(cols.min()) - 12
        assert abs(dy) <= 2 and abs(dx) <= 2
        shifts.add((dy, dx))
    assert len(shifts) > 10
    edge = torch.zeros(1, 16, 16)
    edge[:, :, 0] = 5.0
    filled = {float(augment(edge, ["translate"], 0, 0, p)[0, 0, 0]) for p in range(32)}
    assert filled == {5.0, 0.0}


def test_rot90_refuses_a_non_square_image() -> None:
    with pytest.raises(ValueError, match="square"):
        for position in range(16):
            augment(_image(4, 6), ["rot90"], 0, 0, position)


def test_unknown_augmentation_names_the_field_and_the_choices() -> None:
    with pytest.raises(ValueError, match=(r"field 'augment': unknown augmentation 'flip'; "
                                          r"available: hflip, rot90, translate, vflip")):
        DatasetSpec(format="easy_vqa", augment=["flip"])
    assert check_augmentations("hflip", "x") == ["hflip"]


def test_only_the_named_dataset_is_augmented() -> None:
    pixels = _image()
    plain = [Example(pixels.clone(), "caption", "a", task="caption", source="captions") for _ in range(40)]
    flipped = [Example(pixels.clone(), "q", "a", source="vqa") for _ in range(40)]
    mixture = Mixture([("captions", plain, 1.0), ("vqa", flipped, 1.0)], seed=0)
    dataset = RobustImages(mixture, lambda image: image, augment={"vqa": ["hflip", "rot90"], "captions": []})
    changed = {"captions": 0, "vqa": 0}
    for index in range(len(dataset)):
        example, failures = dataset[index]
        assert not failures
        changed[example.source] += not torch.equal(example.image, pixels)
    assert changed["captions"] == 0
    # 7 of the 8 symmetries change the image
    assert 20 < changed["vqa"] < 40


def test_every_question_about_an_image_gets_the_same_draw_in_an_epoch() -> None:
    images = [_image() + 100 * i for i in range(4)]
    questions = [Example(images[i % 4], f"q{i}", "a", source="vqa") for i in range(64)]
    mixture = Mixture([("vqa", questions, 1.0)], seed=0)
    dataset = RobustImages(mixture, lambda image: image, augment={"vqa": ["hflip", "rot90"]})
    draws: dict[int, set] = {}
    for epoch in range(3):
        mixture.set_epoch(epoch)
        for index in range(len(dataset)):
            example, _ = dataset[index]
            source = int(example.image.min()) // 100
            draws.setdefault((epoch, source), set()).add(tuple(example.image.flatten().tolist()))
    assert all(len(d) == 1 for d in draws.values())
    # and the draw changes between images and epochs
    assert len({next(iter(d)) for d in draws.values()}) > 4
