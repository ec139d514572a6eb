"""The FastAPI app: `create_app(model, settings)` serves one model on the OpenAI Chat Completions protocol."""

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STATIC = resources.files("mmgpt.serve") / "static"


@dataclass
class ServerSettings:
    """How the server admits and serves requests (the command line's options)."""

    model_name: str
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_body_mb: float = 20.0
    timeout_s: float = 60.0
    api_key: str | None = None
    allow_image_urls: bool = False
    max_tokens: int = 1024  # new tokens a request may ask for, below the model's own position limit
    body_timeout_s: float = 10.0  # a request body not received by then gets 408
    keep_alive_s: float = 5.0  # a connection without a request (idle, or its headers unfinished) is closed
    max_connections: int = 512  # connections beyond this get 503


def served_name(model_path: str | Path) -> str:
    """The model id clients send: the folder's name, or NAME for a training run's runs/NAME/model."""
    text = str(model_path).rstrip("/")
    if text.startswith("hf://"):
        return text[len("hf://"):]
    path = Path(text).expanduser().resolve()
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def create_app(model: Any, settings: ServerSettings) -> Any:
    """A FastAPI app serving `model` (an MMGPT) on the OpenAI Chat Completions protocol."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    from mmgpt.constrained import choice_token_ids
    from mmgpt.decoding import check_answer_length, resolve_generation_config
    from mmgpt.images import ImageError
    from mmgpt.serve.conversation import conversation
    from mmgpt.serve.images import FetchLimits
    from mmgpt.serve.metrics import Metrics, RequestCounter
    from mmgpt.serve.schemas import APIError, ChatCompletionRequest
    from mmgpt.serve.structured import AnswerFormat, answer_format
    from mmgpt.serve.worker import Job, QueueFull, Worker

    metrics = Metrics()
    worker = Worker(model, metrics, settings.max_batch_size, settings.max_wait_ms, settings.max_queue)
    model.prefix_length(1)  # reads the image encoder's token count once, before requests share the model
    limits = FetchLimits(allowed=settings.allow_image_urls, max_bytes=int(settings.max_body_mb * 2**20))
    max_body = int(settings.max_body_mb * 2**20)
    created = int(time.time())
    replica = f"{socket.gethostname()}:{os.getpid()}"  # which process answered, behind a router of several

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        logger.info("serving %s (max batch %d, max wait %g ms, max queue %d)", settings.model_name,
                    settings.max_batch_size, settings.max_wait_ms, settings.max_queue)
        yield
        # uvicorn has let in-flight requests finish; what is still queued is decoded before the thread ends
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="mmgpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.metrics = worker, metrics
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(APIError)
    async def api_error(_request: Request, error: APIError) -> JSONResponse:
        # after a 408 the rest of the body may still arrive: the connection cannot carry another request
        headers = {"Connection": "close"} if error.status == 408 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return JSONResponse(APIError(500, f"internal error: {type(error).__name__}").body(), status_code=500)

    app.add_middleware(RequestCounter, metrics=metrics)

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'" if given else
                           "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    def model_card() -> dict[str, Any]:
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "mmgpt"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        check_key(request)
        if name != settings.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
        return model_card()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_name, "queued": worker.queued(), "replica": replica}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def playground() -> FileResponse:
        return FileResponse(str(STATIC / "playground.html"), media_type="text/html")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise APIError(413, f"request body of {int(declared)} bytes is over the limit of {max_body} "
                                f"(--max-body-mb {settings.max_body_mb:g})", code="request_too_large")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_body:
                        raise APIError(413, f"request body is over the limit of {max_body} bytes "
                                            f"(--max-body-mb {settings.max_body_mb:g})", code="request_too_large")
                    chunks.append(chunk)
        except TimeoutError:
            raise APIError(408, f"the request body did not arrive within --body-timeout-s {settings.body_timeout_s:g}"
                                f" s ({size} bytes came)", code="request_timeout") from None
        return b"".join(chunks)

    def parse(body: bytes) -> ChatCompletionRequest:
        try:
            data = json.loads(body)
        except RecursionError:
            raise APIError(400, "the request body is JSON nested too deeply to read", code="invalid_json") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
            raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
        try:
            chat = ChatCompletionRequest.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"])
            raise APIError(422, f"{param}: {first['msg']}" + (f" ({len(e.errors()) - 1} more problems)"
                                                               if len(e.errors()) > 1 else ""), param=param) from None
        if chat.model_extra:
            logger.info("ignored request fields: %s", ", ".join(sorted(chat.model_extra)))
        return chat

    def decoding(chat: ChatCompletionRequest, form: AnswerFormat, prefix_length: int) -> Any:
        """The request's GenerationConfig; max_tokens must fit the positions the prefix leaves, and --max-tokens."""
        options: dict[str, Any] = {}
        name = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
        max_tokens = chat.max_completion_tokens or chat.max_tokens
        if max_tokens is not None:
            try:
                check_answer_length(max_tokens, prefix_length, model.max_positions, name=name,
                                    cap=(settings.max_tokens, "the server's --max-tokens"))
            except ValueError as e:
                raise APIError(400, str(e), param=name, code="max_tokens_too_large") from None
            options["max_new_tokens"] = max_tokens
        else:  # the model's default length, within the same limits
            limits = [model.generation_config.max_new_tokens, settings.max_tokens,
                      None if model.max_positions is None else max(0, model.max_positions - prefix_length)]
            options["max_new_tokens"] = min(n for n in limits if n is not None)
        if chat.temperature == 0:
            options["do_sample"] = False  # OpenAI's greedy
        else:
            options["temperature"], options["top_p"] = chat.temperature, chat.top_p
        if form.choices is not None:
            param = "guided_choice" if chat.guided_choice is not None else "response_format"
            try:
                longest = max(len(ids) for ids in choice_token_ids(form.choices, model.processor.tokenizer))
                # the choices set the answer length: the longest must fit, whatever max_tokens says
                check_answer_length(longest, prefix_length, model.max_positions, name="the longest choice's tokens",
                                    cap=(settings.max_tokens, "the server's --max-tokens"))
            except ValueError as e:
                raise APIError(400, f"{param}: {e}", param=param) from None
            options["answer_choices"] = form.choices
        try:
            return resolve_generation_config(model.generation_config, **options)[0]
        except (TypeError, ValueError) as e:
            raise APIError(400, f"decoding options: {e}") from None

    def prompt_positions(prompt: str) -> int:
        """Positions the prompt's prefix takes (its ids are cached by the processor for the batch)."""
        return model.prefix_length(len(model.processor.prompt_ids(prompt)))

    async def admit(body: bytes, arrival: float) -> tuple[ChatCompletionRequest, Job, asyncio.Queue]:
        """Check and preprocess a request's body and queue its job -> (request, job, the queue of its events)."""
        chat = parse(body)
        if chat.model != settings.model_name:
            raise APIError(404, f"model {chat.model!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
        stops = chat.stop_strings()
        asked = await asyncio.to_thread(conversation, model, chat.messages)
        form = answer_format(chat.response_format, chat.guided_choice)
        config = decoding(chat, form, await asyncio.to_thread(prompt_positions, asked.prompt))
        # the request is checked whole before its image is decoded or fetched
        image = await asyncio.to_thread(asked.image, limits)
        try:
            pixels = await asyncio.to_thread(model.processor.image_tensor, image)
        except ImageError as e:
            raise APIError(400, f"{asked.image_param}: {e}", param=asked.image_param, code="invalid_image") from None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(prompt=asked.prompt, pixels=pixels, config=config, emit=emit, n=chat.n, seed=chat.seed,
                  stops=stops, stream=chat.stream, arrival=arrival, render=form.render)
        try:
            worker.submit(job)
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}; retry later", code="queue_full", type="rate_limit_error") from None
        return chat, job, events

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrival = time.monotonic()
        check_key(request)
        body = await read_body(request)
        # only now may a batch wait for this request: an upload still under way never holds others back
        with worker.arriving(time.monotonic()):
            chat, job, events = await admit(body, arrival)
        deadline = arrival + settings.timeout_s
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": settings.model_name}
        gone = asyncio.ensure_future(disconnected(request))
        try:
            if chat.stream:
                # until the first token the client may still get a 504; StreamingResponse watches it after that
                first = await next_event(gone, job, events, deadline)
                include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
                return StreamingResponse(stream(job, events, first, reply, include_usage, deadline),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            while (event := await next_event(gone, job, events, deadline))[0] != "done":
                pass
        finally:
            gone.cancel()
        _, choices, prompt_tokens = event
        metrics.latency.observe(time.monotonic() - arrival)
        completion = sum(c.completion_tokens for c in choices)
        return JSONResponse({
            **reply, "object": "chat.completion",
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                         "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion},
        })

    async def next_event(gone: asyncio.Future, job: Job, events: asyncio.Queue, deadline: float) -> tuple:
        """The job's next event; the client leaving (`gone`) cancels the job, the deadline gives 504, an error 500."""
        get = asyncio.ensure_future(events.get())
        try:
            done, _ = await asyncio.wait({get, gone}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():
                get.cancel()
        if get not in done:
            job.cancelled.set()
            if gone in done:
                raise APIError(499, "client closed the request")
            raise APIError(504, f"no answer within --timeout-s {settings.timeout_s:g} s", code="timeout")
        event = get.result()
        if event[0] == "first":
            metrics.time_to_first_token.observe(time.monotonic() - job.arrival)
        elif event[0] == "error":
            raise APIError(500, event[1])
        return event

    async def disconnected(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def stream(job: Job, events: asyncio.Queue, first: tuple, reply: dict[str, Any], include_usage: bool,
                     deadline: float) -> AsyncIterator[str]:
        base = {**reply, "object": "chat.completion.chunk"}
        extra = {"usage": None} if include_usage else {}

        def chunk(choices: list[dict[str, Any]], **more: Any) -> str:
            return f"data: {json.dumps({**base, 'choices': choices, **extra, **more})}\n\n"

        try:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(job.n)])
            event = first
            while True:
                if event[0] == "delta":
                    yield chunk([{"index": event[1], "delta": {"content": event[2]}, "logprobs": None,
                                  "finish_reason": None}])
                elif event[0] == "error":
                    yield f"data: {json.dumps(APIError(500, event[1]).body())}\n\n"
                    return
                elif event[0] == "done":
                    break
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        event = await events.get()
                except TimeoutError:
                    job.cancelled.set()
                    yield f"data: {json.dumps(APIError(504, 'answer not finished within --timeout-s').body())}\n\n"
                    return
                if event[0] == "first":
                    metrics.time_to_first_token.observe(time.monotonic() - job.arrival)
            _, choices, prompt_tokens = event
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}
                         for i, c in enumerate(choices)])
            if include_usage:
                completion = sum(c.completion_tokens for c in choices)
                yield chunk([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                       "total_tokens": prompt_tokens + completion})
            yield "data: [DONE]\n\n"
            metrics.latency.observe(time.monotonic() - job.arrival)
        finally:
            job.cancelled.set()  # a client that went away stops its rows at the next step

    return app
