"""Text and image encoders: token counts, prefix tokens, transforms, padding, and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny import (
    IMAGE_SIZE,
    NUM_PATCHES,
    VIT_KWARGS,
    build,
    hf_vision_kwargs,
    image_encoder_config,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_config,
)

from mmgpt.config import ConfigError, ImageEncoderConfig, TextEncoderConfig
from mmgpt.encoders import IMAGE_ENCODERS, TEXT_ENCODERS, build_image_encoder, build_text_encoder, load_transform
from mmgpt.encoders.base import ImageEncoder, ImageTransform, TextEncoder


def encoder(name: str, seed: int = 0, **changes: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_image_encoder(image_encoder_config(name, **changes)).eval()


def pixels(n: int = 2, size: int = IMAGE_SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


# (encoder, config changes, image_len, width)
TOKEN_CASES = [
    ("cnn", {}, NUM_PATCHES, 16),
    ("vit", {}, NUM_PATCHES, 32),
    ("vit", {"keep_prefix_tokens": True}, NUM_PATCHES + 1, 32),
    ("vit", {"kwargs": {**VIT_KWARGS, "reg_tokens": 4}}, NUM_PATCHES, 32),
    ("vit", {"kwargs": {**VIT_KWARGS, "reg_tokens": 4}, "keep_prefix_tokens": True}, NUM_PATCHES + 5, 32),
    ("vit", {"kwargs": {**VIT_KWARGS, "class_token": False, "global_pool": "avg"}}, NUM_PATCHES, 32),
    ("clip", {}, NUM_PATCHES, 32),
    ("clip", {"keep_prefix_tokens": True}, NUM_PATCHES + 1, 32),
    ("siglip", {}, NUM_PATCHES, 32),  # no class token: nothing to drop
    ("siglip", {"keep_prefix_tokens": True}, NUM_PATCHES, 32),
]


@pytest.mark.parametrize("name, changes, image_len, width", TOKEN_CASES)
def test_image_len_is_the_number_of_patches(name: str, changes: dict, image_len: int, width: int) -> None:
    enc = encoder(name, **changes)
    out = enc(pixels())
    assert out.shape == (2, image_len, width)
    assert enc.output_dim == width


@pytest.mark.parametrize("name", ["vit", "clip"])
def test_dropped_prefix_tokens_are_the_leading_ones(name: str) -> None:
    # same seed, same weights: dropping must remove exactly the class token in front of the patches
    x = pixels()
    kept = encoder(name, keep_prefix_tokens=True)(x)
    dropped = encoder(name)(x)
    torch.testing.assert_close(dropped, kept[:, 1:])


def test_vit_register_tokens_are_dropped_with_the_class_token() -> None:
    changes = {"kwargs": {**VIT_KWARGS, "reg_tokens": 4}}
    x = pixels()
    kept = encoder("vit", keep_prefix_tokens=True, **changes)(x)
    dropped = encoder("vit", **changes)(x)
    torch.testing.assert_close(dropped, kept[:, 5:])


def test_patch_tokens_follow_their_patch() -> None:
    # changing one corner patch changes that token most: the tokens are spatial, in row-major order
    enc = encoder("clip")
    x = pixels(1)
    y = x.clone()
    y[..., :8, :8] += 3.0
    change = (enc(y) - enc(x)).abs().sum(-1)[0]
    assert int(change.argmax()) == 0


@pytest.mark.parametrize("name", ["cnn", "vit", "clip", "siglip"])
def test_image_transform_matches_the_encoder_input_and_round_trips(name: str, tmp_path: Path) -> None:
    enc = encoder(name)
    transform = enc.image_transform()
    image = Image.new("RGB", (57, 31), (200, 30, 90))
    out = transform(image)
    assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and out.dtype == torch.float32
    # normalised, not raw 0..255 or 0..1 bytes: the red channel is above the mid-grey, blue below
    assert out[0].mean() > 0 > out[2].mean()
    assert enc(out[None]).shape[1] == NUM_PATCHES
    transform.save(tmp_path)
    assert (tmp_path / "transform.json").is_file()
    assert torch.equal(load_transform(tmp_path)(image), out)


def test_timm_img_size_override_reaches_the_transform() -> None:
    enc = encoder("cnn", kwargs={"widths": [8, 16], "stem_width": 8, "img_size": 48})
    out = enc.image_transform()(Image.new("RGB", (64, 64)))
    assert out.shape == (3, 48, 48)
    assert enc(out[None]).shape == (1, 36, 16)


def test_lm_embeddings_share_the_generator_embedding() -> None:
    model = build(tiny_config("lm_embeddings"))
    assert list(model.text_encoder.parameters()) == []
    assert not [k for k in model.state_dict() if k.startswith("text_encoder.")]
    ids = torch.tensor([[3, 4, 5, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    text, text_mask = model.text_encoder(ids, mask)
    assert torch.equal(text, model.generator.get_input_embeddings()(ids))
    assert torch.equal(text_mask, mask)
    assert model.text_encoder.output_dim == model.generator.config.hidden_size
    assert model.processor.text_tokenizer is None


def test_hf_text_encoder_from_config_reads_the_generator_tokenizer() -> None:
    model = build(tiny_config("bert"))
    enc = model.text_encoder
    tokenizer = model.processor.tokenizer
    assert enc.model.config.vocab_size == len(tokenizer)
    assert enc.model.config.pad_token_id == tokenizer.pad_token_id
    assert enc.output_dim == 24
    batch = model.processor(["what color?", "is there a small green triangle on the left?"],
                            [torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE)] * 2)
    text, mask = enc(batch["input_ids"], batch["attention_mask"])
    assert text.shape == (*batch["input_ids"].shape, 24)
    assert torch.equal(mask, batch["attention_mask"])


def test_hf_text_encoder_is_right_padding_invariant() -> None:
    model = build(tiny_config("bert")).eval()
    enc = model.text_encoder
    batch = model.processor(["what color?", "is there a small green triangle on the left?"],
                            [torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE)] * 2)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask[0].sum() < mask.shape[1], "the first prompt is padded"
    text, _ = enc(ids, mask)
    length = int(mask[0].sum())
    alone, _ = enc(ids[:1, :length], mask[:1, :length])
    torch.testing.assert_close(alone[0], text[0, :length], atol=1e-5, rtol=0)


def test_hf_encoders_have_no_parameters_outside_last_hidden_state() -> None:
    # a pooler or pooling head would never get a gradient (DDP refuses such parameters)
    model = build(tiny_config("bert", "siglip"))
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "pooler" in n or ".head." in n], names
    clip = encoder("clip")
    assert not [n for n, _ in clip.named_parameters() if "post_layernorm" in n]


@pytest.mark.parametrize("field, value, message", [
    ("type", "clip", "unknown model.text_encoder.type 'clip'; available: " + ", ".join(sorted(TEXT_ENCODERS))),
    ("kwargs", {"hidden_size": 8}, "model.text_encoder needs a 'name' (hub name or local folder) or kwargs"),
    ("kwargs", {"model_type": "bertt"}, "model.text_encoder.kwargs.model_type 'bertt'"),
    ("kwargs", {"model_type": "bert", "vocab_size": 7},
     "model.text_encoder.kwargs.vocab_size (7) is smaller than the tokenizer"),
])
def test_bad_text_encoder_config_names_the_key(field: str, value: object, message: str) -> None:
    config = tiny_config("bert")
    setattr(config.text_encoder, field, value)
    with pytest.raises(ConfigError) as info:
        build(config)
    assert message in str(info.value)
    if "model_type 'bertt'" in message:
        # the known types are listed
        assert "bert" in str(info.value).split("bertt", 2)[-1] and "roberta" in str(info.value)


def test_unknown_image_encoder_type_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as info:
        build_image_encoder(ImageEncoderConfig(type="resnet"))
    assert "unknown model.image_encoder.type 'resnet'; available: " + ", ".join(sorted(IMAGE_ENCODERS)) in str(
        info.value)


def test_unknown_timm_model_names_the_key_and_suggests_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_image_encoder(ImageEncoderConfig(type="timm", name="resnet_18"))
    message = str(info.value)
    assert "model.image_encoder.name" in message and "'resnet_18' is not a timm model" in message
    # close matches among timm's models
    assert "resnet18" in message


def test_hf_vision_tower_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.image_encoder\.kwargs needs 'model_type'"):
        build_image_encoder(ImageEncoderConfig(type="hf", name="", kwargs={"hidden_size": 32}))
    with pytest.raises(ConfigError) as info:
        build_image_encoder(ImageEncoderConfig(type="hf", name="", kwargs=hf_vision_kwargs("clip_vison_model")))
    message = str(info.value)
    assert "model.image_encoder.kwargs.model_type 'clip_vison_model'" in message
    assert "clip_vision_model" in message and "siglip_vision_model" in message


def test_hf_tower_from_kwargs_with_a_leftover_name_fails_before_any_download() -> None:
    # the default name is a timm model; switching only the type must not send it to the hub
    cfg = ImageEncoderConfig(type="hf", kwargs=hf_vision_kwargs("clip_vision_model"))
    assert cfg.name == "mmgpt_tiny_cnn_s2d"
    with pytest.raises(ConfigError) as info:
        build_image_encoder(cfg)
    message = str(info.value)
    assert "model.image_encoder.name 'mmgpt_tiny_cnn_s2d' is a timm model" in message and "to ''" in message


def test_missing_timm_weights_file_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = image_encoder_config("cnn", weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match=r"model\.image_encoder\.weights: no \.safetensors file or saved model "
                                          rf"folder at {tmp_path}/nope.safetensors$"):
        build_image_encoder(cfg)
    # a relative path is read from the working folder, which the message names
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"at runs/default/model \(relative to the working folder {tmp_path}\)"):
        build_image_encoder(image_encoder_config("cnn", weights="runs/default/model"))


def test_build_text_encoder_rejects_unknown_type_before_building() -> None:
    with pytest.raises(ConfigError, match="available: hf, lm_embeddings"):
        build_text_encoder(TextEncoderConfig(type="t5"), generator=None, tokenizer=None)


def _subclass(base: type, members: dict[str, object]) -> type:
    """A subclass of `base` that defines only `members`."""
    return type(f"Partial{base.__name__}", (base,), members)


def _output_dim(self: object) -> int:
    return 4


def _text_forward(self: object, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
    return input_ids, attention_mask


def _image_forward(self: object, pixel_values: torch.Tensor) -> torch.Tensor:
    return pixel_values


TEXT_MEMBERS = {"output_dim": property(_output_dim), "forward": _text_forward}
IMAGE_MEMBERS = {"output_dim": property(_output_dim), "forward": _image_forward, "image_transform": lambda self: None}


@pytest.mark.parametrize("base, members", [(TextEncoder, TEXT_MEMBERS), (ImageEncoder, IMAGE_MEMBERS)])
def test_an_encoder_missing_an_interface_member_cannot_be_built(base: type, members: dict[str, object]) -> None:
    # with every member it builds and reports its width
    assert _subclass(base, members)().output_dim == 4
    for missing in members:
        partial = _subclass(base, {k: v for k, v in members.items() if k != missing})
        with pytest.raises(TypeError, match=f"abstract.*{missing}"):
            partial()


def test_an_image_transform_missing_save_or_load_cannot_be_built() -> None:
    members = {"__call__": lambda self, image: image, "save": lambda self, folder: None,
               "load": classmethod(lambda cls, folder: cls())}
    assert isinstance(_subclass(ImageTransform, members).load(Path(".")), ImageTransform)
    for missing in members:
        with pytest.raises(TypeError, match=f"abstract.*{missing}"):
            _subclass(ImageTransform, {k: v for k, v in members.items() if k != missing})()


def test_timm_weights_from_a_saved_model_folder(tmp_path: Path) -> None:
    model = build(tiny_config())
    with torch.no_grad():  # away from a fresh build's values, so a copy and a new init differ
        for tensor in model.image_encoder.model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    encoder = build_image_encoder(image_encoder_config("cnn", weights=str(folder)))
    saved = model.image_encoder.model.state_dict()
    loaded = encoder.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # running statistics too

    with pytest.raises(ConfigError, match=r"holds a timm image encoder 'mmgpt_tiny_cnn', not the timm model "
                                          r"'mmgpt_tiny_cnn_s2d'"):
        build_image_encoder(ImageEncoderConfig(type="timm", name="mmgpt_tiny_cnn_s2d", weights=str(folder)))
    with pytest.raises(ConfigError, match="does not fit the one configured here"):
        build_image_encoder(image_encoder_config("cnn", weights=str(folder), kwargs={"widths": [8, 16]}))
    with pytest.raises(ConfigError, match="is a folder but not a saved mmgpt model"):
        build_image_encoder(image_encoder_config("cnn", weights=str(tmp_path)))
