"""mmgpt.explain on tiny models: every fusion's method gives per-token maps that are distributions over the grid."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny import build, one_thread, tiny_config  # noqa: F401 (autouse fixture)

from mmgpt import explain as explaining
from mmgpt.fusion import FUSIONS
from mmgpt.inference import question_batch

METHODS = {"cross_attention": "fusion attention", "gated_cross_attention": "fusion attention",
           "film": "fusion attention", "concat": "generator attention"}


def picture() -> Image.Image:
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    image.paste((220, 30, 30), (2, 18, 14, 30))
    return image


def tiny_model(fusion: str) -> torch.nn.Module:
    model = build(tiny_config(fusion=fusion)).eval()
    with torch.no_grad():  # open Flamingo-style gates, else the image cannot reach the answer at all
        for name, parameter in model.fusion.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.5)
    return model


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_every_fusion_gives_a_distribution_per_answer_token(fusion: str) -> None:
    model = tiny_model(fusion)
    result = explaining.explain(model, picture(), "what color is the shape?", answer="a small green triangle")
    assert result.method == METHODS.get(fusion, "grad-cam")
    count = len(result.token_ids)
    assert count >= 2 and len(result.tokens) == count
    # the tiny image encoders give a 4x4 grid of tokens for 32 px images
    assert result.maps.shape == (count, 4, 4)
    assert (result.maps >= 0).all()
    torch.testing.assert_close(result.maps.sum(dim=(1, 2)), torch.ones(count))
    # not a constant: the map says something about the image
    assert result.maps.flatten(1).std(dim=1).max() > 1e-6
    if result.method == "grad-cam":
        assert result.layer_maps is None
    else:
        layers = 1 if fusion != "concat" else len(model.generator.model.layers)
        assert result.layer_maps.shape == (count, layers, 4, 4)
        torch.testing.assert_close(result.layer_maps.sum(dim=(2, 3)), torch.ones(count, layers))
    # no parameter gradients were left behind by Grad-CAM
    assert all(p.grad is None for p in model.parameters())


def test_image_prefix_maps_add_the_generators_own_look_at_the_image() -> None:
    model = several_images_model("cross_attention+image_prefix", max_images=1)
    result = explaining.explain(model, picture(), "what color is the shape?", answer="a small green triangle")
    count = len(result.token_ids)
    # one map per fusion layer, then the generator's direct attention to the image tokens of its prefix
    assert result.method == "fusion attention" and result.layer_maps.shape == (count, 2, 4, 4)
    torch.testing.assert_close(result.layer_maps.sum(dim=(2, 3)), torch.ones(count, 2))
    torch.testing.assert_close(result.maps, result.layer_maps.mean(dim=1))
    assert result.layer_maps[:, 1].flatten(1).std(dim=1).max() > 1e-6


def test_attention_maps_are_the_fusion_weights_mixed_by_the_generator() -> None:
    model = tiny_model("cross_attention")
    layer = model.fusion.layers[0]
    batch = question_batch(model, ["what color is the shape?"], [picture()])
    result = explaining.explain(model, picture(), "what color is the shape?", answer="red")
    # recompute the fusion's attention by hand: text queries over the normalised image tokens (+ the null key)
    with torch.no_grad():
        text, _ = model.text_encoder(batch["input_ids"], batch["attention_mask"])
        text, image = model.fusion.project(text, model.image_encoder(batch["pixel_values"]))
        _, weights = layer.attention(layer.norm_query(text), layer.norm_image(image), layer.norm_image(image))
    per_text = weights[0, :, :16] / weights[0, :, :16].sum(-1, keepdim=True)
    map_ = result.maps[0].flatten()
    # the token's map is a convex mixture of the text tokens' image distributions
    mixture = torch.linalg.lstsq(per_text.T, map_[:, None]).solution[:, 0]
    torch.testing.assert_close(per_text.T @ mixture, map_, atol=1e-4, rtol=0)
    assert result.answer == "red"


def test_greedy_answer_png_and_html(tmp_path: Path) -> None:
    model = tiny_model("product")
    result = explaining.explain(model, picture(), "is there a circle?", max_new_tokens=3, answer=None)
    assert len(result.token_ids) <= 3
    result = explaining.explain(model, picture(), "is there a circle?", answer="no")
    written = explaining.save_explanation(result, tmp_path / "out")
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == len(result.tokens) and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    page = (tmp_path / "out" / "index.html").read_text()
    assert "is there a circle?" in page and "<b>A:</b> no " in page
    assert all(p.name in page for p in pngs)


def test_a_captions_page_and_punctuation_tokens_file_names(tmp_path: Path) -> None:
    result = explaining.explain(tiny_model("product"), picture(), "", answer="no")
    # a caption (empty question) with a punctuation token and a word token, as a trained captioner ends one
    result = dataclasses.replace(result, tokens=["red", ".", " "], maps=result.maps[:1].repeat(3, 1, 1))
    written = explaining.save_explanation(result, tmp_path / "out")
    assert [p.name for p in written] == ["token_00_red.png", "token_01_u002e.png", "token_02_u0020.png", "index.html"]
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<b>Caption:</b> no " in page and "<b>Q:</b>" not in page and "<title>caption</title>" in page


def test_command_line_writes_the_maps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny_model("concat")
    model.save_pretrained(tmp_path / "model")
    picture().save(tmp_path / "red.png")
    from mmgpt.cli import main

    code = main(["explain", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "red.png"),
                 "--max-new-tokens", "2", "--out", str(tmp_path / "maps"), "what color is the shape?"])
    assert code == 0
    out = capsys.readouterr().out
    assert "generator attention maps" in out and (tmp_path / "maps" / "index.html").is_file()
    missing = main(["explain", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "none.png"), "q"])
    assert missing == 2 and "none.png" in capsys.readouterr().err


def test_explain_replaces_only_its_own_folder_and_only_with_overwrite(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from mmgpt.cli import main

    tiny_model("concat").save_pretrained(tmp_path / "model")
    picture().save(tmp_path / "red.png")
    site = tmp_path / "site"  # a web site's folder has an index.html too
    site.mkdir()
    (site / "index.html").write_text("<html>my site</html>")

    def explain_into(out: Path, *extra: str) -> int:
        return main(["explain", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "red.png"),
                     "--max-new-tokens", "2", "--out", str(out), *extra, "what color is the shape?"])

    for extra in ([], ["--overwrite"]):
        assert explain_into(site, *extra) == 2
        assert f"{site} is a folder that mmgpt did not write" in capsys.readouterr().err
    assert [p.name for p in site.iterdir()] == ["index.html"]
    assert (site / "index.html").read_text() == "<html>my site</html>"
    assert explain_into(tmp_path / "maps") == 0
    (tmp_path / "maps" / "token_07_stale.png").write_bytes(b"from an earlier, longer answer")
    assert explain_into(tmp_path / "maps") == 2
    assert "earlier mmgpt explanation folder: replace it with --overwrite" in capsys.readouterr().err
    assert explain_into(tmp_path / "maps", "--overwrite") == 0
    assert (tmp_path / "maps" / "index.html").is_file() and not (tmp_path / "maps" / "token_07_stale.png").exists()


@pytest.mark.slow
def test_eval_vqa_explain_adds_maps_to_its_report(tmp_path: Path) -> None:
    from mmgpt.eval import vqa as eval_vqa

    tiny_model("cross_attention").save_pretrained(tmp_path / "model")
    out = tmp_path / "eval.json"
    eval_vqa.evaluate_vqa(["--model", str(tmp_path / "model"), "--max-examples", "3", "--out", str(out), "--explain",
                           "2"])
    page = out.with_suffix(".html").read_text()
    assert "Explained answers (first 2)" in page
    assert page.count("class='explanation'") == 2 and "fusion attention" in page
    plain = tmp_path / "plain.json"
    eval_vqa.evaluate_vqa(["--model", str(tmp_path / "model"), "--max-examples", "3", "--out", str(plain)])
    assert "Explained answers" not in plain.with_suffix(".html").read_text()


def square_picture(cell: int, colour: tuple[int, int, int]) -> Image.Image:
    """A white 32 px image with one 8 px square filling cell `cell` of the encoder's 4x4 grid."""
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    row, col = divmod(cell, 4)
    image.paste(colour, (8 * col, 8 * row, 8 * col + 8, 8 * row + 8))
    return image


