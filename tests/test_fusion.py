"""Fusion modules on their own: shapes, masks, padding independence, gradients, and clear errors."""
from __future__ import annotations

import pytest
import torch
from tiny import FUSION_NAMES, one_thread  # noqa: F401 (autouse fixture)

from mmgpt.config import ConfigError, FusionConfig
from mmgpt.fusion import FUSIONS, Fusion, build_fusion

TEXT_DIM, IMAGE_DIM, DIM = 6, 10, 8
# every fusion with its defaults, plus the options that change which tokens a fusion's tokens see
VARIANTS = [(name, {}) for name in FUSION_NAMES] + [("cross_attention", {"text_self_attention": True}),
                                                       ("cross_attention", {"image_prefix": True})]
VARIANT_IDS = [name + "".join(f"-{k}" for k in changes) for name, changes in VARIANTS]


def make(name: str, open_gates: bool = True, **changes: object) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = FusionConfig(type=name, dim=DIM, num_heads=2)
    for key, value in changes.items():
        setattr(cfg, key, value)
    fusion = build_fusion(cfg, text_dim=TEXT_DIM, image_dim=IMAGE_DIM).eval()
    if open_gates:
        open_fusion_gates(fusion)
    return fusion


def open_fusion_gates(fusion: torch.nn.Module) -> None:
    """Set Flamingo-style gates (0 at initialisation, which shuts the image out) to a trained-like 0.5."""
    with torch.no_grad():
        for name, parameter in fusion.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.5)


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(2, 5, TEXT_DIM, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    image = torch.randn(2, 4, IMAGE_DIM, generator=g)
    return text, mask, image


def test_registry_holds_the_required_fusions() -> None:
    assert {"weighted_sum", "product", "cross_attention", "concat", "mlb", "mfb", "mutan", "block", "film",
            "gated_cross_attention"} <= set(FUSIONS)
    for name, cls in FUSIONS.items():
        assert cls.registry_name == name


@pytest.mark.parametrize("name", FUSION_NAMES)
def test_shapes_and_mask(name: str) -> None:
    fusion = make(name)
    text, mask, image = inputs()
    fused, fused_mask = fusion(text, mask, image)
    # concat puts the image tokens in front of the text; the others keep the text length and mask
    length = 4 + 5 if name == "concat" else 5
    assert fused.shape == (2, length, DIM)
    assert fused_mask.shape == (2, length)
    expected_mask = torch.cat([torch.ones(2, 4, dtype=mask.dtype), mask], 1) if name == "concat" else mask
    assert torch.equal(fused_mask, expected_mask)
    assert torch.isfinite(fused).all()
    # padded positions are exactly zero, valid ones are not
    assert (fused[fused_mask == 0] == 0).all()
    assert (fused[fused_mask == 1].abs().sum(-1) > 0).all()


@pytest.mark.parametrize(("name", "changes"), VARIANTS, ids=VARIANT_IDS)
def test_valid_positions_ignore_padding_content_and_length(name: str, changes: dict) -> None:
    fusion = make(name, **changes)
    text, mask, image = inputs()
    fused, fused_mask = fusion(text, mask, image)
    # other values in the padding, plus two more padding positions
    noisy = torch.where(mask.unsqueeze(-1) == 1, text, torch.randn_like(text) * 100)
    longer = torch.cat([noisy, torch.randn(2, 2, TEXT_DIM)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 2, dtype=mask.dtype)], dim=1)
    fused2, fused_mask2 = fusion(longer, longer_mask, image)
    torch.testing.assert_close(fused2[fused_mask2 == 1], fused[fused_mask == 1], atol=1e-6, rtol=0)
    # and each example alone, unpadded, gives its rows of the batch
    alone, alone_mask = fusion(text[:1, :3], mask[:1, :3], image[:1])
    torch.testing.assert_close(alone[alone_mask == 1], fused[:1][fused_mask[:1] == 1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", FUSION_NAMES)
def test_output_depends_on_text_and_image(name: str) -> None:
    fusion = make(name)
    text, mask, image = inputs()
    fused, fused_mask = fusion(text, mask, image)
    other_image, _ = fusion(text, mask, image + torch.randn_like(image))
    other_text, _ = fusion(text + torch.randn_like(text), mask, image)
    valid = fused_mask == 1
    assert (other_image - fused)[valid].abs().max() > 1e-3
    assert (other_text - fused)[valid].abs().max() > 1e-3
    if name != "concat":
        # every text token sees the image (concat leaves that to the generator)
        assert ((other_image - fused).abs().sum(-1)[valid] > 0).all()


@pytest.mark.parametrize(("name", "changes"), VARIANTS, ids=VARIANT_IDS)
def test_every_fusion_parameter_gets_a_gradient(name: str, changes: dict) -> None:
    fusion = make(name, num_layers=2, **changes).train()
    text, mask, image = inputs()
    fused, fused_mask = fusion(text.requires_grad_(), mask, image.requires_grad_())
    (fused * torch.randn_like(fused)).sum().backward()
    dead = [n for n, p in fusion.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, f"no gradient reaches: {dead}"
    assert text.grad[mask == 1].abs().sum() > 0 and image.grad.abs().sum() > 0
    # nothing flows back from padded text positions
    assert (text.grad[mask == 0] == 0).all()


def test_cross_attention_stacks_num_layers() -> None:
    assert len(make("cross_attention", num_layers=3).layers) == 3


@pytest.mark.parametrize("name", FUSION_NAMES)
@pytest.mark.parametrize("which", ["text", "image"])
def test_mismatched_input_width_names_fusion_and_widths(name: str, which: str) -> None:
    fusion = make(name)
    text, mask, image = inputs()
    if which == "text":
        text = torch.randn(2, 5, TEXT_DIM + 1)
        message = f"fusion '{name}' expects text width {TEXT_DIM}, got {TEXT_DIM + 1}"
    else:
        image = torch.randn(2, 4, IMAGE_DIM - 3)
        message = f"fusion '{name}' expects image width {IMAGE_DIM}, got {IMAGE_DIM - 3}"
    with pytest.raises(ValueError) as info:
        fusion(text, mask, image)
    assert message in str(info.value)


def test_unknown_fusion_names_the_key_and_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as info:
        build_fusion(FusionConfig(type="sum"), text_dim=4, image_dim=4)
    message = str(info.value)
    assert "model.fusion.type" in message and "'sum'" in message
    assert "available: " + ", ".join(sorted(FUSIONS)) in message


@pytest.mark.parametrize("dim, heads", [(10, 4), (8, 3)])
def test_cross_attention_dim_must_be_divisible_by_heads(dim: int, heads: int) -> None:
    with pytest.raises(ConfigError) as info:
        build_fusion(FusionConfig(type="cross_attention", dim=dim, num_heads=heads), text_dim=4, image_dim=4)
    message = str(info.value)
    assert f"model.fusion.dim ({dim})" in message and f"model.fusion.num_heads ({heads})" in message
    # zero heads is refused when the config is built, before any fusion sees it
    with pytest.raises(ConfigError, match=r"model\.fusion\.num_heads must be >= 1, got 0"):
        FusionConfig(type="cross_attention", dim=dim, num_heads=0)


def test_cross_attention_needs_a_layer() -> None:
    with pytest.raises(ConfigError, match=r"model\.fusion\.num_layers must be >= 1, got 0"):
        build_fusion(FusionConfig(type="cross_attention", dim=8, num_heads=2, num_layers=0), 4, 4)


@pytest.mark.parametrize("name", FUSION_NAMES)
def test_fusion_dim_must_be_positive(name: str) -> None:
    # refused when the config is built (FusionConfig), before build_fusion's own check
    with pytest.raises(ConfigError, match=r"model\.fusion\.dim must be >= 1, got 0"):
        build_fusion(FusionConfig(type=name, dim=0), text_dim=4, image_dim=4)


def test_image_positions_let_cross_attention_see_where_tokens_are() -> None:
    text, mask, image = inputs()
    swapped = image[:, [1, 0, 2, 3]]
    # without positions the image tokens are a set: reordering them changes nothing
    plain = make("cross_attention")
    torch.testing.assert_close(plain(text, mask, image)[0], plain(text, mask, swapped)[0])
    placed = make("cross_attention", image_positions=True)
    assert not torch.allclose(placed(text, mask, image)[0], placed(text, mask, swapped)[0], atol=1e-4)


def test_image_prefix_puts_the_image_tokens_in_grid_order_before_the_text() -> None:
    text, mask, image = inputs()
    swapped = image[:, [1, 0, 2, 3]]
    # plain cross-attention reads the image tokens as a set: swapping two changes nothing the generator sees
    plain = make("cross_attention")
    torch.testing.assert_close(plain(text, mask, image)[0], plain(text, mask, swapped)[0], atol=1e-5, rtol=1e-5)
    prefixed = make("cross_attention", image_prefix=True)
    fused, fused_mask = prefixed(text, mask, image)
    assert fused.shape == (2, 4 + 5, DIM) and torch.equal(fused_mask, torch.cat([torch.ones(2, 4).long(), mask], 1))
    again, _ = prefixed(text, mask, swapped)
    torch.testing.assert_close(again[:, :4], fused[:, [1, 0, 2, 3]])  # each token where its grid cell is
    torch.testing.assert_close(again[:, 4:], fused[:, 4:], atol=1e-5, rtol=1e-5)
    # the same seed builds the same layers: the text part is plain cross-attention's F
    torch.testing.assert_close(fused[:, 4:], plain(text, mask, image)[0])
    assert (fused[:, 4:][mask == 0] == 0).all()


def test_text_self_attention_lets_each_token_read_the_image_knowing_the_prompt() -> None:
    text, mask, image = inputs()
    other_first_word = text.clone()
    other_first_word[:, 0] += 1.0
    # without it a token's output depends only on that token: a prompt's later words cannot tell prompts apart
    plain = make("cross_attention")
    torch.testing.assert_close(plain(text, mask, image)[0][:, 1:], plain(other_first_word, mask, image)[0][:, 1:])
    mixed = make("cross_attention", text_self_attention=True)
    changed = (mixed(text, mask, image)[0] - mixed(other_first_word, mask, image)[0]).abs().sum(-1)
    assert (changed[mask == 1] > 1e-4).all()


def test_sincos_positions_are_distinct_and_bounded() -> None:
    from mmgpt.fusion.base import sincos_positions

    for length, dim in ((16, 8), (7, 6), (196, 128)):
        codes = sincos_positions(length, dim, torch.device("cpu"), torch.float32)
        assert codes.shape == (length, dim)
        assert codes.abs().max() <= 1.0
        assert torch.cdist(codes, codes).add(torch.eye(length)).min() > 1e-3, "two positions share a code"
    grid = sincos_positions(16, 8, torch.device("cpu"), torch.float32)
    # a square grid: tokens in one column share the column half of the code
    assert torch.equal(grid[0, :4], grid[4, :4]) and not torch.equal(grid[0, 4:], grid[4, 4:])
    with pytest.raises(ConfigError, match="image_positions"):
        sincos_positions(5, 7, torch.device("cpu"), torch.float32)


def test_a_fusion_without_combine_cannot_be_built() -> None:
    cfg = FusionConfig(type="partial", dim=DIM)
    with pytest.raises(TypeError, match="abstract.*combine"):
        type("NoCombine", (Fusion,), {})(cfg, TEXT_DIM, IMAGE_DIM)


def test_the_fused_mask_hook_sets_the_mask_and_the_zeroed_positions() -> None:
    # a new fusion that keeps only the image tokens, with every other one masked out
    def combine(self: Fusion, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return image + 1.0

    def fused_mask(self: Fusion, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1, 0]).repeat(image.shape[0], image.shape[1] // 2)

    text, mask, image = inputs()
    hooked = type("EveryOtherImageToken", (Fusion,), {"combine": combine, "fused_mask": fused_mask})(
        FusionConfig(dim=DIM), TEXT_DIM, IMAGE_DIM
    )
    fused, fused_mask_out = hooked(text, mask, image)
    assert fused.shape == (2, 4, DIM) and torch.equal(fused_mask_out, torch.tensor([[1, 0, 1, 0]] * 2))
    assert (fused[:, 1::2] == 0).all() and (fused[:, ::2] != 0).any()


def test_gated_cross_attention_starts_as_the_text_alone() -> None:
    fusion = make("gated_cross_attention", open_gates=False, num_layers=2)
    text, mask, image = inputs()
    fused, fused_mask = fusion(text, mask, image)
    # every gate is 0: F is LayerNorm(projected text) whatever the image, so a generator sees its text input
    expected = fusion.norm(fusion.text_proj(text)) * mask.unsqueeze(-1)
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(fusion(text, mask, image * 5 + 1)[0], fused)
    gates = {n: p.item() for n, p in fusion.named_parameters() if n.endswith("_gate")}
    assert len(gates) == 4 and set(gates.values()) == {0.0}
    # only the gates learn at first, and a step on them lets the image in
    fusion.train()
    (fusion(text, mask, image)[0] * torch.randn_like(fused)).sum().backward()
    assert all(fusion.get_parameter(n).grad.abs() > 0 for n in gates)
    assert not fusion.layers[0].attention.in_proj_weight.grad.any()
    open_fusion_gates(fusion)
    assert not torch.allclose(fusion(text, mask, image)[0], fused, atol=1e-4)


@pytest.mark.parametrize("name", ["block", "film", "gated_cross_attention"])
def test_blocks_and_heads_must_divide_the_dim(name: str) -> None:
    message = r"model\.fusion\.dim \(10\) must be divisible by model\.fusion\.num_heads \(4\)"
    with pytest.raises(ConfigError, match=message):
        build_fusion(FusionConfig(type=name, dim=10, num_heads=4), text_dim=4, image_dim=4)


def test_film_modulation_follows_the_question_not_its_padding() -> None:
    fusion = make("film")
    text, mask, image = inputs()
    fused = fusion(text, mask, image)[0]
    # another question changes the modulation of the image, hence what a fixed text token pools from it
    other = text.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])
    changed = fusion(other, mask, image)[0]
    assert (changed[:, 0] - fused[:, 0]).abs().max() > 1e-3
