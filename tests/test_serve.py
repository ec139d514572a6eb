"""`mmgpt serve` through the official openai client and raw HTTP, on a tiny model, 127.0.0.1 only, bounded."""
from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
import uvicorn
from PIL import Image
from tiny import generator_config, one_thread, tiny_config  # noqa: F401 - one_thread is an autouse fixture

from mmgpt import cli
from mmgpt.inference import answer, load_model
from mmgpt.model import MMGPT
from mmgpt.prompts import conversation_prompt
from mmgpt.serve.app import ServerSettings, create_app, served_name
from mmgpt.serve.command import uvicorn_config
from mmgpt.serve.events import Delta, Done, Event, Failed, First
from mmgpt.serve.image_cache import ImageCache, image_key
from mmgpt.serve.metrics import Metrics
from mmgpt.serve.worker import Job, Worker

TEXTS = ["what color is the shape?", "is there a circle?", "how many shapes are there?", "red", "blue", "green",
         "yes", "no", "a small green triangle", "a big red circle next to a blue square"] * 3
QUESTION = "what color is the shape?"
NAME = "tiny"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained model, saved: its answers are arbitrary but deterministic.

    The embeddings (tied to the output layer) of tokens shorter than three characters are zeroed, so it
    answers in whole words of TEXTS (splittable for the stop test, readable in the browser) and, for some
    inputs, ends on eos before its 12-token limit.
    """
    torch.manual_seed(3)
    config = tiny_config(max_answer_length=12)
    config.generator = generator_config("llama", initializer_range=0.5)
    model = MMGPT.from_config(config, train_texts=TEXTS)
    tokenizer = model.processor.tokenizer
    keep = torch.zeros(len(tokenizer), dtype=torch.bool)
    keep[[i for i in tokenizer.get_vocab().values() if len(tokenizer.decode([i]).strip()) >= 3]] = True
    keep[tokenizer.eos_token_id] = True
    with torch.no_grad():
        model.generator.get_input_embeddings().weight[~keep] = 0
    folder = tmp_path_factory.mktemp("serve-model") / NAME
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model(model_dir: Path) -> MMGPT:
    return load_model(model_dir, "cpu")


def png(color: tuple[int, int, int], size: int = 32, box: int = 0) -> bytes:
    """A PNG of one colour, with a white square of `box` px (so images differ in more than colour)."""
    image = Image.new("RGB", (size, size), color)
    if box:
        image.paste((255, 255, 255), (2, 2, 2 + box, 2 + box))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def user(text: str, image: bytes | None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return [{"role": "user", "content": content}]


@contextlib.contextmanager
def running_server(model: MMGPT, **settings: Any) -> Iterator[str]:
    """The app on a free 127.0.0.1 port in a thread -> its base URL; stopped (and its worker) on exit."""
    server_settings = ServerSettings(model_name=NAME, **settings)
    app = create_app(model, server_settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, server_settings, "127.0.0.1", 0, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive()


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def server(model: MMGPT) -> Iterator[str]:
    with running_server(model, max_wait_ms=20, max_body_mb=0.5) as url:
        yield url


def prefix_length(model: MMGPT, prompt: str, image: bytes) -> int:
    """What model.prefix_embeds makes of one request, without padding: its prompt positions."""
    batch = model.processor([prompt], [image])
    with torch.no_grad():
        return int(model.prefix_embeds(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])[1].sum())


def generated(model: MMGPT, prompt: str, image: bytes) -> list[int]:
    """The tokens model.generate makes for one request, up to and with its eos."""
    batch = model.processor([prompt], [image])
    tokens = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])[0].tolist()
    eos = model.processor.tokenizer.eos_token_id
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def metric(url: str, name: str) -> dict[str, float]:
    """Samples of one metric from /metrics: {labels: value}."""
    text = httpx.get(f"{url}/metrics").text
    return {m.group(1) or "": float(m.group(2)) for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)}


def test_models_list_and_health(server: str) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == [NAME]
    assert client(server).models.retrieve(NAME).id == NAME
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_answer_equals_answer_and_usage_counts_the_prefix(server: str, model: MMGPT) -> None:
    image = png((200, 30, 30))
    reply = client(server).chat.completions.create(model=NAME, messages=user(QUESTION, image))
    expected = answer(QUESTION, image, model=model)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected
    prompt = model.config.vqa_template.format(question=QUESTION)
    assert reply.usage.prompt_tokens == prefix_length(model, prompt, image)
    assert reply.usage.completion_tokens == len(generated(model, prompt, image))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_completion_tokens_ends_with_length(server: str, model: MMGPT) -> None:
    image = png((30, 30, 200))
    full = answer(QUESTION, image, model=model)
    assert len(model.processor.tokenizer.encode(full, add_special_tokens=False)) > 2, full
    reply = client(server).chat.completions.create(model=NAME, messages=user(QUESTION, image),
                                                   max_completion_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 2
    assert reply.choices[0].message.content == answer(QUESTION, image, model=model, max_new_tokens=2)
    legacy = client(server).chat.completions.create(model=NAME, messages=user(QUESTION, image), max_tokens=2)
    assert legacy.choices[0].message.content == reply.choices[0].message.content


def test_streaming_equals_non_streaming_with_usage_chunk(server: str, model: MMGPT) -> None:
    image = png((30, 160, 30))
    whole = client(server).chat.completions.create(model=NAME, messages=user(QUESTION, image))
    chunks = list(client(server).chat.completions.create(model=NAME, messages=user(QUESTION, image), stream=True,
                                                         stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(bool(p) for p in pieces) >= 2  # it did stream, piece by piece
    assert "".join(pieces) == whole.choices[0].message.content == answer(QUESTION, image, model=model)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_ends_with_done(server: str) -> None:
    body = {"model": NAME, "messages": user(QUESTION, png((10, 10, 10))), "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all('"usage"' not in e for e in events)


def test_n_with_sampling_and_seed_is_reproducible(server: str) -> None:
    image = png((120, 60, 200))
    ask = dict(model=NAME, messages=user(QUESTION, image), n=2, temperature=1.0, seed=7)
    first = client(server).chat.completions.create(**ask)
    again = client(server).chat.completions.create(**ask)
    other = client(server).chat.completions.create(**{**ask, "seed": 8})
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.message.content for c in again.choices]
    assert texts != [c.message.content for c in other.choices]
    assert first.usage.completion_tokens >= 2


def test_multi_turn_is_the_training_conversation_prompt(server: str, model: MMGPT) -> None:
    image = png((200, 200, 30))
    messages = [{"role": "system", "content": "You answer briefly."}, *user(QUESTION, image),
                {"role": "assistant", "content": "red"}, {"role": "user", "content": "is there a circle?"}]
    reply = client(server).chat.completions.create(model=NAME, messages=messages)
    prompt = conversation_prompt([("user", QUESTION), ("assistant", "red"), ("user", "is there a circle?")])
    batch = model.processor([prompt], [image])
    expected = model.processor.decode(model.generate(batch["input_ids"], batch["attention_mask"],
                                                     batch["pixel_values"]))[0]
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == prefix_length(model, prompt, image)


def test_stop_string_cuts_the_answer(server: str, model: MMGPT) -> None:
    image = png((90, 90, 90))
    full = answer(QUESTION, image, model=model)
    stop = full.split()[1] if len(full.split()) > 1 else full[1:3]
    reply = client(server).chat.completions.create(model=NAME, messages=user(QUESTION, image), stop=[stop])
    assert reply.choices[0].message.content == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"
    streamed = client(server).chat.completions.create(model=NAME, messages=user(QUESTION, image), stop=stop,
                                                      stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[: full.index(stop)]


def post(url: str, body: Any = None, content: bytes | None = None, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body if content is None else None, content=content,
                      headers=headers, timeout=20)


def bad_requests() -> list[tuple[str, dict[str, Any] | bytes, int, str]]:
    """(case, body, status, a word its message must hold)."""
    image = png((1, 2, 3))
    good = {"model": NAME, "messages": user(QUESTION, image)}
    part = good["messages"][0]["content"]
    return [
        ("malformed JSON", b'{"model": "tiny", "messages": [', 400, "JSON"),
        ("not an object", b"[1, 2]", 400, "object"),
        ("no messages", {"model": NAME}, 422, "messages"),
        ("bad role", {**good, "messages": [{"role": "robot", "content": "hi"}]}, 422, "role"),
        ("n = 0", {**good, "n": 0}, 422, "n"),
        ("temperature 5", {**good, "temperature": 5}, 422, "temperature"),
        ("bad base64", {**good, "messages": [{"role": "user", "content": [
            part[0], {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not base64@@"}}]}]},
         400, "base64"),
        ("not an image", {**good, "messages": [{"role": "user", "content": [
            part[0], {"type": "image_url", "image_url": {"url": data_url(b"GIF89a but not really")}}]}]},
         400, "image"),
        ("bare string image_url", {**good, "messages": [{"role": "user", "content": [
            part[0], {"type": "image_url", "image_url": data_url(image)}]}]}, 400, "bare string"),
        ("no image", {**good, "messages": [{"role": "user", "content": QUESTION}]}, 400, "exactly one image"),
        ("two images", {**good, "messages": [{"role": "user", "content": [*part, part[1]]}]}, 400,
         "exactly one image"),
        ("http image refused", {**good, "messages": [{"role": "user", "content": [
            part[0], {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]}, 400,
         "--allow-image-urls"),
        ("unknown part type", {**good, "messages": [{"role": "user", "content": [
            part[1], {"type": "audio", "audio": {}}]}]}, 400, "type"),
        ("ends with assistant", {**good, "messages": [*good["messages"], {"role": "assistant", "content": "x"}]},
         400, "last message"),
        ("wrong model", {**good, "model": "gpt-4o"}, 404, "gpt-4o"),
        # wrong JSON types are refused, not coerced (max_tokens true was decoded as 1 token)
        ("max_tokens true", {**good, "max_tokens": True}, 422, "valid integer"),
        ("max_tokens as text", {**good, "max_tokens": "5"}, 422, "valid integer"),
        ("stream as text", {**good, "stream": "yes"}, 422, "valid boolean"),
        ("image in a system message", {**good, "messages": [{"role": "system", "content": [part[1]]},
                                                            {"role": "user", "content": QUESTION}]}, 400,
         "image_url parts go in user messages, not in a system message"),
        ("body too large", {**good, "padding": "x" * 600_000}, 413, "limit"),
    ]


@pytest.mark.parametrize("case, body, status, word", bad_requests(), ids=[c[0] for c in bad_requests()])
def test_bad_requests_get_their_status_and_the_server_keeps_serving(server: str, case: str, body: Any,
                                                                    status: int, word: str) -> None:
    response = post(server, content=body) if isinstance(body, bytes) else post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert word.lower() in error["message"].lower(), error
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert post(server, {"model": NAME, "messages": user(QUESTION, png((5, 5, 5)))}).status_code == 200


def test_n_over_max_batch_size_is_400_and_n_within_it_is_answered(model: MMGPT) -> None:
    with running_server(model, max_wait_ms=1, max_batch_size=2) as url:
        body = {"model": NAME, "messages": user(QUESTION, png((7, 8, 9))), "temperature": 1.0, "seed": 3}
        response = post(url, {**body, "n": 3})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"] == ("n=3 is more than the 2 rows this server decodes together "
                                                       "(--max-batch-size)")
        assert response.json()["error"]["param"] == "n"
        assert len(post(url, {**body, "n": 2}).json()["choices"]) == 2


def test_client_errors_through_openai(server: str) -> None:
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="nope", messages=user(QUESTION, png((1, 1, 1))))
    with pytest.raises(openai.BadRequestError, match="exactly one image"):
        client(server).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}])


def test_unknown_fields_are_ignored_with_a_log_line(server: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="mmgpt.serve"):
        response = post(server, {"model": NAME, "messages": user(QUESTION, png((7, 7, 7))), "frequency_penalty": 0.5,
                                 "logit_bias": {}})
    assert response.status_code == 200
    assert "frequency_penalty, logit_bias" in caplog.text


COLORS = ["red", "blue", "green", "a big red circle next to a blue square"]


def enum_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def test_response_format_enum_answers_one_of_its_values_through_openai(server: str, model: MMGPT) -> None:
    images = [png((200, 30, 30)), png((30, 30, 200), box=8), png((90, 200, 30), box=4)]
    openai_client = client(server)
    for image in images:
        ask = {"model": NAME, "messages": user(QUESTION, image)}
        reply = openai_client.chat.completions.create(
            **ask, response_format=enum_format({"type": "string", "enum": COLORS}))
        content = reply.choices[0].message.content
        assert json.loads(content) in COLORS and reply.choices[0].finish_reason == "stop"
        # the same answer as answer() with the choices: the server decodes as the Python API does
        assert json.loads(content) == answer(QUESTION, image, model=model, answer_choices=COLORS)
        wrapped = openai_client.chat.completions.create(**ask, response_format=enum_format(
            {"type": "object", "properties": {"color": {"type": "string", "enum": COLORS}}, "required": ["color"]}))
        assert json.loads(wrapped.choices[0].message.content) == {"color": json.loads(content)}
        guided = openai_client.chat.completions.create(**ask, extra_body={"guided_choice": COLORS})
        assert guided.choices[0].message.content == json.loads(content)
        pieces = openai_client.chat.completions.create(**ask, stream=True, extra_body={"guided_choice": COLORS},
                                                       temperature=1.0, seed=1)
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) in COLORS


@pytest.mark.parametrize("extra, message", [
    ({"response_format": {"type": "json_object"}}, "response_format type 'json_object' is not supported"),
    ({"response_format": enum_format({"type": "integer"})}, "unsupported JSON schema"),
    ({"response_format": enum_format({"type": "object", "properties": {"a": {"enum": ["x"]}, "b": {}}})},
     "exactly one property"),
    ({"response_format": enum_format({"enum": []})}, "non-empty list"),
    ({"guided_choice": "red"}, "guided_choice must be a non-empty list"),
    ({"guided_choice": ["red"], "response_format": enum_format({"enum": ["red"]})}, "not both"),
    ({"guided_choice": ["red", "Zebra"]}, "cannot be written by this model's tokenizer"),
])
def test_unsupported_response_formats_are_refused_not_ignored(server: str, extra: dict, message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message):
        client(server).chat.completions.create(model=NAME, messages=user(QUESTION, png((9, 9, 9))),
                                               extra_body=extra)


def test_api_key(model: MMGPT) -> None:
    with running_server(model, api_key="sesame") as url:
        body = {"model": NAME, "messages": user(QUESTION, png((3, 3, 3)))}
        assert post(url, body).status_code == 401
        assert post(url, body, Authorization="Bearer wrong").json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        assert client(url, "sesame").chat.completions.create(**body).choices[0].message.content
        assert httpx.get(f"{url}/health").status_code == 200


def test_sixteen_concurrent_clients_get_answer_one_at_a_time(model: MMGPT) -> None:
    asks = [(q, png(c, box=b)) for q, c, b in zip(
        [QUESTION, "is there a circle?", "how many shapes are there?", ""] * 4,
        [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)] * 4, [0] * 4 + [4] * 4 + [8] * 4 + [12] * 4)]
    expected = [answer(q, image, model=model) for q, image in asks]
    with running_server(model, max_wait_ms=100, max_batch_size=16) as url:
        api = client(url)

        def ask(i: int) -> str:
            return api.chat.completions.create(model=NAME, messages=user(*asks[i]), temperature=0).choices[0]\
                .message.content

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            got = list(pool.map(ask, range(16)))
        assert got == expected
        buckets = metric(url, "mmgpt_batch_size_bucket")
        count = metric(url, "mmgpt_batch_size_count")[""]
        assert buckets['{le="1.0"}'] < count  # some batch held more than one request
        assert metric(url, "mmgpt_batch_size_sum")[""] == 16
        assert metric(url, "mmgpt_requests_total")['{path="/v1/chat/completions",status="200"}'] == 16
        assert metric(url, "mmgpt_request_latency_seconds_count")[""] == 16
        assert metric(url, "mmgpt_time_to_first_token_seconds_count")[""] == 16
        assert metric(url, "mmgpt_generated_tokens_total")[""] > 16
        assert metric(url, "mmgpt_queue_depth")[""] == 0


def test_queue_limit_gives_429(model: MMGPT) -> None:
    body = {"model": NAME, "messages": user(QUESTION, png((50, 50, 50)))}
    # the first request waits max_wait_ms for company: two fill the queue, the third is turned away
    with running_server(model, max_wait_ms=1500, max_queue=2) as url:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(post, url, body) for _ in range(2)]
            deadline = time.monotonic() + 5
            while httpx.get(f"{url}/health").json()["queued"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            refused = post(url, body)
            assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
            assert [f.result().status_code for f in waiting] == [200, 200]
        assert post(url, body).status_code == 200


def test_requests_coming_one_at_a_time_skip_the_batching_window(model: MMGPT) -> None:
    body = {"model": NAME, "messages": user(QUESTION, png((70, 20, 120))), "stream": True}

    def latency() -> float:
        start = time.monotonic()
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=20) as response:
            assert response.status_code == 200 and [e for e in response.iter_lines() if e][-1] == "data: [DONE]"
        return time.monotonic() - start

    with running_server(model, max_wait_ms=800) as url:
        first, second, third = latency(), latency(), latency()
    assert first >= 0.8  # a server starts out waiting for company
    assert second < 0.4 and third < 0.4, (second, third)


def test_timeout_gives_504_and_a_gone_client_is_not_decoded(model: MMGPT) -> None:
    body = {"model": NAME, "messages": user(QUESTION, png((60, 60, 60)))}
    with running_server(model, max_wait_ms=800, timeout_s=0.3) as url:
        response = post(url, body)
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        time.sleep(0.8)  # its batch came due: it was dropped, not decoded
        assert metric(url, "mmgpt_batch_size_count")[""] == 0
    with running_server(model, max_wait_ms=800) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=0.3)
        time.sleep(0.8)
        assert metric(url, "mmgpt_batch_size_count")[""] == 0
        assert post(url, body).status_code == 200
        assert metric(url, "mmgpt_batch_size_count")[""] == 1


def test_a_stream_the_client_closes_stops(model: MMGPT) -> None:
    body = {"model": NAME, "messages": user(QUESTION, png((70, 70, 70))), "stream": True, "max_tokens": 40}
    with running_server(model) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            next(response.iter_lines())
        assert post(url, {**body, "stream": False}).status_code == 200


def test_served_name() -> None:
    assert served_name("runs/default/model") == "default"
    assert served_name("/tmp/some/tiny") == "tiny"
    assert served_name("hf://org/name") == "org/name"


def test_cli_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--max-batch-size", "0"]) == 2
    assert "mmgpt serve: error: --max-batch-size must be >= 1, got 0" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "/nonexistent/model", "--port", "0"]) == 2
    assert "mmgpt serve: error:" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["jpeg", "webp", "gif"])
def test_jpeg_webp_and_gif_images(server: str, model: MMGPT, kind: str) -> None:
    buffer = io.BytesIO()
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    image.save(buffer, kind.upper(), **({"save_all": True, "append_images": [Image.new("RGB", (32, 32))]}
                                        if kind == "gif" else {}))
    messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                             {"type": "image_url", "image_url": {"url": data_url(buffer.getvalue(),
                                                                                                 kind)}}]}]
    reply = client(server).chat.completions.create(model=NAME, messages=messages)
    assert reply.choices[0].message.content == answer(QUESTION, buffer.getvalue(), model=model)  # first frame


def test_a_data_url_scheme_in_capitals_is_read(server: str, model: MMGPT) -> None:
    image = png((90, 20, 200), box=5)
    url = "DATA:image/PNG;BASE64," + base64.b64encode(image).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    reply = client(server).chat.completions.create(model=NAME, messages=messages)
    assert reply.choices[0].message.content == answer(QUESTION, image, model=model)


def test_allowed_image_urls_still_refuse_private_addresses(model: MMGPT) -> None:
    with running_server(model, allow_image_urls=True) as url:
        # IPv6 forms that reach 127.0.0.1 or 169.254.169.254 through a gateway (NAT64, 6to4, IPv4-compatible)
        embedded = ("http://[64:ff9b::7f00:1]/x.png", "http://[64:ff9b::a9fe:a9fe]/x.png",
                    "http://[2002:7f00:1::]/x.png", "http://[::127.0.0.1]/x.png")
        for address in (f"{url}/static/playground.css", "http://10.0.0.1/x.png", "http://[::1]/x.png", *embedded):
            body = {"model": NAME, "messages": [{"role": "user", "content": [
                {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": address}}]}]}
            response = post(url, body)
            assert response.status_code == 400
            assert "non-public address" in response.json()["error"]["message"]
        # no host: named as such, not as a redirect (nothing was fetched)
        body = {"model": NAME, "messages": [{"role": "user", "content": [
            {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": "http:///x.png"}}]}]}
        response = post(url, body)
        assert response.status_code == 400
        assert "image URL without an http(s) scheme and host name: 'http:///x.png'" in \
            response.json()["error"]["message"]


def _concurrently(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: post(url, content=body, **{"Content-Type": "application/json"}), bodies))


def test_a_lone_surrogate_is_400_and_the_requests_beside_it_are_answered(model: MMGPT) -> None:
    image = png((40, 90, 140))
    good = json.dumps({"model": NAME, "messages": user(QUESTION, image)}).encode()
    bad = json.dumps({"model": NAME, "messages": user("what\ud800 color?", image)}).encode()  # "\ud800" in JSON
    with running_server(model, max_wait_ms=300) as url:
        responses = _concurrently(url, [bad] + [good] * 8)
    assert [r.status_code for r in responses] == [400] + [200] * 8, [r.text[:200] for r in responses]
    error = responses[0].json()["error"]
    assert error["param"] == "messages[0].content[0].text"
    assert "lone surrogate '\\ud800' at index 4" in error["message"]
    expected = answer(QUESTION, image, model=model)
    assert all(r.json()["choices"][0]["message"]["content"] == expected for r in responses[1:])


def test_a_request_failing_in_a_batch_fails_alone(model: MMGPT) -> None:
    """Whatever makes a batch fail (here a prompt the tokenizer refuses, past admission), it fails only its culprit."""
    metrics = Metrics()
    worker = Worker(model, metrics, max_batch_size=16, max_wait_ms=1000)
    images = [png((30 * i, 60, 90), box=i) for i in range(5)]
    events: list[list[Event]] = [[] for _ in images]
    prompts = [model.config.vqa_template.format(question=QUESTION)] * 5
    prompts[2] = "what\ud800 color?"
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        worker.submit(Job(prompt=prompt, pixels=model.processor.image_tensor(image), config=model.generation_config,
                          emit=events[i].append, stream=i == 3))
    worker.start()
    worker.stop(timeout=30)  # decodes what is queued: the five in one batch
    assert isinstance(events[2][-1], Failed) and "TypeError" in events[2][-1].message
    for i in (0, 1, 3, 4):
        done = events[i][-1]
        assert isinstance(done, Done), events[i]
        assert [isinstance(e, First) for e in events[i]].count(True) == 1
        assert done.choices[0].text == answer(QUESTION, images[i], model=model)
    streamed = "".join(e.text for e in events[3] if isinstance(e, Delta))
    assert streamed == events[3][-1].choices[0].text  # streamed once


def test_max_tokens_over_either_limit_is_400_naming_both(model: MMGPT) -> None:
    image = png((100, 30, 60))
    prompt = model.config.vqa_template.format(question=QUESTION)
    limit = 64 - prefix_length(model, prompt, image)  # the tiny llama reads 64 positions
    body = {"model": NAME, "messages": user(QUESTION, image)}
    # a short --timeout-s: without the limits, max_tokens=10**9 would decode until then
    with running_server(model, max_tokens=limit - 3, timeout_s=5) as url:
        for asked, over in ((10**9, "over this model's limit"), (limit + 1, "over this model's limit"),
                            (limit - 2, "within this model's limit")):
            response = post(url, {**body, "max_tokens": asked})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "max_tokens" and error["code"] == "max_tokens_too_large"
            assert error["message"].startswith(f"max_tokens={asked} is {over} of {limit} (its generator reads 64 "
                                               f"positions"), error
            assert f"the server's --max-tokens of {limit - 3}" in error["message"], error
        assert post(url, {**body, "max_completion_tokens": limit + 1}).json()["error"]["param"] == \
            "max_completion_tokens"
        assert post(url, {**body, "max_tokens": limit - 3}).status_code == 200
    with running_server(model, max_tokens=10**6) as url:
        assert post(url, {**body, "max_tokens": limit}).status_code == 200
        assert post(url, {**body, "max_tokens": limit + 1}).status_code == 400


def test_hostile_json_and_a_vanishing_temperature_are_no_server_errors(server: str, model: MMGPT,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    image = png((10, 200, 100))
    with caplog.at_level("WARNING"):
        deep = post(server, content=b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        huge_number = post(server, content=b'{"model": "tiny", "n": ' + b"9" * 5000 + b"}")
        cold = post(server, {"model": NAME, "messages": user(QUESTION, image), "temperature": 1e-300, "seed": 1})
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]
    assert huge_number.status_code == 400 and "not valid JSON" in huge_number.json()["error"]["message"]
    assert cold.status_code == 200, cold.text
    assert cold.json()["choices"][0]["message"]["content"] == answer(QUESTION, image, model=model)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text[-2000:]


def _stalled_upload(url: str) -> socket.socket:
    """A connection that sends a request's headers and the start of its body, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{\"model\": \"tiny\", ")
    return sock


