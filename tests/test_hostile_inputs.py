"""Hostile and careless inputs at the API boundary: answer()/stream_answer() arguments, seeded sampling under
threads, huge prompts, and the CLI / eval scripts' error handling and reports."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny import build, tiny_config

from mmgpt.inference import answer, stream_answer
from mmgpt.model import MMGPT

IMAGE = np.zeros((32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained model: near-uniform logits, so different random draws give different samples."""
    folder = tmp_path_factory.mktemp("hostile") / "model"
    build(tiny_config(max_answer_length=10)).save_pretrained(folder)
    return folder


@pytest.fixture()
def fresh_model(model_dir: Path) -> MMGPT:
    """A private copy (not the load_model cache), so a test may patch it."""
    return MMGPT.from_pretrained(model_dir).eval()


def _call(function: Any, model: Any, **options: Any) -> Any:
    """Call answer() or stream_answer() (consumed) with one question."""
    result = function("what color?", IMAGE, model=model, **options)
    return result if isinstance(result, str) else "".join(result)


BAD_OPTIONS = [
    ({"max_new_tokens": -1}, ValueError, r"max_new_tokens must be None \(.*\) or an int >= 0, got -1"),
    ({"max_new_tokens": 2.0}, TypeError, r"max_new_tokens must be .*got float 2.0"),
    ({"num_beams": 0}, ValueError, r"num_beams must be an int >= 1, got 0"),
    ({"num_beams": 2.5}, TypeError, r"num_beams must be an int >= 1, got float 2.5"),
    ({"temperature": float("inf")}, ValueError, r"temperature must be None \(1.0\) or a finite number > 0, got inf"),
    ({"temperature": float("nan")}, ValueError, r"temperature must be .*finite.*got nan"),
    ({"temperature": 0}, ValueError, r"temperature must be .*> 0, got 0"),
    ({"temperature": "hot"}, TypeError, r"temperature must be .*got str 'hot'"),
    ({"top_p": 1.5}, ValueError, r"top_p must be None \(no top-p filter\) or a number in \(0, 1\], got 1.5"),
    ({"top_k": -1}, ValueError, r"top_k must be None \(no top-k filter\) or an int >= 0, got -1"),
    ({"seed": 2**64}, ValueError, r"seed must be None \(unseeded\) or an int in \[0, 18446744073709551615\]"),
    ({"seed": -1}, ValueError, r"seed must be .*got -1"),
    ({"seed": "1"}, TypeError, r"seed must be .*got str '1'"),
    ({"seed": True}, TypeError, r"seed must be .*got bool"),
    ({"do_sample": "yes"}, TypeError, r"do_sample must be None .* or a bool"),
    ({"no_repeat_ngram_size": -2}, ValueError, r"no_repeat_ngram_size must be an int >= 0, got -2"),
    ({"repetition_penalty": 0.0}, ValueError, r"repetition_penalty must be a finite number > 0, got 0.0"),
]


@pytest.mark.parametrize("function", [answer, stream_answer], ids=["answer", "stream_answer"])
@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=[str(o) for o, _, _ in BAD_OPTIONS])
def test_bad_decoding_options_name_the_argument(function: Any, options: dict, error: type, message: str,
                                                model_dir: Path) -> None:
    with pytest.raises(error, match=message):
        function("what color?", IMAGE, model=model_dir, **options)  # raised at the call, before any streaming


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"temperature": float("inf")}, {"seed": 2**70}])
def test_arguments_are_checked_before_the_model_is_loaded(options: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        answer("what color?", IMAGE, model=tmp_path / "no_such_model", **options)


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError), (None, TypeError)])
def test_batch_size_must_be_a_positive_int(batch_size: Any, error: type, model_dir: Path) -> None:
    with pytest.raises(error, match=r"batch_size must be an int >= 1, got"):
        answer(["what color?", "is there a circle?"], [IMAGE, IMAGE], model=model_dir, batch_size=batch_size)


@pytest.mark.parametrize("text, kind", [(None, "NoneType"), (7, "int"), (b"what color?", "bytes"),
                                        ({"q": 1}, "dict")])
