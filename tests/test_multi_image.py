"""Several images per prompt: batches, slots, image identity, readers, answer(); one-image models unchanged."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import FUSION_NAMES, build, one_thread, random_images, tiny_config  # noqa: F401

from mmgpt import cli
from mmgpt.config import ConfigError, FusionConfig, ImageEncoderConfig, PromptTemplates, TilingConfig
from mmgpt.data.dataset import check_images
from mmgpt.data.formats import read_dataset
from mmgpt.data.spec import DatasetSpec
from mmgpt.fusion import concat
from mmgpt.fusion.base import ImageLayout, build_fusion
from mmgpt.images import tile_views
from mmgpt.inference import answer
from mmgpt.projector import pixel_shuffle
from mmgpt.prompts import IMAGE_SLOT, conversation_prompt, question_prompt

FIXTURE = Path(__file__).parent / "data" / "one_image_model"
PROMPTS = ["what color is the shape?", "is there a circle?", "how many shapes are there?"]


def several_images_model(fusion: str = "cross_attention", max_images: int = 3):
    config = tiny_config(fusion=fusion)
    config.max_images = max_images
    return build(config).eval()


def prefix(model, batch):
    return model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                               image_mask=batch.get("image_mask"), image_slots=batch.get("image_slots"))


@pytest.mark.parametrize("fusion", [*FUSION_NAMES, "cross_attention+image_prefix"])
def test_mixed_image_counts_equal_each_alone(fusion):
    model = several_images_model(fusion)
    images = random_images(model, 4)
    sets = [[images[0]], [images[1], images[2], images[3]], [images[0], images[1]]]
    batch = model.processor(PROMPTS, sets, ["red", "yes", "no"])
    assert batch["pixel_values"].shape[:2] == (3, 3) and batch["image_mask"].tolist() == [[1, 0, 0], [1, 1, 1],
                                                                                          [1, 1, 0]]
    together, mask = prefix(model, batch)
    for i in range(3):
        alone, alone_mask = prefix(model, model.processor([PROMPTS[i]], [sets[i]]))
        n = int(alone_mask.sum())
        assert int(mask[i].sum()) == n  # no image token cut, none of the padding kept
        torch.testing.assert_close(together[i, -n:], alone[0, -n:], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("fusion", ["cross_attention", "concat", "product", "cross_attention+image_prefix"])
def test_image_identity_and_order_reach_the_prefix(fusion):
    model = several_images_model(fusion)
    a, b = random_images(model, 2)
    ab, _ = prefix(model, model.processor(PROMPTS[:1], [[a, b]]))
    ba, _ = prefix(model, model.processor(PROMPTS[:1], [[b, a]]))
    assert not torch.allclose(ab, ba, atol=1e-4)  # "the first image" and "the second" differ


def test_each_distinct_image_encoded_once():
    model = several_images_model()
    a, b, c = random_images(model, 3)
    seen = []
    model.image_encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    prefix(model, model.processor(PROMPTS[:2], [[a, b], [b, c, a]]))
    assert seen == [3]  # five image slots, three distinct images, padding never encoded


def test_concat_puts_each_image_at_its_slot():
    text_mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    layout = ImageLayout(mask=torch.tensor([[1, 1, 0]]), slots=torch.tensor([[1, 3, 0]]), tokens_per_image=2)
    order = concat._order(text_mask, layout)[0].tolist()
    # [image tokens 0..5 (image 2 is padding), text 6..11]: t0, image 0, t1, t2, image 1, t3, t4, then padding
    assert order[:9] == [6, 0, 1, 7, 8, 2, 3, 9, 10]
    assert sorted(order[9:]) == [4, 5, 11]
    fusion = build_fusion(FusionConfig(type="concat", dim=8), 8, 8, max_images=3)
    _, mask = fusion(torch.randn(1, 6, 8), text_mask, torch.randn(1, 6, 8), layout)
    assert mask[0].tolist() == [1] * 9 + [0] * 3


def test_placeholders_become_slots_typed_text_never_does():
    model = several_images_model("concat")
    a, b = random_images(model, 2)
    # typed by a user, "<image>" and even the slot character are text: no slot, images first
    typed = question_prompt(f"is <image> {IMAGE_SLOT}red?", PromptTemplates())
    assert IMAGE_SLOT not in typed and "<image>" in typed
    assert IMAGE_SLOT not in conversation_prompt([("user", f"a {IMAGE_SLOT} b")])
    batch = model.processor([typed], [[a, b]])
    assert batch["image_slots"].tolist() == [[0, 0]]
    placed = model.processor([f"first {IMAGE_SLOT} then {IMAGE_SLOT} which is red?"], [[a, b]])
    ids = placed["input_ids"][0].tolist()
    slots = placed["image_slots"][0].tolist()
    assert 0 < slots[0] < slots[1] < len(ids)
    assert model.processor.tokenizer.decode(ids[slots[0]:slots[1]]).strip() == "then"
    with pytest.raises(ValueError, match="1 image placeholders but 2 images"):
        model.processor([f"only {IMAGE_SLOT} one"], [[a, b]])
    with pytest.raises(ValueError, match="not cut"):
        model.processor([f"{IMAGE_SLOT} " + "red " * 100 + IMAGE_SLOT], [[a, b]])
    with pytest.raises(ValueError, match="max_images=3"):
        prefix(model, model.processor(PROMPTS[:1], [[a, b, a, b]]))


def write_images(folder: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    return names


def test_jsonl_images_and_placeholders(tmp_path):
    names = write_images(tmp_path, 3)
    records = [
        {"images": names[:2], "prompt": "same color?", "answer": "no"},
        {"images": names, "conversations": [
            {"role": "user", "content": "<image> what is it?"}, {"role": "assistant", "content": "a square"},
            {"role": "user", "content": "and <image> <image>?"}, {"role": "assistant", "content": "two more"}]},
        {"image": names[0], "prompt": "what is <image>?", "answer": "text"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    examples = read_dataset(DatasetSpec(format="jsonl", path=str(tmp_path / "d.jsonl")))
    assert [len(e.image) if isinstance(e.image, list) else 1 for e in examples] == [2, 1, 3, 1]
    assert IMAGE_SLOT not in examples[0].prompt and examples[2].prompt.count(IMAGE_SLOT) == 3
    assert examples[3].prompt == "what is <image>?"  # a one-image record has no placeholders
    kept, report = check_images(examples, lambda p: torch.zeros(3, 4, 4), cache=True, max_bad_fraction=0.0,
                                progress=False)
    assert report.total == 3 and len(kept) == 4 and isinstance(kept[1].image, list)
    bad = [{"images": names[:2], "prompt": "<image> only one", "answer": "x"}]
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad[0]) + "\n")
    with pytest.raises(ValueError, match=r"line 1.*1 <image> placeholders for 2 images"):
        read_dataset(DatasetSpec(format="jsonl", path=str(tmp_path / "bad.jsonl")))


def test_answer_with_several_images(tmp_path, capsys):
    model = several_images_model("concat")
    model.save_pretrained(tmp_path / "m")
    a, b = (np.full((32, 32, 3), v, dtype=np.uint8) for v in (30, 220))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    argv = ["answer", "--model", str(tmp_path / "m"), "--image", str(tmp_path / "a.png"), "--image",
            str(tmp_path / "b.png"), "--max-new-tokens", "4", "same color?"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == answer("same color?", images=[a, b], model=str(tmp_path / "m"),
                                                     max_new_tokens=4)
    one = answer("same color?", images=[a, b], model=str(tmp_path / "m"), max_new_tokens=4)
    batched = answer(["same color?", "is there a circle?"], images=[[a, b], [b]], model=str(tmp_path / "m"),
                     max_new_tokens=4)
    assert isinstance(one, str) and batched[0] == one
    assert batched[1] == answer("is there a circle?", images=[b], model=str(tmp_path / "m"), max_new_tokens=4)
    with pytest.raises(TypeError, match="either image or images"):
        answer("x", a, images=[a], model=str(tmp_path / "m"))


def test_one_image_model_saved_before_gives_the_same_answers():
    # saved, and its answers recorded, by mmgpt before prompts could hold several images
    expected = json.loads((FIXTURE / "answers.json").read_text())
    images = [np.asarray(Image.open(FIXTURE / f"image{i}.png").convert("RGB")) for i in range(3)]
    got = answer(expected["questions"], images, model=str(FIXTURE / "model"),
                 max_new_tokens=expected["max_new_tokens"])
    assert got == expected["answers"]


def test_one_image_config_adds_no_parameters():
    one = build(tiny_config())
    assert one.config.max_images == 1 and not any("image_index" in k for k in one.state_dict())
    batch = one.processor(PROMPTS, random_images(one, 3))
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    assert any("image_index" in k for k in several_images_model().state_dict())


def tiled_model(fusion: str = "cross_attention", rows: int = 2, cols: int = 3, shuffle: int = 1, max_images: int = 1):
    config = tiny_config(fusion=fusion)
    config.max_images = max_images
    config.image_encoder.tiling = TilingConfig(rows=rows, cols=cols)
    config.image_encoder.pixel_shuffle = shuffle
    return build(config).eval()


def test_tile_views_cut_the_resized_grid():
    image = Image.new("RGB", (60, 40))
    for x in range(60):
        for y in range(40):
            image.putpixel((x, y), (x * 4, y * 6, 0))
    whole, *tiles = tile_views(image, (8, 8), 2, 3)
    assert whole is image and len(tiles) == 6 and all(t.size == (8, 8) for t in tiles)
    # row by row: the red channel grows along a row of tiles, the green one down a column
    red = [np.asarray(t)[..., 0].mean() for t in tiles]
    green = [np.asarray(t)[..., 1].mean() for t in tiles]
    assert red[0] < red[1] < red[2] and green[0] < green[3]


def test_tiling_gives_views_marked_by_position_and_reloads(tmp_path):
    model = tiled_model(rows=2, cols=3, max_images=2)
    assert model.processor.views == 7 and model.fusion.view_position.num_embeddings == 7
    big = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    batch = model.processor(PROMPTS[:2], [big, [big, big[::-1].copy()]])
    assert batch["pixel_values"].shape[:2] == (2, 14)
    assert batch["image_mask"].sum(1).tolist() == [7, 14]
    # the whole image is the first view, downscaled; the tiles follow
    whole = model.processor.image_transform(Image.fromarray(big))
    torch.testing.assert_close(batch["pixel_values"][0, 0], whole)
    out, mask = prefix(model, batch)
    # swapping two tiles changes the prefix: each tile's tokens carry its position
    swapped = {**batch, "pixel_values": batch["pixel_values"][:, [0, 2, 1, *range(3, 14)]]}
    assert not torch.allclose(prefix(model, swapped)[0][0], out[0], atol=1e-5)
    model.save_pretrained(tmp_path / "m")
    again = type(model).from_pretrained(tmp_path / "m").eval()
    assert again.processor.tiling == (2, 3)
    torch.testing.assert_close(prefix(again, again.processor(PROMPTS[:2], [big, [big, big[::-1].copy()]]))[0], out)
    with pytest.raises(ValueError, match="tiles"):
        model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"][:, 0])


def test_pixel_shuffle_cuts_tokens_keeps_every_value():
    tokens = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    shuffled = pixel_shuffle(tokens, 2)
    assert shuffled.shape == (2, 4, 12)
    assert sorted(shuffled.flatten().tolist()) == sorted(tokens.flatten().tolist())
    # the first token holds the top-left 2x2 block of the 4x4 grid: tokens 0, 1, 4, 5
    assert shuffled[0, 0].reshape(4, 3)[:, 0].tolist() == [0.0, 3.0, 12.0, 15.0]
    with pytest.raises(ConfigError, match="pixel_shuffle=3"):
        pixel_shuffle(tokens, 3)
    model = tiled_model("concat", rows=1, cols=2, shuffle=2)
    # concat's prefix: 3 views of 2x2 tokens (a 4x4 grid shuffled) and the text
    assert model.prefix_length(5) == 3 * 4 + 5


def test_stream_answer_counts_a_tiled_image_once_in_its_length_check():
    from mmgpt.inference import stream_answer

    config = tiny_config(fusion="concat")  # the prefix holds every view's tokens
    config.image_encoder.tiling = TilingConfig(2, 2)
    config.generator.kwargs["max_position_embeddings"] = 512
    model = build(config).eval()
    image = Image.new("RGB", (50, 50), (200, 30, 30))
    batch = model.processor([model.config.caption_prompt], [image])
    with torch.no_grad():
        positions = int(prefix(model, batch)[1].sum())
    longest = model.max_positions - positions
    assert "".join(stream_answer("", image, model=model, max_new_tokens=longest)) == \
        answer("", image, model=model, max_new_tokens=longest)
    with pytest.raises(ValueError, match=f"max_new_tokens={longest + 1} is over this model's limit of {longest}"):
        stream_answer("", image, model=model, max_new_tokens=longest + 1)


def test_tiling_config_errors():
    with pytest.raises(ConfigError, match="rows and cols"):
        TilingConfig(rows=2, cols=0)
    with pytest.raises(ConfigError, match="pixel_shuffle"):
        ImageEncoderConfig(pixel_shuffle=0)


def test_nanovlm_tiles_preset_on_stand_ins(tmp_path):
    from standins import causal_lm, vision_tower

    from mmgpt.model import MMGPT
    from mmgpt.training.config import load_train_config

    config = load_train_config("nanovlm222m_tiles").model
    assert (config.image_encoder.tiling.rows, config.image_encoder.tiling.cols) == (2, 2)
    assert config.image_encoder.pixel_shuffle == 2 and config.fusion.type == "concat"
    # the hub parts replaced by one-layer stand-ins of the same kinds (32 px SigLIP: a 4 x 4 token grid)
    config.image_encoder.name = str(vision_tower("siglip", tmp_path / "siglip"))
    config.generator.name = str(causal_lm("llama", tmp_path / "llama"))
    config.fusion.dim, config.fusion.num_heads = 32, 2
    model = MMGPT.from_config(config).eval()
    big = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    batch = model.processor(["what color is the shape in the center?"], [big], ["red"])
    assert batch["pixel_values"].shape[:2] == (1, 5)
    _, mask = prefix(model, batch)
    text = int(batch["attention_mask"].sum())
    assert int(mask.sum()) == 5 * 4 + text == model.prefix_length(text)  # 5 views of 2 x 2 shuffled tokens
    assert torch.isfinite(model(**batch).loss)


def test_one_image_reads_the_same_alone_or_beside_several():
    model = several_images_model("concat")
    a, b = random_images(model, 2)
    alone, alone_mask = prefix(model, model.processor(PROMPTS[:1], [a]))
    mixed, mixed_mask = prefix(model, model.processor(PROMPTS[:2], [a, [a, b]]))
    n = int(alone_mask.sum())
    assert int(mixed_mask[0].sum()) == n
    torch.testing.assert_close(mixed[0, -n:], alone[0, -n:])


def test_cached_pixels_of_one_view_are_never_taken_for_tiles():
    from mmgpt.data.pixel_cache import processor_identity

    single, tiled = build(tiny_config()), tiled_model(rows=2, cols=2)
    assert processor_identity(single.processor) != processor_identity(tiled.processor)
    tiled.processor.tiling = (0, 0)
    assert processor_identity(single.processor) == processor_identity(tiled.processor)


def test_multi_image_jsonl_evaluates_like_any_set(tmp_path):
    from mmgpt.eval.runner import generate_answers, mean_loss, score

    model = several_images_model()
    names = write_images(tmp_path, 3)
    lines = [{"images": names[:2], "prompt": "same color?", "answer": "no"},
             {"images": names, "prompt": "<image> <image> <image> which is red?", "answer": "first"},
             {"image": names[2], "prompt": "what color?", "answer": "red"}]
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    examples = read_dataset(DatasetSpec(format="jsonl", path=str(tmp_path / "e.jsonl")))
    predictions = generate_answers(model, examples, batch_size=2, max_new_tokens=3)
    alone = [generate_answers(model, [e], max_new_tokens=3)[0] for e in examples]
    assert predictions == alone  # batching mixed image counts changes no answer
    assert np.isfinite(mean_loss(model, examples, batch_size=2))
    assert "vqa_exact_match" in score(examples, predictions)


def test_saved_config_names_the_new_settings_only_when_used(tmp_path):
    build(tiny_config()).save_pretrained(tmp_path / "one")
    saved = json.loads((tmp_path / "one" / "config.json").read_text())["model"]
    # a one-image folder is what earlier versions wrote, so they can read it
    assert "max_images" not in saved and not {"tiling", "pixel_shuffle"} & set(saved["image_encoder"])
    model = tiled_model(rows=1, cols=2, shuffle=2, max_images=2)
    model.save_pretrained(tmp_path / "tiled")
    saved = json.loads((tmp_path / "tiled" / "config.json").read_text())["model"]
    assert saved["max_images"] == 2 and saved["image_encoder"]["tiling"] == {"rows": 1, "cols": 2}
    again = type(model).from_pretrained(tmp_path / "tiled")
    assert again.config == model.config


def test_server_takes_several_image_parts_checked_before_decoding(tmp_path, monkeypatch):
    from test_serve import NAME, data_url, png, post, running_server

    import mmgpt.serve.conversation as conversation
    from mmgpt.serve.app import create_app
    from mmgpt.serve.settings import ServerSettings

    model = several_images_model("concat")
    a, b = png((200, 30, 30)), png((30, 30, 200), box=8)
    parts = [{"type": "image_url", "image_url": {"url": data_url(x)}} for x in (a, b, a)]
    question = "same color?"
    with running_server(model, max_images_per_prompt=2) as url:
        two = post(url, {"model": NAME, "max_tokens": 4, "messages": [
            {"role": "user", "content": [parts[0], {"type": "text", "text": question}, parts[1]]}]}).json()
        assert two["choices"][0]["message"]["content"] == answer(question, images=[a, b], model=model,
                                                                 max_new_tokens=4)
        text_tokens = len(model.processor.prompt_ids(question))
        # concat: both images' tokens and the text
        assert two["usage"]["prompt_tokens"] == model.prefix_length(text_tokens, 2) > model.prefix_length(text_tokens)
        decoded = []
        real = conversation.image_bytes
        monkeypatch.setattr(conversation, "image_bytes", lambda *args: decoded.append(args) or real(*args))
        three = post(url, {"model": NAME, "messages": [{"role": "user", "content": [
            parts[0], {"type": "text", "text": question}]}, {"role": "assistant", "content": "no"},
            {"role": "user", "content": [parts[1], parts[2], {"type": "text", "text": "and now?"}]}]})
        assert three.status_code == 400 and three.json()["error"]["code"] == "too_many_images"
        assert decoded == []  # refused before any image was decoded
    with pytest.raises(ValueError, match="max-images-per-prompt 4"):
        create_app(model, ServerSettings(model_name=NAME, max_images_per_prompt=4))


def test_server_caches_each_image_under_its_own_key(monkeypatch):
    """A chat re-sending one of its two images with a new one: only the new one is encoded."""
    from test_serve import NAME, data_url, encoded_images, metric, png, post, running_server

    model = several_images_model("cross_attention")
    a, b, c = png((200, 30, 30)), png((30, 30, 200), box=8), png((30, 200, 30), box=4)

    def ask(images, question):
        parts = [{"type": "image_url", "image_url": {"url": data_url(x)}} for x in images]
        return {"role": "user", "content": [*parts, {"type": "text", "text": question}]}

    with running_server(model, max_wait_ms=1) as url, encoded_images(model) as calls:
        first = post(url, {"model": NAME, "max_tokens": 4, "messages": [ask([a, b], "same color?")]}).json()
        second = post(url, {"model": NAME, "max_tokens": 4, "messages": [
            ask([a, b], "same color?"), {"role": "assistant", "content": "no"}, ask([c], "and now?")]}).json()
        assert metric(url, "mmgpt_image_cache_misses_total") == {"": 3.0}
        assert metric(url, "mmgpt_image_cache_hits_total") == {"": 2.0}
    assert calls == [2, 1]
    assert first["choices"][0]["message"]["content"] == answer("same color?", images=[a, b], model=model,
                                                               max_new_tokens=4)
    prompt = conversation_prompt([("user", "same color?"), ("assistant", "no"), ("user", "and now?")])
    batch = model.processor([prompt], [[a, b, c]])
    expected = model.processor.decode(model.generate(batch["input_ids"], batch["attention_mask"],
                                                     batch["pixel_values"], max_new_tokens=4,
                                                     image_mask=batch["image_mask"], image_slots=batch["image_slots"]))
    assert second["choices"][0]["message"]["content"] == expected[0]


@pytest.mark.parametrize("tiles", [False, True])
def test_server_batch_encodes_each_distinct_image_once(tiles):
    """Requests of one, two and three images over two distinct ones, tiled or not: one encoder call of the two
    images' distinct views, and each answer is answer()'s."""
    from test_serve import png

    from mmgpt.serve.metrics import Metrics
    from mmgpt.serve.worker import Job, Worker

    model = tiled_model(rows=1, cols=2, max_images=3) if tiles else several_images_model("concat")
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = 4  # three images' tokens and the answer within the tiny generator's positions
    a, b = png((10, 200, 10)), png((10, 10, 200), box=3)
    sets = [[a], [a, b], [b, a, b]]
    prompt = question_prompt("same color?", PromptTemplates.from_config(model.config))
    model.prefix_length(1)
    worker = Worker(model, Metrics(), max_batch_size=16, max_wait_ms=1000)
    events = [[] for _ in sets]
    for images, sink in zip(sets, events):
        pixels = [model.processor.image_tensor(x) for x in images]
        worker.submit(Job(prompt=prompt, pixels=pixels[0] if len(pixels) == 1 else pixels,
                          config=config, emit=sink.append))
    calls = []
    handle = model.image_encoder.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    try:
        worker.start()
        worker.stop(timeout=30)
    finally:
        handle.remove()
    views = [v for x in (a, b) for v in model.processor._views(x)]
    assert calls == [len({v.numpy().tobytes() for v in views})] and len(views) == 2 * (3 if tiles else 1)
    for images, sink in zip(sets, events):
        assert sink[-1].choices[0].text == answer("same color?", images=images, model=model, max_new_tokens=4)


def test_eval_vqa_scores_a_multi_image_jsonl_set_by_question_type(tmp_path):
    from mmgpt.eval import vqa as eval_vqa

    model = several_images_model()
    model.save_pretrained(tmp_path / "m")
    names = write_images(tmp_path, 3)
    lines = [{"images": names[:2], "prompt": "same color?", "answer": "no", "meta": {"question_type": "same"}},
             {"images": names, "prompt": "how many are red?", "answer": "two", "meta": {"question_type": "count"}},
             {"images": names[1:], "prompt": "which is red?", "answer": "first", "meta": {"question_type": "which"}}]
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "eval.json"
    record = eval_vqa.evaluate_vqa(["--model", str(tmp_path / "m"),
                                    "--dataset", f"{{format: jsonl, path: {tmp_path}/e.jsonl}}", "--out", str(out),
                                    "--predictions", str(tmp_path / "p.json"), "--max-new-tokens", "3"])
    predictions = [r["answer"] for r in json.loads((tmp_path / "p.json").read_text())]
    assert predictions == [answer(line["prompt"], images=[str(tmp_path / n) for n in line["images"]],
                                  model=str(tmp_path / "m"), max_new_tokens=3) for line in lines]
    from mmgpt.eval.vqa_metrics import normalize_answer

    hits = [normalize_answer(p) == normalize_answer(line["answer"]) for p, line in zip(predictions, lines)]
    metrics = record["metrics"]
    assert metrics["exact_match"] == pytest.approx(100.0 * sum(hits) / 3)
    assert metrics["exact_match_per_question_type"] == {
        line["meta"]["question_type"]: 100.0 * hit for line, hit in zip(lines, hits)}
    assert set(metrics["perQuestionType"]) == {"same", "count", "which"}
    assert json.loads(out.read_text())["questions"].startswith("{format: jsonl")


def test_eval_vqa_dataset_errors(tmp_path):
    from mmgpt.eval import vqa as eval_vqa

    with pytest.raises(SystemExit):  # the whole set comes from --dataset
        eval_vqa.evaluate_vqa(["--dataset", "{format: easy_vqa}", "--split", "train",
                               "--out", str(tmp_path / "o.json")])
    with pytest.raises(ConfigError, match=r"unknown config key '--dataset.splt'"):
        eval_vqa.dataset_spec("{format: easy_vqa, splt: test}")
    with pytest.raises(ConfigError, match="YAML mapping"):
        eval_vqa.dataset_spec("[1, 2]")
    assert eval_vqa.dataset_spec("{format: easy_vqa}", max_examples=5) == DatasetSpec(
        format="easy_vqa", split="test", max_examples=5)
    names = write_images(tmp_path, 2)
    caption = {"image": names[0], "task": "caption", "prompt": "", "answer": "a red square"}
    (tmp_path / "c.jsonl").write_text(json.dumps(caption) + "\n")
    args = eval_vqa.argparse.Namespace(dataset=f"{{format: jsonl, path: {tmp_path}/c.jsonl}}", max_examples=0,
                                       lmms_task=None)
    with pytest.raises(ValueError, match="caption examples; eval_vqa.py scores questions"):
        eval_vqa.read_examples(args)
    (tmp_path / "m.jsonl").write_text(json.dumps({"images": names, "prompt": "same?", "answer": "no"}) + "\n")
    args.dataset, args.lmms_task = f"{{format: jsonl, path: {tmp_path}/m.jsonl}}", str(tmp_path / "task")
    with pytest.raises(ValueError, match="--lmms-task writes one image per question"):
        eval_vqa.read_examples(args)


def test_exact_match_shows_what_the_2017_scorer_misses_on_single_number_word_answers(caplog):
    from mmgpt.data.example import Example
    from mmgpt.eval.vqa import exact_match, official_files
    from mmgpt.eval.vqa_metrics import vqa_score

    examples = [Example(image="x.png", prompt="how many?", answer="two", id=1, meta={"question_type": "count"}),
                Example(image="x.png", prompt="colour?", answer="red", id=2, meta={"question_type": "colour"})]
    questions, annotations, _ = official_files(examples)
    results = [{"question_id": 1, "answer": "two"}, {"question_id": 2, "answer": "Red."}]
    # the official 2017 scorer normalises the answer ("two" -> "2") but not ten agreeing references
    assert vqa_score(questions, annotations, results)["perQuestionType"] == {"count": 0.0, "colour": 100.0}
    assert vqa_score(questions, annotations, results, version="2021")["perQuestionType"]["count"] == 100.0
    with caplog.at_level("WARNING", logger="mmgpt.eval_vqa"):
        scores = exact_match(annotations, results)
    assert scores == {"exact_match": 100.0, "exact_match_per_question_type": {"colour": 100.0, "count": 100.0}}
    assert "1 questions have a single reference answer" in caplog.text and "'two' -> '2'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmgpt.eval_vqa"):
        assert exact_match(annotations, [{"question_id": 1, "answer": "3"}], version="2021")["exact_match"] == 0.0
    assert not caplog.text


def test_training_names_an_example_with_more_images_than_max_images_before_it_starts() -> None:
    from mmgpt.config import ConfigError
    from mmgpt.data.example import Example
    from mmgpt.training.loop import check_examples

    examples = [Example(image="a.png", prompt="q", answer="x", id="line1"),
                Example(image=["a.png", "b.png"], prompt="q", answer="x", id="line2")]
    check_examples([("mine", examples)], max_images=2)
    with pytest.raises(ConfigError, match=r"dataset 'mine': example 'line2' has 2 images, more than "
                                          r"model.max_images=1; raise model.max_images"):
        check_examples([("mine", examples)], max_images=1)


def test_training_warns_of_examples_with_an_empty_answer(caplog: pytest.LogCaptureFixture) -> None:
    from mmgpt.data.example import Example
    from mmgpt.training.loop import check_examples

    examples = [Example(image="a.png", prompt="q", answer=answer, id=f"line{i}")
                for i, answer in enumerate(["x", "", "y", " \n"], start=1)]
    with caplog.at_level("WARNING", logger="mmgpt.train"):
        check_examples([("mine", examples), ("fine", examples[:1])], max_images=1)
    assert [r.getMessage() for r in caplog.records] == [
        "dataset 'mine': 2 of 4 examples have an empty answer (first: 'line2'); they are kept and teach the model "
        "to answer nothing (`mmgpt validate` lists them)"]


@pytest.mark.parametrize("preset, max_images, tiling", [("multi_image_shapes_pretrained", 3, (0, 0)),
                                                         ("highres_shapes_pretrained", 1, (0, 0)),
                                                         ("highres_shapes_tiles_pretrained", 1, (3, 3))])
def test_the_pretrained_presets_start_from_the_main_jobs_cnn_frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    preset: str, max_images: int,
                                                                    tiling: tuple[int, int]) -> None:
    from mmgpt.training.config import load_train_config
    from mmgpt.training.optim import apply_freezing

    stage_one = build(load_train_config("default").model, seed=4)
    stage_one.save_pretrained(tmp_path / "runs" / "default" / "model")
    monkeypatch.chdir(tmp_path)  # the presets name runs/default/model, as the main job writes it
    config = load_train_config(preset)
    assert config.output_dir == f"runs/{preset}"
    assert (config.model.max_images, tuple(vars(config.model.image_encoder.tiling).values())) == (max_images, tiling)
    stage_two = build(config.model, seed=5)
    apply_freezing(stage_two)
    expected = stage_one.image_encoder.state_dict()
    loaded = stage_two.image_encoder.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)
    assert not any(p.requires_grad for p in stage_two.image_encoder.parameters())
    assert all(p.requires_grad for p in stage_two.fusion.parameters())