def test_a_stalled_upload_gets_408_and_never_holds_the_batch_window(model: MMGPT) -> None:
    body = {"model": NAME, "messages": user(QUESTION, png((80, 80, 20)))}

    def latency() -> float:
        start = time.monotonic()
        assert post(url, body).status_code == 200
        return time.monotonic() - start

    # alone, a request waits the 1.5 s window for company; a batch used to wait a further window for any
    # request still being uploaded that had arrived before it was due
    with running_server(model, max_wait_ms=1500, body_timeout_s=4) as url:
        alone = latency()
        stalled = _stalled_upload(url)
        opened = time.monotonic()
        beside_a_stalled_upload = latency()
        stalled.settimeout(10)
        reply = stalled.recv(4096)
        waited = time.monotonic() - opened
        stalled.close()
    assert beside_a_stalled_upload < alone + 0.75, (alone, beside_a_stalled_upload)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"--body-timeout-s 4" in reply and 3.5 < waited < 8


def test_idle_connections_are_closed_and_capped(model: MMGPT) -> None:
    body = {"model": NAME, "messages": user(QUESTION, png((20, 20, 20)))}
    with running_server(model, keep_alive_s=0.5, max_connections=3) as url:
        host, port = url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(2)]
        idle[1].sendall(b"GET /health HTTP/1.1\r\n")  # headers begun, never finished
        refused = post(url, body)
        assert refused.status_code == 503, refused.text  # the two idle ones and this one reach the cap
        started = time.monotonic()
        assert [s.recv(100) for s in idle] == [b"", b""]  # closed by the server
        assert time.monotonic() - started < 3
        assert post(url, body).status_code == 200
        for sock in idle:
            sock.close()