def test_masking_the_most_weighted_cell_changes_the_answer_more_than_the_least() -> None:
    """On a model trained to name the colour of one square, the map points at the square: hiding the
    most-weighted cell moves the answer's log-probability more than hiding the least-weighted one."""
    from mmgpt.data.example import Example

    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    question = "what color is the shape?"
    model = build(tiny_config(fusion="cross_attention"), seed=0)
    generator = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 16, (256,), generator=generator).tolist()
    names = [list(colours)[i] for i in torch.randint(0, 2, (256,), generator=generator).tolist()]
    pictures = [square_picture(cell, colours[name]) for cell, name in zip(cells, names)]
    batch = model.processor([question] * 256, pictures, names)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        rows = torch.randint(0, 256, (32,), generator=generator)
        loss = model(**{k: v[rows] for k, v in batch.items()}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    # questions the model never trained on: every cell once, colours alternating
    examples = [Example(image=square_picture(cell, colours[name]), prompt=question, answer=name,
                        meta={"question": question})
                for cell, name in zip(range(0, 16, 2), ["red", "blue"] * 4)]
    answers = [explaining.explain(model, e.image, question).answer for e in examples]
    assert answers == [e.answer for e in examples]  # it learned the task, so its maps are worth testing
    result = explaining.faithfulness(model, examples)
    assert result["examples"] == len(examples)
    assert result["most"] > 2 * result["least"], result


def several_images_model(fusion: str, max_images: int = 2, rows: int = 0, cols: int = 0,
                         shuffle: int = 1) -> torch.nn.Module:
    from mmgpt.config import TilingConfig

    config = tiny_config(fusion=fusion)
    config.max_images = max_images
    config.image_encoder.tiling = TilingConfig(rows=rows, cols=cols)
    config.image_encoder.pixel_shuffle = shuffle
    model = build(config).eval()
    with torch.no_grad():
        for name, parameter in model.fusion.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.5)
    return model


