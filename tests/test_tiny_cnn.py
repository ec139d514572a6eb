"""mmgpt.encoders.tiny_cnn: the timm-registered CNN's grid size and its full-resolution stem."""
from __future__ import annotations

import pytest
import timm
import torch

import mmgpt.encoders.tiny_cnn  # noqa: F401  (registers the models with timm)


@pytest.mark.parametrize(("kwargs", "grid"), [
    ({}, 4),
    ({"stem_stride": 1}, 8),
    ({"stem_stride": 1, "stem_width": 8, "widths": (8, 16, 32, 48)}, 4),
])
def test_feature_grid_follows_the_stem_stride_and_stage_count(kwargs: dict, grid: int) -> None:
    model = timm.create_model("mmgpt_tiny_cnn", **kwargs).eval()
    features = model.forward_features(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, model.num_features, grid, grid)


def test_full_resolution_stem_keeps_the_image_size() -> None:
    image = torch.randn(1, 3, 64, 64)
    for stride, size in ((2, 32), (1, 64)):
        model = timm.create_model("mmgpt_tiny_cnn", stem_stride=stride).eval()
        assert model.stem(image).shape[-2:] == (size, size)


def test_fullres_variant_is_the_tiny_cnn_with_a_full_resolution_stem_and_one_more_stage() -> None:
    torch.manual_seed(0)
    variant = timm.create_model("mmgpt_tiny_cnn_fullres").eval()
    torch.manual_seed(0)
    spelled_out = timm.create_model("mmgpt_tiny_cnn", stem_stride=1, stem_width=16, widths=(16, 32, 64, 96)).eval()
    image = torch.randn(2, 3, 64, 64)
    assert variant.stem(image).shape == (2, 16, 64, 64)
    assert torch.equal(variant.forward_features(image), spelled_out.forward_features(image))
    assert variant.forward_features(image).shape == (2, 96, 4, 4)


def test_bad_stem_stride_is_an_error_naming_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2, got 3"):
        timm.create_model("mmgpt_tiny_cnn", stem_stride=3)


def _with_and_without(**option: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """mmgpt_tiny_cnn_fullres from the same seed, without and with `option`: the same weights either way."""
    torch.manual_seed(0)
    plain = timm.create_model("mmgpt_tiny_cnn_fullres").eval()
    torch.manual_seed(0)
    return plain, timm.create_model("mmgpt_tiny_cnn_fullres", **option).eval()


def test_stem_tokens_join_the_pooled_stem_to_each_token() -> None:
    plain, joined = _with_and_without(stem_tokens=True)
    image = torch.randn(2, 3, 64, 64)
    features = joined.forward_features(image)
    assert joined.num_features == 96 + 16 and features.shape == (2, 112, 4, 4)
    assert torch.equal(features[:, :96], plain.forward_features(image))
    # each token's extra channels are the mean of the stem's output over its 16 x 16 pixel cell
    stem = joined.stem(image)
    assert torch.allclose(features[:, 96:, 1, 2], stem[:, :, 16:32, 32:48].mean(dim=(2, 3)), atol=1e-6)
    assert joined.forward(image).shape == (2, 112)


def test_global_tokens_join_the_image_mean_to_each_token() -> None:
    plain, joined = _with_and_without(global_tokens=True)
    image = torch.randn(2, 3, 64, 64)
    features, own = joined.forward_features(image), plain.forward_features(image)
    assert joined.num_features == 192 and features.shape == (2, 192, 4, 4)
    assert torch.equal(features[:, :96], own)
    # every token carries the same extra channels: its image's mean feature, which differs between images
    for row, col in ((0, 0), (1, 2), (3, 3)):
        assert torch.allclose(features[:, 96:, row, col], own.mean(dim=(2, 3)), atol=1e-6)
    assert not torch.allclose(features[0, 96:, 0, 0], features[1, 96:, 0, 0])


def test_space_to_depth_stem_folds_each_block_of_pixels_into_channels() -> None:
    model = timm.create_model("mmgpt_tiny_cnn", stem="space_to_depth", stem_width=8).eval()
    image = torch.randn(2, 3, 64, 64)
    stem = model.stem(image)
    assert stem.shape == (2, 8, 32, 32) and model.forward_features(image).shape == (2, 96, 4, 4)
    # each of a 2 x 2 block's four pixels reaches the block's own position, not only its neighbours'
    conv = model.stem[1]
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        changed = image.clone()
        changed[:, :, 10 + dy, 20 + dx] += 1.0
        before = conv(torch.nn.functional.pixel_unshuffle(image, 2))[:, :, 5, 10]
        after = conv(torch.nn.functional.pixel_unshuffle(changed, 2))[:, :, 5, 10]
        assert not torch.allclose(before, after)
    assert torch.equal(stem, model.stem[2:](conv(torch.nn.functional.pixel_unshuffle(image, 2))))


def test_unknown_stem_is_an_error_naming_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="stem must be 'conv' or 'space_to_depth', got 'patch'"):
        timm.create_model("mmgpt_tiny_cnn", stem="patch")


def test_s2d_variant_is_the_tiny_cnn_with_a_space_to_depth_stem() -> None:
    torch.manual_seed(0)
    variant = timm.create_model("mmgpt_tiny_cnn_s2d").eval()
    torch.manual_seed(0)
    spelled_out = timm.create_model("mmgpt_tiny_cnn", stem="space_to_depth", stem_width=32,
                                    widths=(32, 64, 96)).eval()
    image = torch.randn(2, 3, 64, 64)
    assert variant.stem(image).shape == (2, 32, 32, 32)
    assert torch.equal(variant.forward_features(image), spelled_out.forward_features(image))
    assert variant.forward_features(image).shape == (2, 96, 4, 4)