class ImageHost:
    """An HTTP server on 127.0.0.1 serving one PNG at any path, recording each request's path and Host header."""

    def __init__(self, data: bytes) -> None:
        import http.server

        self.requests: list[tuple[str, str]] = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                host.requests.append((self.path, self.headers.get("Host", "")))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ImageHost:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


PUBLIC = "93.184.215.14"  # a public address nothing here may reach: connections to it go to the ImageHost


def fake_network(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]], image_port: int) -> list[tuple]:
    """Resolve each name in `names` to its next address (the last one repeats); connections to PUBLIC reach
    127.0.0.1:image_port only if `PUBLIC` is mapped, other public addresses are refused: nothing leaves the machine.
    -> the list of (host, port) that connections were asked for."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection
    answers = {name: iter(addresses) for name, addresses in names.items()}
    last: dict[str, str] = {}
    connected: list[tuple] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
        if host in answers:
            last[host] = next(answers[host], last.get(host))
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (last[host], port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    def create_connection(address: tuple, *args: Any, **kwargs: Any) -> socket.socket:
        host, port = address[:2]
        connected.append((host, port))
        if host in answers:  # a name: resolved again here, as a plain client would
            host = getaddrinfo(host, port)[0][4][0]
        if host == PUBLIC:
            return real_connect(("127.0.0.1", image_port), *args, **kwargs)
        if host == "127.0.0.1":
            return real_connect((host, port), *args, **kwargs)
        raise ConnectionRefusedError(f"{host} is not reachable from a test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return connected


def url_image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_an_image_url_is_fetched_from_the_address_that_was_checked(model: MMGPT,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    image = png((150, 20, 200), box=6)
    with ImageHost(image) as host, running_server(model, allow_image_urls=True) as url:
        connected = fake_network(monkeypatch, {"images.test": [PUBLIC]}, host.port)
        where = f"http://images.test:{host.port}/shape.png?size=32"
        reply = post(url, {"model": NAME, "messages": [{"role": "user", "content": [
            {"type": "text", "text": QUESTION}, url_image(where)]}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == answer(QUESTION, image, model=model)
        assert host.requests == [("/shape.png?size=32", f"images.test:{host.port}")]
        assert (PUBLIC, host.port) in connected
        # DNS rebinding: the name answers a public address when checked, then a loopback one
        rebind = fake_network(monkeypatch, {"rebind.test": [PUBLIC.replace("14", "15"), "127.0.0.1"]}, host.port)
        refused = post(url, {"model": NAME, "messages": [{"role": "user", "content": [
            {"type": "text", "text": QUESTION}, url_image(f"http://rebind.test:{host.port}/x.png")]}]})
        assert refused.status_code == 400 and "cannot fetch the image" in refused.json()["error"]["message"]
        assert len(host.requests) == 1  # the loopback server was not reached
        # connected to the checked address only
        assert [c for c in rebind if c[1] == host.port] == [(PUBLIC.replace("14", "15"), host.port)]


def test_image_count_is_checked_before_any_image_is_fetched(model: MMGPT, monkeypatch: pytest.MonkeyPatch) -> None:
    with ImageHost(png((1, 2, 3))) as host, running_server(model, allow_image_urls=True) as url:
        fake_network(monkeypatch, {"images.test": [PUBLIC]}, host.port)
        images = [url_image(f"http://images.test:{host.port}/{i}.png") for i in range(50)]
        response = post(url, {"model": NAME, "messages": [{"role": "user", "content": [
            {"type": "text", "text": QUESTION}, *images]}]})
        assert response.status_code == 400 and response.json()["error"]["code"] == "one_image_required"
        bad_text_last = [{"type": "text", "text": QUESTION}, images[0], {"type": "text", "text": "\udfff"}]
        body = json.dumps({"model": NAME, "messages": [{"role": "user", "content": bad_text_last}]}).encode()
        assert post(url, content=body).status_code == 400
        too_long = {"model": NAME, "max_tokens": 10**9, "messages": [{"role": "user", "content": [
            {"type": "text", "text": QUESTION}, images[0]]}]}
        assert post(url, too_long).json()["error"]["code"] == "max_tokens_too_large"
        assert host.requests == []


@pytest.mark.slow
def test_the_serving_guides_usage_figures_are_what_the_server_counts() -> None:
    # the main job's model as far as counting goes: the default config and its tokenizer, trained as train.py
    # trains it on the default training text (the weights do not change how many prefix positions there are)
    from mmgpt.prompts import PromptTemplates
    from mmgpt.tokenizer import train_tokenizer
    from mmgpt.training.config import load_train_config
    from mmgpt.training.loop import read_splits

    serving = (Path(__file__).resolve().parent.parent / "docs" / "serving.md").read_text()
    curl_question = re.search(r'"type": "text", "text": "([^"]+)"', serving)[1]
    curl_usage = json.loads(re.search(r'"usage": (\{[^}]*\})', serving)[1])
    client_question = re.search(r'"type": "text", "text": "([^"]+)"}', serving[serving.index("```python"):])[1]
    client_prompt_tokens = int(re.search(r"CompletionUsage\(.*prompt_tokens=(\d+)", serving)[1])
    assert curl_usage["total_tokens"] == curl_usage["prompt_tokens"] + curl_usage["completion_tokens"]

    cfg = load_train_config("default")
    templates = PromptTemplates.from_config(cfg.model)
    texts = [t for _, examples in read_splits(cfg.data.train, templates) for e in examples
             for t in (e.prompt, e.answer)]
    model = MMGPT.from_config(cfg.model, tokenizer=train_tokenizer(texts, cfg.model.tokenizer)).eval()
    image = png((200, 30, 30))
    with running_server(model) as url:
        for question, expected in ((curl_question, curl_usage["prompt_tokens"]),
                                   (client_question, client_prompt_tokens)):
            reply = client(url).chat.completions.create(model=NAME, messages=user(question, image), max_tokens=2)
            assert (question, reply.usage.prompt_tokens) == (question, expected)


@contextlib.contextmanager
def encoded_images(model: MMGPT) -> Iterator[list[int]]:
    """The number of images in each call of the model's image encoder while inside."""
    calls: list[int] = []
    handle = model.image_encoder.register_forward_hook(lambda _module, args, _out: calls.append(len(args[0])))
    try:
        yield calls
    finally:
        handle.remove()