def test_text_of_the_wrong_type_is_a_type_error_naming_text(text: Any, kind: str, model_dir: Path) -> None:
    with pytest.raises(TypeError, match=rf"text must be a str or a list/tuple of str, got {kind}"):
        answer(text, IMAGE, model=model_dir)
    with pytest.raises(TypeError, match=rf"text\[1\] must be a str, got {kind}"):
        answer(["fine", text], [IMAGE, IMAGE], model=model_dir)
    with pytest.raises(TypeError, match=rf"stream_answer takes one text \(a str\).*{kind}"):
        stream_answer(text, IMAGE, model=model_dir)


def test_lone_surrogate_is_rejected_before_the_tokenizer(fresh_model: MMGPT, monkeypatch: pytest.MonkeyPatch) -> None:
    def tokenizer_must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the tokenizer saw the text")

    monkeypatch.setattr(fresh_model.processor, "prompt_ids", tokenizer_must_not_run)
    with pytest.raises(ValueError, match=r"text is not valid Unicode: lone surrogate '\\ud800' at index 4"):
        answer("what\ud800?", IMAGE, model=fresh_model)
    with pytest.raises(ValueError, match=r"text\[1\] is not valid Unicode"):
        answer(["fine", "\udcff"], [IMAGE, IMAGE], model=fresh_model)
    with pytest.raises(ValueError, match=r"text is not valid Unicode"):
        stream_answer("what\ud800?", IMAGE, model=fresh_model)


def test_max_new_tokens_zero_is_honoured_not_replaced(model_dir: Path) -> None:
    sampled = {"seed": 1, "temperature": 1.0}
    assert answer("what color?", IMAGE, model=model_dir, **sampled) != ""  # so "" below is the limit, not the model
    assert answer("what color?", IMAGE, model=model_dir, max_new_tokens=0, **sampled) == ""
    assert answer(["a", "b"], [IMAGE, IMAGE], model=model_dir, max_new_tokens=0, **sampled) == ["", ""]
    assert list(stream_answer("what color?", IMAGE, model=model_dir, max_new_tokens=0, **sampled)) == []
    with pytest.raises(ValueError, match="not found"):  # the images are still read and checked
        answer("what color?", "no_such_image.png", model=model_dir, max_new_tokens=0)


SAMPLING = {"temperature": 1.0}


