"""`mmgpt serve --model EXPORTED`: an `mmgpt export` folder served through onnxruntime replies as its torch model
does (answers, finish reasons, usage, streaming, stops, choices, seeded sampling, several images), on 127.0.0.1."""
from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from test_export import diverse_model
from test_serve import NAME, QUESTION, client, data_url, metric, model_dir, png, running_server, user  # noqa: F401
from tiny import one_thread  # noqa: F401 - an autouse fixture

from mmgpt.export import export_onnx
from mmgpt.exported_model import ExportedModel
from mmgpt.inference import answer, load_model, load_model_or_export
from mmgpt.runtime import OnnxVLM


@pytest.fixture(scope="module")
def exported(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """test_serve's tiny model (whole-word answers, some ending on eos), exported."""
    return export_onnx(model_dir, tmp_path_factory.mktemp("served-export") / "onnx")


@pytest.fixture(scope="module")
def servers(model_dir: Path, exported: Path) -> Iterator[tuple[str, str]]:  # noqa: F811
    """(the torch model's server, its export's server), with the same settings."""
    with running_server(load_model(model_dir, "cpu"), max_wait_ms=20) as eager, \
            running_server(load_model_or_export(exported, None), max_wait_ms=20) as onnx:
        yield eager, onnx


def reply(url: str, **request: Any) -> dict[str, Any]:
    """A chat completion's JSON, its id and time left out."""
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, **request}, timeout=30)
    body = response.json()
    return {"status": response.status_code, **{k: v for k, v in body.items() if k not in ("id", "created")}}


def streamed(url: str, **request: Any) -> tuple[list[str], dict[str, Any]]:
    """A streamed completion through the openai client: (its text pieces, its usage)."""
    chunks = list(client(url).chat.completions.create(model=NAME, stream=True, stream_options={"include_usage": True},
                                                      **request))
    return [c.choices[0].delta.content or "" for c in chunks if c.choices], chunks[-1].usage.model_dump()


REQUESTS = {
    "question": {"messages": user(QUESTION, png((200, 30, 30)))},
    "caption": {"messages": user("", png((30, 30, 200), box=9))},
    "two tokens": {"messages": user("is there a circle?", png((30, 160, 30))), "max_tokens": 2},
    "stop string": {"messages": user(QUESTION, png((200, 30, 30))), "stop": [" "]},
    "n=3": {"messages": user("how many shapes are there?", png((90, 20, 160), box=5)), "n": 3},
    "choice": {"messages": user(QUESTION, png((200, 30, 30))), "guided_choice": ["red", "blue", "green", "yes"]},
    "json enum": {"messages": user(QUESTION, png((30, 30, 200))),
                  "response_format": {"type": "json_schema", "json_schema": {
                      "name": "colour", "schema": {"type": "string", "enum": ["red", "blue"]}}}},
    "seeded sampling": {"messages": user(QUESTION, png((120, 120, 40), box=3)), "temperature": 1.0, "top_p": 0.9,
                        "seed": 7, "n": 2},
    "conversation": {"messages": [*user(QUESTION, png((200, 30, 30))), {"role": "assistant", "content": "red"},
                                  {"role": "user", "content": "is there a circle?"}]},
}


@pytest.mark.parametrize("name", REQUESTS)
def test_an_export_replies_as_its_torch_model(servers: tuple[str, str], name: str) -> None:
    eager, onnx = servers
    expected = reply(eager, **REQUESTS[name])
    assert expected["status"] == 200, expected
    assert reply(onnx, **REQUESTS[name]) == expected


def test_an_export_streams_as_its_torch_model(servers: tuple[str, str], model_dir: Path) -> None:  # noqa: F811
    eager, onnx = servers
    pieces, usage = streamed(onnx, messages=user(QUESTION, png((30, 160, 30))))
    assert sum(bool(p) for p in pieces) >= 2  # it did stream, piece by piece
    assert (pieces, usage) == streamed(eager, messages=user(QUESTION, png((30, 160, 30))))
    assert "".join(pieces) == answer(QUESTION, png((30, 160, 30)), model=load_model(model_dir, "cpu"))