def test_a_repeated_image_is_encoded_once(model: MMGPT) -> None:
    """A chat re-sending its image every turn: the image encoder reads it once, the cache answers the other turns."""
    image = png((40, 90, 200), box=5)
    turns = [user(QUESTION, image), user("is there a circle?", image),
             [*user(QUESTION, image), {"role": "assistant", "content": "red"}, *user("and the shape?", None)]]
    with running_server(model, max_wait_ms=1) as url, encoded_images(model) as calls:
        replies = [client(url).chat.completions.create(model=NAME, messages=m) for m in turns]
        assert metric(url, "mmgpt_image_cache_misses_total") == {"": 1.0}
        assert metric(url, "mmgpt_image_cache_hits_total") == {"": 2.0}
        stored = metric(url, "mmgpt_image_cache_bytes")[""]
    assert sum(calls) == 1
    assert 0 < stored <= ServerSettings(NAME).image_cache_mb * 2**20
    assert replies[0].choices[0].message.content == answer(QUESTION, image, model=model)
    assert replies[1].choices[0].message.content == answer("is there a circle?", image, model=model)


def test_the_same_text_with_another_image_never_gets_the_first_images_answer(model: MMGPT) -> None:
    """Images differing in one pixel have their own cache entries: each answer is answer()'s for its own image."""
    first = png((255, 0, 0))  # the tiny model's answer to QUESTION differs for this colour and the others below
    pixels = Image.open(io.BytesIO(first)).convert("RGB")
    pixels.putpixel((0, 0), (0, 0, 255))
    buffer = io.BytesIO()
    pixels.save(buffer, "PNG")
    others = [buffer.getvalue(), png((0, 0, 0)), png((0, 255, 0)), png((0, 0, 255), box=20)]
    expected = {image: answer(QUESTION, image, model=model) for image in [first, *others]}
    assert all(expected[first] != expected[image] for image in others[1:]), "the images must differ in answer"
    with running_server(model, max_wait_ms=1) as url:
        for image in [first, *others, first, *others]:  # the second round from the cache
            reply = client(url).chat.completions.create(model=NAME, messages=user(QUESTION, image))
            assert reply.choices[0].message.content == expected[image]
        assert metric(url, "mmgpt_image_cache_misses_total") == {"": 1.0 + len(others)}