def _slow_generator_steps(model: MMGPT, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sleep after each generator step, so concurrent calls interleave between sampled tokens."""
    forward = model.generator.forward

    def slow(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        time.sleep(0.002)
        return out

    monkeypatch.setattr(model.generator, "forward", slow)


@pytest.mark.parametrize("options", [SAMPLING, {"temperature": 0.8, "top_k": 20, "top_p": 0.9},
                                     {**SAMPLING, "num_beams": 2}], ids=["sample", "top-k-p", "beam-sample"])
def test_seeded_sampling_is_reproducible_under_threads(options: dict, fresh_model: MMGPT,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    questions = ["what color?", "is there a circle?"]
    images = [IMAGE, np.full((32, 32, 3), 200, dtype=np.uint8)]
    lone = {seed: answer(questions, images, model=fresh_model, seed=seed, **options) for seed in (1, 2)}
    assert lone[1] != lone[2], "seeds 1 and 2 must sample differently, or this test proves nothing"
    _slow_generator_steps(fresh_model, monkeypatch)
    results: dict[int, list] = {}
    stop = threading.Event()

    def other_work() -> None:  # someone else drawing from torch's global RNG meanwhile
        while not stop.is_set():
            torch.rand(8)
            time.sleep(0.0005)

    def ask(index: int, seed: int) -> None:
        results[index] = answer(questions, images, model=fresh_model, seed=seed, **options)

    # beam sampling draws from a seeded copy of the global RNG, so only it must be spared outside draws
    noise = threading.Thread(target=other_work if options.get("num_beams", 1) == 1 else stop.wait)
    threads = [threading.Thread(target=ask, args=(i, 1 + i % 2)) for i in range(4)]
    noise.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    noise.join()
    assert [results[i] for i in range(4)] == [lone[1], lone[2], lone[1], lone[2]]


@pytest.mark.parametrize("options", [SAMPLING, {**SAMPLING, "num_beams": 2}, {}], ids=["sample", "beam-sample",
                                                                                     "greedy"])
def test_seeded_call_leaves_the_global_rng_alone(options: dict, model_dir: Path, tmp_path: Path) -> None:
    import shutil

    unloaded = shutil.copytree(model_dir, tmp_path / "model")  # so the call also loads (builds) the model
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    answer("what color?", IMAGE, model=unloaded, seed=7, **options)
    answer("what color?", IMAGE, model=unloaded, seed=7, **options)
    assert torch.equal(torch.rand(4), expected)


def test_unseeded_sampling_leaves_the_global_rng_alone_and_varies(model_dir: Path) -> None:
    torch.manual_seed(99)
    expected = torch.rand(4)
    torch.manual_seed(99)
    answers = {answer("what color?", IMAGE, model=model_dir, **SAMPLING) for _ in range(4)}
    assert torch.equal(torch.rand(4), expected)
    assert len(answers) > 1


def test_seeded_stream_equals_seeded_answer(model_dir: Path) -> None:
    for seed in (1, 2):
        streamed = "".join(stream_answer("what color?", IMAGE, model=model_dir, seed=seed, **SAMPLING)).strip()
        assert streamed == answer("what color?", IMAGE, model=model_dir, seed=seed, **SAMPLING)


def test_eval_generation_is_seeded_privately(model_dir: Path) -> None:
    from mmgpt.data.example import Example
    from mmgpt.eval.runner import generate_answers
    from mmgpt.inference import load_model

    model = load_model(model_dir)
    examples = [Example(image=IMAGE, prompt=f"question {i}", answer="", task="vqa", id=i) for i in range(3)]
    kwargs = {"temperature": 1.0}
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    first = generate_answers(model, examples, batch_size=2, progress=False, seed=11, **kwargs)
    assert torch.equal(torch.rand(4), expected)
    assert generate_answers(model, examples, batch_size=2, progress=False, seed=11, **kwargs) == first
    assert generate_answers(model, examples, batch_size=2, progress=False, seed=12, **kwargs) != first
    assert generate_answers(model, examples, progress=False, max_new_tokens=0) == ["", "", ""]


def _tokenizer_inputs(processor: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the length of every text the processor's tokenizers are asked to encode."""
    lengths: list[int] = []
    for tokenizer in {id(t): t for t in (processor.tokenizer, processor.text_tokenizer) if t is not None}.values():
        for method in ("encode", "__call__"):
            original = getattr(type(tokenizer), method)

            def spy(self: Any, text: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                if isinstance(text, str):
                    lengths.append(len(text))
                return _original(self, text, *args, **kwargs)

            monkeypatch.setattr(type(tokenizer), method, spy)
    return lengths


@pytest.mark.parametrize("text_encoder", ["lm_embeddings", "bert"])
def test_huge_prompt_is_cut_before_tokenizing(text_encoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmgpt.processor import char_budget

    processor = build(tiny_config(text=text_encoder)).processor
    limit = processor.max_prompt_length
    sentence = "is there a small green triangle on the left? "
    reference = processor.prompt_ids(sentence * 200)  # short enough to have been tokenized whole before
    lengths = _tokenizer_inputs(processor, monkeypatch)
    huge = sentence * (2_000_000 // len(sentence))
    assert processor.prompt_ids(huge) == reference
    assert max(lengths) <= char_budget(limit)
    answer_ids = processor.answer_ids(huge)
    assert len(answer_ids) == processor.max_answer_length and max(lengths) <= char_budget(limit)


@pytest.mark.parametrize("text_encoder", ["lm_embeddings", "bert"])
def test_cut_keeps_the_tokens_of_the_whole_text(text_encoder: str) -> None:
    from mmgpt.processor import char_budget

    processor = build(tiny_config(text=text_encoder)).processor
    limit = processor.max_prompt_length
    tokenizer = processor.text_tokenizer

    def whole(text: str) -> list[int]:
        # left truncation: the leading special token, then the last tokens of the whole text
        if tokenizer is not None:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        else:
            ids = [processor.tokenizer.bos_token_id] + processor.tokenizer.encode(text, add_special_tokens=False)
        return ids if len(ids) <= limit else ids[:1] + ids[len(ids) - limit + 1:]

    rng = np.random.default_rng(0)
    words = ["red", "blue", "circle", "is", "there", "a", "?", "triangle,", "x" * 40, "\u00e9t\u00e9", "\U0001f600"]
    budget = char_budget(limit)
    texts = [" ".join(rng.choice(words, size=n)) for n in (1, 5, 30, 200, 400, 2000)]
    texts += [t[:budget - 1] for t in texts] + [t[: budget + 1] for t in texts]
    # whitespace yields few (bert: no) tokens, so the first cut holds too few and the processor reads on
    texts += ["red " + " " * (3 * budget) + "blue circle " * 100, "\n" * (5 * budget) + "what color"]
    for text in texts:
        assert processor.prompt_ids(text) == whole(text), repr(text[:40])


def test_token_cache_is_a_bounded_lru_without_huge_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmgpt.processor as processor_module

    monkeypatch.setattr(processor_module, "IDS_CACHE_SIZE", 8)
    processor = build(tiny_config()).processor
    lengths = _tokenizer_inputs(processor, monkeypatch)
    processor.prompt_ids("what color is the shape?")
    for i in range(6):
        processor.prompt_ids(f"question {i}")
    processor.prompt_ids("what color is the shape?")  # recently used: still cached, not tokenized again
    assert len(lengths) == 7
    for i in range(100):
        processor.prompt_ids(f"another question {i}")
        processor.answer_ids(f"answer {i}")
    assert len(processor._ids_cache) == 8
    huge = "what color is the shape? " * 40_000
    processor.prompt_ids(huge)
    processor.answer_ids(huge)
    assert max(len(key[1]) for key in processor._ids_cache) < 100


def test_processor_pickles_and_tokenizes_from_threads() -> None:
    import pickle

    processor = build(tiny_config()).processor
    prompts = [f"is there a circle number {i}?" for i in range(200)]
    expected = [processor.prompt_ids(p) for p in prompts]
    copy = pickle.loads(pickle.dumps(processor))
    assert [copy.prompt_ids(p) for p in prompts] == expected
    results: dict[int, list] = {}

    def work(index: int) -> None:
        results[index] = [copy.prompt_ids(p) for p in prompts[index % 2 :: 1]]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[i] == expected[i % 2 :] for i in range(4))


# --- the CLI and the eval scripts: one line and status 2 for what users get wrong ------------------------

ROOT = Path(__file__).resolve().parent.parent


def _one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _library_errors() -> list[BaseException]:
    from safetensors import SafetensorError

    return [SafetensorError("Error while deserializing header: HeaderTooLarge"),
            RecursionError("maximum recursion depth exceeded while decoding a JSON array"),
            UnicodeDecodeError("utf-8", b"\xff\xfe", 0, 1, "invalid start byte"),
            PermissionError(13, "Permission denied", "/data/model.safetensors"),
            IsADirectoryError(21, "Is a directory", "/data/q.json")]


@pytest.mark.parametrize("error", _library_errors(), ids=lambda e: type(e).__name__)
def test_cli_reports_library_errors_in_one_line(error: BaseException, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    from mmgpt import cli

    def command(argv: list[str], prog: str) -> int:
        raise error

    monkeypatch.setitem(cli.COMMANDS, "answer", cli.Command(command, "raises"))
    assert cli.main(["answer", "--image", "x.png", "q"]) == 2
    _one_error_line(capsys.readouterr().err, "mmgpt answer: error:")


def test_cli_interrupt_is_status_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from mmgpt import cli

    def command(argv: list[str], prog: str) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "caption", cli.Command(command, "interrupted"))
    assert cli.main(["caption", "x.png"]) == 130
    _one_error_line(capsys.readouterr().err, "interrupted")


@pytest.mark.parametrize("device, message", [("cuda", "--device cuda: no CUDA device available"),
                                             ("cuda:1", "--device cuda:1: no CUDA device available"),
                                             ("gpu", "--device gpu: not a device name")])
@pytest.mark.parametrize("command", ["answer", "caption"])
def test_cli_device_without_gpu_fails_before_loading(command: str, device: str, message: str, model_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import mmgpt.inference
    from mmgpt import cli

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(mmgpt.inference, "load_model", no_loading)
    argv = ["answer", "--image", "x.png", "q"] if command == "answer" else ["caption", "x.png"]
    assert cli.main([*argv, "--model", str(model_dir), "--device", device]) == 2
    _one_error_line(capsys.readouterr().err, message)


def test_cli_damaged_weights_are_one_line(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from mmgpt import cli

    broken = shutil.copytree(model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert cli.main(["answer", "--model", str(broken), "--image", "x.png", "q"]) == 2
    _one_error_line(capsys.readouterr().err, "mmgpt answer: error:", "model.safetensors")


def _deep_json(path: Path) -> Path:
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def test_cli_deep_and_undecodable_json_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mmgpt import cli

    deep = _deep_json(tmp_path / "deep.json")
    assert cli.main(["eval-vqa", "--results", str(deep), "--questions", str(deep), "--annotations", str(deep),
                     "--out", str(tmp_path / "m.json")]) == 2
    _one_error_line(capsys.readouterr().err, str(deep), "nested too deeply")
    from test_eval_scripts import _vqa_files

    questions, annotations, _ = _vqa_files(tmp_path)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('[{"question_id": 1, "answer": "caf\u00e9"}]'.encode("latin-1"))
    assert cli.main(["eval-vqa", "--results", str(latin1), "--questions", str(questions),
                     "--annotations", str(annotations), "--out", str(tmp_path / "m.json")]) == 2
    _one_error_line(capsys.readouterr().err, str(latin1), "UTF-8")


def test_utf16_results_file_scores_like_utf8(tmp_path: Path) -> None:
    import json

    from test_eval_scripts import _vqa_files

    from mmgpt.eval import vqa as eval_vqa

    questions, annotations, results = _vqa_files(tmp_path)
    utf16 = tmp_path / "results16.json"
    utf16.write_text(results.read_text(), encoding="utf-16")
    scores = [eval_vqa.evaluate_vqa(["--results", str(r), "--questions", str(questions), "--annotations",
                                     str(annotations),
                             "--out", str(tmp_path / f"{r.stem}.metrics.json")])["metrics"] for r in (results, utf16)]
    assert scores[0] == scores[1]
    assert json.loads((tmp_path / "results16.metrics.json").read_text())["metrics"] == scores[0]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["eval_vqa.py", "eval_caption.py"])
def test_eval_scripts_report_errors_in_one_line(script: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    deep = _deep_json(tmp_path / "deep.json")
    args = (["--results", str(deep), "--questions", str(deep), "--annotations", str(deep)] if script == "eval_vqa.py"
            else ["--results", str(deep), "--annotations", str(deep)])
    proc = subprocess.run([sys.executable, str(ROOT / script), *args, "--out", str(tmp_path / "m.json")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, f"{script}: error:", str(deep), "nested too deeply")


def test_report_with_a_lone_surrogate_is_written(tmp_path: Path) -> None:
    import json

    from test_eval_scripts import _vqa_files

    from mmgpt.eval import vqa as eval_vqa

    questions, annotations, results = _vqa_files(tmp_path)
    records = json.loads(results.read_text())
    records[0]["answer"] = "yel\udc80low"  # what a decoder with errors="surrogateescape" leaves behind
    results.write_text(json.dumps(records))
    out = tmp_path / "metrics.json"
    eval_vqa.evaluate_vqa(["--results", str(results), "--questions", str(questions), "--annotations", str(annotations),
                   "--out", str(out)])
    report = (tmp_path / "metrics.html").read_text(encoding="utf-8")
    assert "yel\\udc80low" in report and report.rstrip().endswith("</html>")
    assert json.loads(out.read_text())["num_questions"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "metrics.html", "metrics.json", "q.json",
                                                          "r.json"]


def test_a_failed_write_leaves_the_old_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from mmgpt.eval.common import write_html_report, write_json

    report, metrics = tmp_path / "report.html", tmp_path / "metrics.json"
    report.write_text("old report")
    metrics.write_text("old metrics")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_html_report(report, "t", {"a": 1.0}, [])
    with pytest.raises(OSError, match="No space left"):
        write_json(metrics, {"a": 1})
    assert report.read_text() == "old report" and metrics.read_text() == "old metrics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.html"]


def _caption_files(folder: Path, captioned: int) -> tuple[Path, Path]:
    import json

    annotations = {"images": [{"id": i, "file_name": f"{i}.png"} for i in range(1, 5)],
                   "annotations": [{"id": i, "image_id": i, "caption": f"a red circle number {i}"}
                                   for i in range(1, 5)]}
    results = [{"image_id": i, "caption": "a red circle"} for i in range(1, captioned + 1)]
    paths = folder / "captions.json", folder / "results.json"
    paths[0].write_text(json.dumps(annotations))
    paths[1].write_text(json.dumps(results))
    return paths


def test_caption_results_for_some_images_fail_loudly(tmp_path: Path) -> None:
    from mmgpt.eval import caption as eval_caption

    annotations, results = _caption_files(tmp_path, captioned=1)
    argv = ["--results", str(results), "--annotations", str(annotations), "--out", str(tmp_path / "m.json")]
    with pytest.raises(ValueError, match=r"no caption for 3 of the 4 images .*image_id 2, 3, 4.*--allow-partial"):
        eval_caption.evaluate_captions(argv)
    assert not (tmp_path / "m.json").exists()
    record = eval_caption.evaluate_captions([*argv, "--allow-partial"])
    assert record["num_images"] == 1 and record["images_without_result"] == 3
    complete_annotations, complete = _caption_files(tmp_path, captioned=4)
    assert eval_caption.evaluate_captions(["--results", str(complete), "--annotations", str(complete_annotations),
                              "--out", str(tmp_path / "m.json"), "--overwrite"])["num_images"] == 4


@pytest.mark.parametrize("meta, kind", [([1, 2], "list"), ("tags", "str"), (3, "int")])
def test_jsonl_meta_that_is_not_an_object_names_file_and_line(meta: Any, kind: str, tmp_path: Path) -> None:
    import json

    from mmgpt.data.formats import read_dataset
    from mmgpt.data.spec import DatasetSpec

    good = {"image": "a.png", "prompt": "q", "answer": "a", "meta": {"k": 1}}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "meta": meta}) + "\n")
    with pytest.raises(ValueError, match=rf"{path} line 3: field 'meta' must be an object .*got {kind}"):
        read_dataset(DatasetSpec(format="jsonl", path=str(path)))


def test_jsonl_bad_bytes_and_deep_lines_name_their_line(tmp_path: Path) -> None:
    import json

    from mmgpt.data.formats import read_dataset
    from mmgpt.data.spec import DatasetSpec

    good = json.dumps({"image": "a.png", "prompt": "q", "answer": "a"}) + "\n"
    path = tmp_path / "data.jsonl"
    path.write_bytes(good.encode() * 2 + b'{"image": "caf\xe9.png"}\n')
    with pytest.raises(ValueError, match=rf"{path} line 3: not valid UTF-8"):
        read_dataset(DatasetSpec(format="jsonl", path=str(path)))
    path.write_text(good + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=rf"{path} line 2: JSON nested too deeply"):
        read_dataset(DatasetSpec(format="jsonl", path=str(path)))
    path.write_text(good * 3, encoding="utf-16")
    assert len(read_dataset(DatasetSpec(format="jsonl", path=str(path)))) == 3


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gpt2 (learned positions: 64 of them, so a longer sequence is an IndexError inside torch)."""
    folder = tmp_path_factory.mktemp("hostile-gpt2") / "model"
    build(tiny_config(generator="gpt2", max_answer_length=10)).save_pretrained(folder)
    return folder


def test_max_new_tokens_past_the_position_limit_is_one_clear_error(gpt2_dir: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from mmgpt import cli

    model = MMGPT.from_pretrained(gpt2_dir).eval()
    batch = model.processor(["what color?"], [IMAGE])
    prefix = int(model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])[1].sum())
    limit = 64 - prefix  # the prefix, bos and all but the last new token take a position each
    never_ends = {"eos_token_id": None, "pad_token_id": 0}  # the model may not stop early: each limit is reached
    assert len(model.generate(**batch, max_new_tokens=limit, **never_ends)[0]) == limit
    message = rf"max_new_tokens={limit + 1} is over this model's limit of {limit} \(.*64 positions .* take {prefix}\)"
    with pytest.raises(ValueError, match=message):
        model.generate(**batch, max_new_tokens=limit + 1, **never_ends)
    for function in (answer, stream_answer):
        with pytest.raises(ValueError, match=r"max_new_tokens=1000000000 is over this model's limit"):
            _call(function, model, max_new_tokens=10**9)
    assert cli.main(["answer", "--model", str(gpt2_dir), "--image", str(_png(gpt2_dir.parent)), "what color?",
                     "--max-new-tokens", "1000000000"]) == 2
    _one_error_line(capsys.readouterr().err, "mmgpt answer: error: max_new_tokens=1000000000 is over", "64")


def _png(folder: Path) -> Path:
    from PIL import Image

    path = folder / "image.png"
    Image.fromarray(IMAGE).save(path)
    return path


def test_a_vanishing_temperature_decodes_greedily(fresh_model: MMGPT) -> None:
    greedy = answer("what color?", IMAGE, model=fresh_model)
    for temperature in (1e-300, 1e-30, 1e-6):
        assert answer("what color?", IMAGE, model=fresh_model, temperature=temperature, seed=3) == greedy


# sizes no machine can hold: refused from the config, before anything is built
HUGE = 10**9


@pytest.mark.parametrize(("text", "image", "generator", "part", "key"), [
    ("lm_embeddings", "cnn", "llama", "generator", "hidden_size"),
    ("lm_embeddings", "cnn", "llama", "generator", "num_hidden_layers"),
    ("lm_embeddings", "cnn", "gpt2", "generator", "n_embd"),
    ("bert", "cnn", "llama", "text_encoder", "num_hidden_layers"),
    ("lm_embeddings", "clip", "llama", "image_encoder", "hidden_size"),
])
def test_a_part_too_big_for_any_machine_is_refused_naming_the_key(text: str, image: str, generator: str, part: str,
                                                                  key: str) -> None:
    from mmgpt.config import ConfigError

    config = tiny_config(text, image, generator=generator)
    getattr(config, part).kwargs[key] = HUGE
    what = part.replace("_", " ")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^model\.{part}\.kwargs\.{key}={HUGE}: the {what} would need at least "
                                          r"[\d,.]+ GiB, more than this machine's [\d,.]+ GiB of memory"):
        build(config)
    assert time.monotonic() - started < 30


def test_a_lora_rank_too_big_for_any_machine_is_refused() -> None:
    from mmgpt.config import ConfigError

    config = tiny_config()
    config.generator.lora.r = HUGE * 1000
    with pytest.raises(ConfigError, match=rf"^model\.generator\.lora\.r={HUGE * 1000}: the generator's LoRA adapters "
                                          "would need at least"):
        build(config)


def test_a_saved_folder_too_big_for_any_machine_is_one_cli_line(model_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    import json
    import shutil

    from mmgpt import cli

    huge = shutil.copytree(model_dir, tmp_path / "huge")
    config = huge / "generator" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_hidden_layers": HUGE}))
    assert cli.main(["answer", "--model", str(huge), "--image", "x.png", "q"]) == 2
    _one_error_line(capsys.readouterr().err, "mmgpt answer: error:", f"{config}: num_hidden_layers={HUGE}: the "
                    "generator would need at least")


def test_a_dry_run_plans_a_model_bigger_than_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmgpt.model_size
    from mmgpt.dry_run import build_meta_model
    from mmgpt.training.config import TrainConfig

    monkeypatch.setattr(mmgpt.model_size, "machine_memory", lambda: 48 * 2**10)  # 48 KiB: a tiny model does not fit
    cfg = TrainConfig(model=tiny_config())
    assert build_meta_model(cfg).num_parameters() > 0  # the meta device holds no weights
    with pytest.raises(ValueError, match="more than this machine's 0.0 GiB"):
        build(cfg.model)
