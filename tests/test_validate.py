"""validate_examples finds bad images, empty fields, over-long and duplicate examples; the CLI's exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmgpt.data.example import Example
from mmgpt.data.validate import ValidationReport, main, validate_examples


def _png(path: Path) -> str:
    Image.new("RGB", (8, 8), "green").save(path)
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    good = _png(tmp_path / "good.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(Path(good).read_bytes()[:20])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    return {"good": good, "corrupt": str(corrupt), "empty": str(empty), "text": str(text),
            "missing": str(tmp_path / "missing.png")}


def test_clean_examples_are_ok(images: dict[str, str]) -> None:
    examples = [Example(images["good"], f"question {i}?", "yes", id=i, source="s") for i in range(5)]
    report = validate_examples(examples, progress=False)
    assert report.ok and report.num_problems == 0
    assert report.num_examples == 5 and report.num_images == 1
    assert "OK" in report.format()


def test_finds_image_problems(images: dict[str, str]) -> None:
    examples = [Example(images[k], "q?", "a", id=k) for k in ("good", "corrupt", "empty", "text", "missing")]
    examples.append(Example(images["missing"], "q2?", "a", id="again"))
    report = validate_examples(examples, progress=False)
    assert not report.ok
    assert report.counts["missing_image"] == 2
    assert report.counts["corrupt_image"] == 3
    assert report.num_images == 5
    assert any("missing.png" in m for m in report.samples["missing_image"])
    assert report.counts["empty_answer"] == 0
    assert validate_examples(examples, check_images=False, progress=False).ok


def test_images_are_opened_once_per_path(images: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import mmgpt.images

    calls = []
    real = mmgpt.images.load_image

    def counting(image, *args, **kwargs):
        calls.append(image)
        return real(image, *args, **kwargs)

    monkeypatch.setattr(mmgpt.images, "load_image", counting)
    examples = [Example(images["good"], "q?", "a", id=i) for i in range(20)]
    validate_examples(examples, progress=False)
    assert len(calls) == 1


def test_finds_empty_fields_and_duplicates(images: dict[str, str]) -> None:
    examples = [
        Example(images["good"], "", "a", task="vqa", id=1),
        Example(images["good"], "", "A caption.", task="caption", id=2),
        Example(images["good"], "q?", "  ", id=3),
        Example(images["good"], "q?", "a", id=3),
        Example(images["good"], "q?", "a", id=3, source="other"),
        Example(images["good"], "q?", "a"),
        Example(images["good"], "q?", "a"),
    ]
    report = validate_examples(examples, progress=False)
    assert report.counts["empty_prompt"] == 1
    assert report.counts["empty_answer"] == 1
    # ids repeat only within a source; None ids are not compared
    assert report.counts["duplicate_id"] == 1


def test_length_budgets(images: dict[str, str]) -> None:
    examples = [
        Example(images["good"], "one two three four five", "a b", id="long_prompt"),
        Example(images["good"], "q", "w " * 10, id="long_answer"),
        Example(images["good"], "q", "a", id="fine"),
    ]
    report = validate_examples(examples, max_prompt_tokens=4, max_answer_tokens=5, check_images=False, progress=False)
    assert report.counts["prompt_too_long"] == 1 and report.counts["answer_too_long"] == 1
    assert "long_prompt" in report.samples["prompt_too_long"][0] and "words" in report.samples["prompt_too_long"][0]
    report = validate_examples(examples, max_total_tokens=6, check_images=False, progress=False)
    assert report.counts["sequence_too_long"] == 2
    by_char = validate_examples(examples, max_prompt_tokens=4, tokenize=list, check_images=False, progress=False)
    assert by_char.counts["prompt_too_long"] == 1 and "tokens" in by_char.samples["prompt_too_long"][0]


def test_report_format_limits_samples() -> None:
    report = ValidationReport(max_samples=2)
    for i in range(5):
        report.add("empty_answer", f"example {i}")
    text = report.format()
    assert "example 1" in text and "example 2" not in text and "3 more" in text
    assert "empty_answer" in text and "FAILED: 5 problems" in text


def test_cli_exit_codes(tmp_path: Path, images: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"image": "good.png", "prompt": "What color?", "answer": "green"}) + "\n")
    assert main(["--format", "jsonl", "--path", str(good)]) == 0
    assert "OK" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in [
        {"image": "good.png", "prompt": "What color?", "answer": ""},
        {"image": "missing.png", "prompt": "What color?", "answer": "green"},
        {"image": "good.png", "prompt": "a b c d e f g h", "answer": "green"},
    ]) + "\n")
    assert main(["--format", "jsonl", "--path", str(bad), "--max-tokens", "5"]) == 1
    out = capsys.readouterr().out
    assert "missing_image" in out and "FAILED: 3 problems" in out
    assert main(["--format", "jsonl", "--path", str(bad), "--no-images", "--images", str(tmp_path)]) == 1

    # records that are not examples are listed with the other problems; the good ones are still checked
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"image": "good.png"}\n{"image": "good.png", "prompt": "What colo\n'
                         + json.dumps({"image": "missing.png", "prompt": "What color?", "answer": "green"}) + "\n"
                         + json.dumps({"image": "good.png", "prompt": "What color?", "answer": "green"}) + "\n")
    assert main(["--format", "jsonl", "--path", str(malformed)]) == 1
    out = capsys.readouterr().out
    assert "checked 2 examples" in out and "FAILED: 3 problems" in out
    assert "malformed.jsonl line 1: missing field 'prompt'" in out
    assert "malformed.jsonl line 2: invalid JSON (Unterminated string starting at column 33)" in out
    assert "id='line3': " in out and "missing.png does not exist" in out
    # a folder where an image should be is named as such, not as missing
    (tmp_path / "album.png").mkdir()
    folder = tmp_path / "folder.jsonl"
    folder.write_text(json.dumps({"image": "album.png", "prompt": "What color?", "answer": "green"}) + "\n")
    assert main(["--format", "jsonl", "--path", str(folder)]) == 1
    assert "album.png is a folder, not an image file" in capsys.readouterr().out

    # a dataset that cannot be read at all: status 2 and one line, named like every mmgpt error
    assert main(["--format", "jsonl", "--path", str(tmp_path / "absent.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmgpt validate: error: jsonl dataset 'jsonl': JSONL file") and "absent.jsonl" in err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny saved model with a from-scratch tokenizer, a VQA template and short length limits."""
    from tiny import build, tiny_config

    config = tiny_config()
    config.vqa_template = "Question: {question} Answer:"
    config.text_encoder.max_length = 16
    config.max_answer_length = 6
    folder = tmp_path_factory.mktemp("model") / "tiny"
    build(config).save_pretrained(folder)
    return folder