def test_the_image_cache_keeps_its_byte_bound_dropping_the_least_recently_used() -> None:
    """Outputs beyond max_bytes push out the least recently used; one larger than the bound is not kept."""
    metrics = Metrics()
    entry = torch.zeros(4, 8)  # 128 bytes
    cache = ImageCache(max_bytes=3 * 128 + 100, metrics=metrics)
    for key in "abc":
        cache.put(key, entry + ord(key))
    assert cache.get("a") is not None  # "a" is now the most recently used, "b" the least
    cache.put("d", entry)
    assert cache.get("b") is None and all(cache.get(k) is not None for k in "acd")
    assert len(cache) == 3 and cache.bytes == 3 * 128 <= cache.max_bytes
    cache.put("huge", torch.zeros(1000))
    assert cache.get("huge") is None and cache.bytes == 3 * 128
    assert metrics.image_cache_bytes._value.get() == 3 * 128


def test_an_image_key_is_the_full_sha256_of_dtype_shape_and_every_pixel() -> None:
    pixels = torch.rand(3, 8, 8)
    changed = pixels.clone()
    changed[2, 7, 7] += 1e-6
    keys = {image_key(pixels), image_key(changed), image_key(pixels.reshape(3, 4, 16)), image_key(pixels.double())}
    assert len(keys) == 4
    assert image_key(pixels) == image_key(pixels.clone()) and re.fullmatch(r"[0-9a-f]{64}", image_key(pixels))