def test_concurrent_requests_batched_on_an_export_answer_as_one_at_a_time(model_dir: Path,  # noqa: F811
                                                                          exported: Path) -> None:
    asks = [(q, png(c, box=b)) for q, c, b in zip(
        [QUESTION, "is there a circle?", "how many shapes are there?", ""] * 3,
        [(200, 30, 30), (30, 200, 30), (30, 30, 200)] * 4, [0] * 4 + [5] * 4 + [11] * 4)]
    expected = [answer(q, image, model=load_model(model_dir, "cpu")) for q, image in asks]
    with running_server(load_model_or_export(exported, "cpu"), max_wait_ms=100, max_batch_size=12) as url:
        def ask(i: int) -> str:
            return client(url).chat.completions.create(model=NAME, messages=user(*asks[i]), temperature=0)\
                .choices[0].message.content

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            got = list(pool.map(ask, range(12)))
        batches = metric(url, "mmgpt_batch_size_count")[""]
    assert got == expected
    assert batches < 12  # some batch held several requests (prompts of different lengths, left-padded)


def test_an_export_answers_4xx_and_keeps_serving(servers: tuple[str, str]) -> None:
    _, onnx = servers
    broken = reply(onnx, messages=[{"role": "user", "content": [
        {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": data_url(b"not an image")}}]}])
    assert broken["status"] == 400 and "messages[0].content[1].image_url" in broken["error"]["message"]
    too_long = reply(onnx, messages=user(QUESTION, png((1, 2, 3))), max_tokens=10**6)
    assert too_long["status"] == 400 and too_long["error"]["param"] == "max_tokens"
    unwritable = reply(onnx, messages=user(QUESTION, png((1, 2, 3))), guided_choice=["red", " blue"])
    assert unwritable["status"] == 400 and "guided_choice" in unwritable["error"]["message"]
    assert reply(onnx, **REQUESTS["question"])["status"] == 200


def test_options_the_runtime_cannot_reproduce_are_refused_by_name(exported: Path) -> None:
    model = ExportedModel(exported)
    batch = model.processor.encode_prompts(["what?"])
    pixels = model.processor.pixel_inputs([[model.processor.image_tensor(png((1, 2, 3)))]])["pixel_values"]
    for options, named in (({"repetition_penalty": 1.3}, "repetition_penalty"), ({"num_beams": 2}, "num_beams=2"),
                           ({"do_sample": True}, "do_sample without a seeded sampler")):
        with pytest.raises(ValueError, match=f"{named}.*an exported ONNX model"):
            model.generate(batch["input_ids"], batch["attention_mask"], pixels, **options)


def test_serve_takes_an_export_on_the_cpu_only(exported: Path) -> None:
    with pytest.raises(ValueError, match="device cuda: an exported ONNX model .* runs on the cpu only"):
        load_model_or_export(exported, "cuda")
    assert isinstance(load_model_or_export(exported, "cpu"), ExportedModel)


def pngs(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3),
                                     dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def several(images: list[bytes], text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": data_url(i)}} for i in images),
                                         {"type": "text", "text": text}]}]


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{"fusion": "concat", "max_images": 3},
                                     {"fusion": "cross_attention", "max_images": 2, "tiling": (2, 2)}],
                         ids=["concat-3-images", "cross-attention-tiles"])
def test_several_images_and_tiles_served_from_an_export(tmp_path: Path, changes: dict[str, Any]) -> None:
    model = diverse_model(**changes, seed=5)
    folder = export_onnx(model, tmp_path / "onnx")
    served = ExportedModel(folder)
    for tokens in (1, 4, 9):
        for count in range(1, model.config.max_images + 1):
            assert served.prefix_length(tokens, count) == model.prefix_length(tokens, count), (tokens, count)
    with running_server(model) as eager, running_server(served) as onnx:
        for count in range(1, model.config.max_images + 1):
            request = {"messages": several(pngs(count, seed=count), "what is in the images?"), "max_tokens": 2}
            expected = reply(eager, **request)
            assert expected["status"] == 200, expected
            assert reply(onnx, **request) == expected
            assert expected["choices"][0]["message"]["content"] == answer(
                "what is in the images?", images=pngs(count, seed=count), model=model, max_new_tokens=2)


@pytest.mark.slow
def test_an_int8_export_is_served_as_the_runtime_answers(model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = export_onnx(model_dir, tmp_path / "int8", int8=True)
    runtime = OnnxVLM(folder)
    with running_server(load_model_or_export(folder, "cpu")) as onnx:
        for colour in ((200, 30, 30), (30, 30, 200), (10, 200, 90)):
            got = reply(onnx, messages=user(QUESTION, png(colour)), temperature=0)
            assert got["choices"][0]["message"]["content"] == runtime.answer(QUESTION, png(colour))