def test_cli_counts_the_tokens_training_feeds(tmp_path: Path, images: dict[str, str], model_dir: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    from mmgpt.processor import Processor

    data = tmp_path / "data.jsonl"
    prompt, answer = "what color is the shape?", "red"
    data.write_text(json.dumps({"image": "good.png", "prompt": prompt, "answer": answer}) + "\n")
    # 6 whitespace words fit a budget of 6, but bos + the prompt's tokens + bos + answer + eos do not
    assert main(["--format", "jsonl", "--path", str(data), "--max-tokens", "6"]) == 0
    assert "whitespace words, an estimate" in capsys.readouterr().out
    processor = Processor.from_pretrained(model_dir)
    fed = len(processor.prompt_ids(prompt)) + len(processor.answer_ids(answer))
    for flag, value in (("--model", model_dir), ("--tokenizer", model_dir / "tokenizer")):
        assert main(["--format", "jsonl", "--path", str(data), "--max-tokens", "6", flag, str(value)]) == 1
        out = capsys.readouterr().out
        assert f"{fed} tokens > 6" in out and "whitespace" not in out and "lengths in tokens" in out


def test_cli_model_limits_are_the_default_budgets(tmp_path: Path, images: dict[str, str], model_dir: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"image": "good.png", "prompt": "what color is the shape?",
                                "answer": "a big red circle next to a blue square"}) + "\n")
    assert main(["--format", "jsonl", "--path", str(data)]) == 0
    assert main(["--format", "jsonl", "--path", str(data), "--model", str(model_dir)]) == 1
    out = capsys.readouterr().out
    assert "\nanswer_too_long:\n" in out and "> 6" in out


def test_counting_uses_the_model_templates_and_refuses_unknown_tokenizers(model_dir: Path, tmp_path: Path) -> None:
    from mmgpt.data.validate import load_counting
    from mmgpt.training.config import prompt_templates

    processor, templates = load_counting(str(model_dir), None)
    assert processor is not None and templates.vqa == "Question: {question} Answer:"
    with pytest.raises(FileNotFoundError, match="hf://org/name"):
        load_counting(None, str(tmp_path / "no-such-tokenizer"))
    assert load_counting(None, None)[0] is None
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  vqa_template: 'Q: {question} A:'\n")
    processor, templates = load_counting(None, str(model_dir / "tokenizer"), str(config), prompt_templates)
    assert processor is not None and templates.vqa == "Q: {question} A:"


@pytest.mark.parametrize("entry", ["mmgpt", "module"])
def test_config_templates_are_read_by_the_training_config_reader(tmp_path: Path, images: dict[str, str],
                                                                 capsys: pytest.CaptureFixture, entry: str) -> None:
    from mmgpt import cli
    from mmgpt.training.config import prompt_templates

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"image": images["good"], "prompt": "q?", "answer": "a"}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  vqa_templat: 'Q: {question} A:'\n")
    args = ["--format", "jsonl", "--path", str(data), "--config", str(config)]
    # the `mmgpt` command and the module's own entry both hand validation the training layer's config reader
    status = cli.main(["validate", *args]) if entry == "mmgpt" else main(args, config_templates=prompt_templates)
    assert status == 2
    assert "vqa_templat" in capsys.readouterr().err


def test_limit_on_a_stream_checks_its_first_rows_in_stored_order(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    from tests import hf_data

    # rows 0, 7, 14, ... hold bytes that are no image: the first three rows stored include row 0, a shuffled
    # sample need not
    parquet = hf_data.parquet_shards(tmp_path / "parquet", 200, shards=4, bad_every=7)
    code = main(["--format", "hf", "--path", str(parquet), "--streaming", "--limit", "3", "--column",
                 "question=question", "--column", "answer=answer"])
    out = capsys.readouterr().out
    assert code != 0 and "checked 3 examples" in out and "[hf] id=0: not an image" in out, out
