"""save_pretrained / from_pretrained round trips, atomic saving, and loading real (tiny) pretrained parts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny import (
    BERT_CONFIG,
    CNN_KWARGS,
    GENERATOR_CONFIGS,
    TEXTS,
    build,
    make_batch,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_config,
)

import mmgpt.model_folder
from mmgpt.config import (
    ConfigError,
    FusionConfig,
    GeneratorConfig,
    ImageEncoderConfig,
    ModelConfig,
    TextEncoderConfig,
    TokenizerConfig,
)
from mmgpt.model import MMGPT

PROMPTS = ["what color is the shape?", "is there a small green triangle on the left?"]
ANSWERS = ["a big red circle next to a blue square", "no"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def perturb(module: torch.nn.Module, seed: int = 123) -> None:
    """Move every saved tensor (parameters, persistent buffers) away from any fresh initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():  # shares storage with the module
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=g))


def assert_no_pickles(folder: Path) -> None:
    """No pickle-based weight files, by name or by content (pickle or torch.save zip magic)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert not path.name.endswith(PICKLE_SUFFIXES), path
        head = path.read_bytes()[:4]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), f"pickle: {path}"
        assert head != b"PK\x03\x04", f"torch.save zip: {path}"


def assert_same_model(model: MMGPT, loaded: MMGPT, batch: dict[str, torch.Tensor]) -> None:
    """Identical state, logits and greedy tokens."""
    assert loaded.config == model.config
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert not [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    assert torch.equal(model.generate(*args, max_new_tokens=6), loaded.generate(*args, max_new_tokens=6))


ROUND_TRIPS = [
    ("lm_embeddings", "cnn", "cross_attention", "llama"),
    ("bert", "clip", "product", "gpt2"),
    ("bert", "siglip", "weighted_sum", "qwen2"),
    ("lm_embeddings", "vit", "concat", "llama"),
]


@pytest.mark.parametrize("text, image, fusion, generator", ROUND_TRIPS)
def test_round_trip_is_exact(tmp_path: Path, text: str, image: str, fusion: str, generator: str) -> None:
    model = build(tiny_config(text, image, fusion, generator))
    batch = make_batch(model, PROMPTS, ANSWERS)
    # a training-mode pass moves batch-norm statistics; perturbing moves every weight off its init
    model.train()(**batch)
    perturb(model)
    model.eval()
    model.save_pretrained(tmp_path / "model")
    folder = tmp_path / "model"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert_no_pickles(folder)
    loaded = MMGPT.from_pretrained(folder)
    assert not loaded.training
    assert_same_model(model, loaded, batch)
    # the processor comes back too: same tokens, same pixels from a PIL image
    image_in = Image.new("RGB", (40, 24), (250, 20, 120))
    a = model.processor(PROMPTS, [image_in] * 2, ANSWERS)
    b = loaded.processor(PROMPTS, [image_in] * 2, ANSWERS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a scratch hf text encoder reads the generator's tokens, so neither has a tokenizer of its own
    assert loaded.processor.text_tokenizer is None and model.processor.text_tokenizer is None


def test_saving_over_a_folder_replaces_it_atomically(tmp_path: Path) -> None:
    model = build(tiny_config()).eval()
    batch = make_batch(model, PROMPTS, ANSWERS)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    (folder / "stale.txt").write_text("from an older save")
    perturb(model)
    model.save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "no temporary or old folders left"
    assert not (folder / "stale.txt").exists(), "the folder is replaced, not merged into"
    assert_same_model(model, MMGPT.from_pretrained(folder), batch)


def test_a_failed_save_leaves_the_old_folder_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(tiny_config()).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(mmgpt.model_folder, "save_model", fail)
    perturb(model)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(folder)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_from_pretrained_rejects_a_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="needs config.json and model.safetensors"):
        MMGPT.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        MMGPT.from_pretrained(tmp_path / "missing")


def bert_tokenizer():
    """A BERT-style WordPiece tokenizer ([CLS] prompt [SEP]) over a tiny vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w.strip("?.").lower() for t in TEXTS for w in t.split()} | {"?", "."})
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def gpt2_tokenizer():
    """A byte-level BPE with only an eos token, like GPT-2's (no pad, no separate bos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def test_pretrained_parts_load_from_local_folders(tmp_path: Path) -> None:
    """Tiny HF BERT, HF GPT-2 and timm weights saved to disk, loaded through the fields a hub name uses."""
    import timm
    from transformers import AutoConfig, BertModel, GPT2LMHeadModel

    torch.manual_seed(7)
    bert_dir, lm_dir, weights = tmp_path / "bert", tmp_path / "gpt2", tmp_path / "cnn.safetensors"
    bert_tok = bert_tokenizer()
    bert = BertModel(AutoConfig.for_model(**{**BERT_CONFIG, "vocab_size": len(bert_tok), "pad_token_id": 0}))
    perturb(bert)
    bert.save_pretrained(bert_dir)
    bert_tok.save_pretrained(bert_dir)

    lm_tok = gpt2_tokenizer()
    lm_config = {**GENERATOR_CONFIGS["gpt2"], "vocab_size": len(lm_tok), "eos_token_id": lm_tok.eos_token_id}
    lm = GPT2LMHeadModel(AutoConfig.for_model(**lm_config))
    perturb(lm)
    lm.save_pretrained(lm_dir)
    lm_tok.save_pretrained(lm_dir)

    cnn_kwargs = {k: v for k, v in CNN_KWARGS.items() if k != "img_size"}
    cnn = timm.create_model("mmgpt_tiny_cnn", num_classes=0, **cnn_kwargs)
    perturb(cnn)
    save_file(cnn.state_dict(), str(weights))

    config = ModelConfig(
        text_encoder=TextEncoderConfig(type="hf", name=str(bert_dir), max_length=16),
        image_encoder=ImageEncoderConfig(type="timm", name="mmgpt_tiny_cnn", weights=str(weights),
                                         kwargs=dict(CNN_KWARGS)),
        fusion=FusionConfig(type="cross_attention", dim=16, num_heads=2),
        generator=GeneratorConfig(name=str(lm_dir)),
        max_answer_length=8,
    )
    model = MMGPT.from_config(config).eval()  # no train_texts: every tokenizer comes from disk

    # the weights are the saved ones, parameters and buffers alike
    assert torch.equal(model.generator.transformer.h[0].attn.c_attn.weight, lm.transformer.h[0].attn.c_attn.weight)
    for part, saved in ((model.generator, lm), (model.text_encoder.model, bert), (model.image_encoder.model, cnn)):
        loaded_state = part.state_dict()
        saved_state = {k: v for k, v in saved.state_dict().items() if not k.startswith("pooler.")}
        assert saved_state.keys() <= loaded_state.keys()
        assert not [k for k in saved_state if not torch.equal(saved_state[k], loaded_state[k])], type(saved)
    assert torch.equal(model.image_encoder.model.stem[1].running_mean, cnn.stem[1].running_mean)
    assert torch.equal(model.text_encoder.model.embeddings.word_embeddings.weight,
                       bert.embeddings.word_embeddings.weight)

    # the tokenizers are the saved ones: WordPiece for the prompt, GPT-2 style for the answer
    processor = model.processor
    assert len(processor.tokenizer) == len(lm_tok) and len(processor.text_tokenizer) == len(bert_tok)
    eos = lm_tok.eos_token_id
    assert processor.tokenizer.pad_token_id == eos and processor.tokenizer.bos_token_id == eos
    batch = make_batch(model, PROMPTS, ["red", "no"])
    ids = batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
    assert ids[0] == bert_tok.cls_token_id and ids[-1] == bert_tok.sep_token_id
    assert bert_tok.unk_token_id not in ids
    assert batch["answer_ids"][0, 0] == eos
    out = model(**batch)
    assert torch.isfinite(out.loss)
    tokens = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=3)
    assert tokens.shape[0] == 2 and int(tokens.max()) < len(lm_tok)

    # and the whole model round-trips offline, rebuilt from its own saved component configs
    model.save_pretrained(tmp_path / "saved")
    assert_no_pickles(tmp_path / "saved")
    loaded = MMGPT.from_pretrained(tmp_path / "saved")
    assert_same_model(model, loaded, batch)
    assert loaded.processor.text_tokenizer.cls_token_id == bert_tok.cls_token_id


def tiny_clip_processor(size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=[0.2, 0.4, 0.6], image_std=[0.3, 0.3, 0.3])


def test_hf_vision_tower_with_its_own_image_processor(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(3)
    folder = tmp_path / "clip"
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=48, patch_size=16))
    perturb(tower)
    tower.save_pretrained(folder)
    tiny_clip_processor(48).save_pretrained(folder)
    config = tiny_config()
    config.image_encoder = ImageEncoderConfig(type="hf", name=str(folder))
    model = build(config).eval()
    encoder = model.image_encoder

    pixels = model.processor.image_tensor(Image.new("RGB", (100, 70), (10, 200, 30)))
    assert pixels.shape == (3, tower.config.image_size, tower.config.image_size) == (3, 48, 48)
    # the saved processor's own normalisation is used (not a default one)
    assert list(encoder.image_transform().processor.image_mean) == [0.2, 0.4, 0.6]
    torch.testing.assert_close(pixels[:, 0, 0], (torch.tensor([10, 200, 30]) / 255 - torch.tensor([0.2, 0.4, 0.6]))
                               / 0.3, atol=0.02, rtol=0)
    assert encoder(pixels[None]).shape == (1, 9, 32), "3x3 patches, class token dropped"
    saved = {k: v for k, v in tower.state_dict().items() if "post_layernorm" not in k}
    loaded = encoder.model.state_dict()
    assert not [k for k in saved if not torch.equal(saved[k], loaded[k])]
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels[None]), tower(pixel_values=pixels[None]).last_hidden_state[:, 1:])

    # the processor travels with a saved model
    model.save_pretrained(tmp_path / "saved")
    again = MMGPT.from_pretrained(tmp_path / "saved")
    image = Image.new("RGB", (64, 80), (90, 10, 250))
    assert torch.equal(again.processor.image_tensor(image), model.processor.image_tensor(image))
    batch = model.processor(PROMPTS, [image, image], ANSWERS)
    assert_same_model(model, again, batch)


def test_full_clip_checkpoint_gives_its_vision_tower(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(4)
    clip = CLIPModel(CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
        projection_dim=16,
    ))
    perturb(clip)
    clip.save_pretrained(tmp_path / "clip")
    tiny_clip_processor(32).save_pretrained(tmp_path / "clip")
    config = tiny_config()
    config.image_encoder = ImageEncoderConfig(type="hf", name=str(tmp_path / "clip"))
    model = build(config)
    # the tower's own keys may or may not carry the vision_model. prefix
    loaded = {k.removeprefix("vision_model."): v for k, v in model.image_encoder.model.state_dict().items()}
    saved = {k.removeprefix("vision_model."): v for k, v in clip.state_dict().items()
             if k.startswith("vision_model.") and "post_layernorm" not in k}
    assert saved and saved.keys() == loaded.keys()
    assert not [k for k in saved if not torch.equal(saved[k], loaded[k])]
    assert model.image_encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32)


def test_named_generator_vocab_check_and_scratch_tokenizer_size(tmp_path: Path) -> None:
    # a tokenizer larger than the saved generator's vocabulary is refused with both sizes
    from transformers import AutoConfig, GPT2LMHeadModel

    lm_tok = gpt2_tokenizer()
    GPT2LMHeadModel(AutoConfig.for_model(**{**GENERATOR_CONFIGS["gpt2"], "vocab_size": 50})).save_pretrained(tmp_path)
    lm_tok.save_pretrained(tmp_path)
    message = rf"model\.generator\.name .*: generator vocabulary \(50\) is smaller than its tokenizer \({len(lm_tok)} "
    with pytest.raises(ConfigError, match=message):
        MMGPT.from_config(ModelConfig(generator=GeneratorConfig(name=str(tmp_path)),
                                      fusion=FusionConfig(dim=16, num_heads=2)))
    # while a scratch generator gets exactly the trained tokenizer's size
    config = tiny_config()
    config.tokenizer = TokenizerConfig(vocab_size=280)
    model = build(config)
    assert model.generator.get_input_embeddings().num_embeddings == len(model.processor.tokenizer) <= 280


def test_a_named_generators_saved_config_records_what_was_built(tmp_path: Path) -> None:
    from transformers import AutoConfig, GPT2LMHeadModel

    lm_tok = gpt2_tokenizer()
    GPT2LMHeadModel(AutoConfig.for_model(**{**GENERATOR_CONFIGS["gpt2"], "vocab_size": len(lm_tok)})
                    ).save_pretrained(tmp_path / "lm")
    lm_tok.save_pretrained(tmp_path / "lm")
    config = tiny_config()
    config.generator = GeneratorConfig(name=str(tmp_path / "lm"))  # the default's from-scratch kwargs not meant
    model = build(config)
    assert model.generator.config.n_embd == GENERATOR_CONFIGS["gpt2"]["n_embd"]
    model.save_pretrained(tmp_path / "saved")
    recorded = json.loads((tmp_path / "saved" / "config.json").read_text())["model"]["generator"]
    assert recorded["kwargs"] == {}
    assert MMGPT.from_pretrained(tmp_path / "saved").generator.config.n_embd == GENERATOR_CONFIGS["gpt2"]["n_embd"]


# model folders as an earlier version of mmgpt wrote them (a tiny model, fp32 and `mmgpt quantize`d to int8)
SAVED_MODELS = Path(__file__).resolve().parent / "data" / "saved_models"


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a folder by its relative path; a compression record's date and source path left out."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = re.sub(rb'"(date|source)": "[^"]*"', rb'"\1": ""', path.read_bytes())
        files[str(path.relative_to(folder))] = re.sub(rb"from `[^`]*` \([^)]*\)", b"from `` ()", data)
    return files


def test_folders_of_an_earlier_version_load_and_are_written_again_byte_for_byte(tmp_path: Path) -> None:
    from mmgpt.compress.quantize import quantize

    fp32 = MMGPT.from_pretrained(SAVED_MODELS / "fp32")
    int8 = MMGPT.from_pretrained(SAVED_MODELS / "int8")
    batch = make_batch(fp32, PROMPTS, ANSWERS)
    with torch.no_grad():
        fp32_loss, int8_loss = fp32(**batch).loss, int8(**batch).loss
    assert torch.isfinite(fp32_loss) and abs(float(int8_loss - fp32_loss)) < 0.05 * float(fp32_loss)
    # the same model saved and quantised today gives the same files, so either version reads the other's folders
    fp32.save_pretrained(tmp_path / "fp32", metrics={"eval/acc": 0.5}, datasets=["easy_vqa"])
    assert _folder_bytes(tmp_path / "fp32") == _folder_bytes(SAVED_MODELS / "fp32")
    quantize(tmp_path / "fp32", tmp_path / "int8", "int8")
    assert _folder_bytes(tmp_path / "int8") == _folder_bytes(SAVED_MODELS / "int8")
    with torch.no_grad():
        assert torch.equal(MMGPT.from_pretrained(tmp_path / "int8")(**batch).logits, int8(**batch).logits)