def second_picture() -> Image.Image:
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    image.paste((30, 30, 220), (16, 2, 30, 12))
    return image


@pytest.mark.parametrize("fusion", ["cross_attention", "gated_cross_attention", "concat", "weighted_sum",
                                    "cross_attention+image_prefix"])
def test_one_map_per_image_of_a_several_image_prompt(fusion: str, tmp_path: Path) -> None:
    model = several_images_model(fusion)
    result = explaining.explain(model, [picture(), second_picture()], "same color?", answer="no it is not")
    count = len(result.token_ids)
    assert result.maps.shape == (count, 2, 4, 4) and [label for label, _ in result.views] == ["image 1", "image 2"]
    # a token's maps share one distribution over both images
    assert (result.maps >= 0).all()
    torch.testing.assert_close(result.maps.sum(dim=(1, 2, 3)), torch.ones(count))
    assert (result.maps.sum(dim=(2, 3)) > 0).all()
    if result.layer_maps is not None:
        assert result.layer_maps.shape[2:] == (2, 4, 4)
    # one image in a list of one reads as in a set of one: the same map as that image given alone
    alone = explaining.explain(model, picture(), "same color?", answer="no it is not")
    listed = explaining.explain(model, [picture()], "same color?", answer="no it is not")
    torch.testing.assert_close(listed.maps[:, 0], alone.maps)
    written = explaining.save_explanation(result, tmp_path / "out")
    assert len(written) == count + 1
    assert (tmp_path / "out" / "index.html").read_text().count("alt='image'") == 2
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written[:-1])


@pytest.mark.parametrize("fusion,shuffle,grid", [("cross_attention", 2, (2, 2)), ("concat", 1, (4, 4)),
                                                 ("weighted_sum", 2, (4, 4)),
                                                 ("cross_attention+image_prefix", 2, (2, 2))])
def test_one_map_per_tile(fusion: str, shuffle: int, grid: tuple[int, int]) -> None:
    model = several_images_model(fusion, max_images=1, rows=1, cols=2, shuffle=shuffle)
    result = explaining.explain(model, picture(), "what color is the shape?", answer="red circle")
    count = len(result.token_ids)
    # the whole image and its two tiles; pixel shuffle merges 2x2 tokens (Grad-CAM stays on the encoder's grid)
    assert result.maps.shape == (count, 3, *grid)
    assert [label for label, _ in result.views] == ["image", "image tile 1,1", "image tile 1,2"]
    assert all(view.size == (32, 32) for _, view in result.views)
    torch.testing.assert_close(result.maps.sum(dim=(1, 2, 3)), torch.ones(count))
    assert len(explaining.token_png(result, 0)) > 0


def test_film_refuses_several_images_naming_the_fusion() -> None:
    model = several_images_model("film")
    with pytest.raises(ValueError, match="fusion 'film' over several images"):
        explaining.explain(model, [picture(), second_picture()], "same color?", answer="no")


def test_command_line_takes_several_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    several_images_model("concat").save_pretrained(tmp_path / "model")
    picture().save(tmp_path / "a.png")
    second_picture().save(tmp_path / "b.png")
    from mmgpt.cli import main

    code = main(["explain", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "a.png"),
                 "--image", str(tmp_path / "b.png"), "--max-new-tokens", "2", "--out", str(tmp_path / "maps"),
                 "same color?"])
    assert code == 0
    assert (tmp_path / "maps" / "index.html").read_text().count("alt='image'") == 2