def test_a_batch_encodes_each_distinct_image_once(model: MMGPT) -> None:
    """Five requests over two images in one batch: one encoder call of two images, with and without the cache."""
    images = [png((10, 200, 10)), png((10, 10, 200), box=3)]
    prompt = model.config.vqa_template.format(question=QUESTION)
    model.prefix_length(1)  # reads the encoder's token count once, as create_app does
    for cache_mb in (0.0, 1.0):
        worker = Worker(model, Metrics(), max_batch_size=16, max_wait_ms=1000, image_cache_mb=cache_mb)
        events: list[list[Event]] = [[] for _ in range(5)]
        for i in range(5):
            worker.submit(Job(prompt=prompt, pixels=model.processor.image_tensor(images[i % 2]),
                              config=model.generation_config, emit=events[i].append))
        with encoded_images(model) as calls:
            worker.start()
            worker.stop(timeout=30)
        assert calls == [2]
        for i in range(5):
            assert events[i][-1].choices[0].text == answer(QUESTION, images[i % 2], model=model)


def test_the_docs_state_the_serving_defaults_the_command_uses() -> None:
    """Each `--flag` (N) in README.md and docs/ is ServerSettings' default, which is also the command line's."""
    from mmgpt.serve.command import SETTING_FLAGS, build_parser

    root = Path(__file__).resolve().parent.parent
    text = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("**/*.md"))])
    stated = {flag: float(value) for flag, value in re.findall(r"`(--[a-z-]+)`\s+\((\d+(?:\.\d+)?)\)", text)}
    flags = {flag: flag[2:].replace("-", "_") for flag, _, _ in SETTING_FLAGS}
    defaults = vars(build_parser("mmgpt serve").parse_args([]))
    assert {"--max-batch-size", "--max-wait-ms", "--max-queue", "--image-cache-mb"} <= stated.keys()
    for flag, value in stated.items():
        if flag in flags:
            assert value == getattr(ServerSettings(NAME), flags[flag]) == defaults[flags[flag]], flag


def test_streamed_requests_with_stop_strings_decode_as_answer_does(model: MMGPT, server: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker watches each step without leaving answer()'s decoding loop (mmgpt.static_decoding)."""
    from mmgpt import static_decoding

    calls = []
    fast = static_decoding.generate
    monkeypatch.setattr(static_decoding, "generate", lambda *a, **k: calls.append(sorted(k)) or fast(*a, **k))
    image = png((90, 20, 160))
    stream = client(server).chat.completions.create(model=NAME, messages=user(QUESTION, image), stream=True,
                                                    stop=["zzz"], temperature=0)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == answer(QUESTION, image, model=model)
    assert calls[0] == ["stopping_criteria"]  # the request's decoding, before answer()'s
