"""The FastAPI app (`create_app`) and the `mmgpt serve` command line (`main`)."""

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mmgpt.logging_setup import configure_logging

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

    from mmgpt.decoding import resolve_generation_config
    from mmgpt.images import ImageError
    from mmgpt.serve.conversation import conversation
    from mmgpt.serve.images import FetchLimits
    from mmgpt.serve.metrics import Metrics, RequestCounter
    from mmgpt.serve.schemas import APIError, ChatCompletionRequest
    from mmgpt.serve.worker import Job, QueueFull, Worker

    metrics = Metrics()
    worker = Worker(model, metrics, settings.max_batch_size, settings.max_wait_ms, settings.max_queue)
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
        return JSONResponse(error.body(), status_code=error.status)

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
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise APIError(413, f"request body is over the limit of {max_body} bytes "
                                    f"(--max-body-mb {settings.max_body_mb:g})", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(body: bytes) -> ChatCompletionRequest:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
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

    def decoding(chat: ChatCompletionRequest) -> Any:
        options: dict[str, Any] = {}
        max_tokens = chat.max_completion_tokens or chat.max_tokens
        if max_tokens is not None:
            options["max_new_tokens"] = max_tokens
        if chat.temperature == 0:
            options["do_sample"] = False  # OpenAI's greedy
        else:
            options["temperature"], options["top_p"] = chat.temperature, chat.top_p
        try:
            return resolve_generation_config(model.generation_config, **options)[0]
        except (TypeError, ValueError) as e:
            raise APIError(400, f"decoding options: {e}") from None

    async def admit(request: Request, arrival: float) -> tuple[ChatCompletionRequest, Job, asyncio.Queue]:
        """Read, check and preprocess a request and queue its job -> (request, job, the queue of its events)."""
        check_key(request)
        chat = parse(await read_body(request))
        if chat.model != settings.model_name:
            raise APIError(404, f"model {chat.model!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
        stops = chat.stop_strings()
        config = decoding(chat)
        asked = await asyncio.to_thread(conversation, model, chat.messages, limits)
        try:
            pixels = await asyncio.to_thread(model.processor.image_tensor, asked.image)
        except ImageError as e:
            raise APIError(400, f"{asked.image_param}: {e}", param=asked.image_param, code="invalid_image") from None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(prompt=asked.prompt, pixels=pixels, config=config, emit=emit, n=chat.n, seed=chat.seed,
                  stops=stops, stream=chat.stream, arrival=arrival)
        try:
            worker.submit(job)
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}; retry later", code="queue_full", type="rate_limit_error") from None
        return chat, job, events

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrival = time.monotonic()
        with worker.arriving(arrival):
            chat, job, events = await admit(request, arrival)
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


def build_parser(prog: str) -> argparse.ArgumentParser:
    """`mmgpt serve`'s options."""
    parser = argparse.ArgumentParser(prog=prog, description="Serve a model on the OpenAI Chat Completions API "
                                                            "(POST /v1/chat/completions), with a playground at /.")
    parser.add_argument("--model", default=None,
                        help="model folder, or hf://org/name (default: $MMGPT_MODEL or the main job's)")
    parser.add_argument("--model-name", default=None,
                        help="the model id clients send (default: the folder's name; NAME for runs/NAME/model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="rows decoded together at most")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the first waiting request waits for others to batch with")
    parser.add_argument("--max-queue", type=int, default=256, help="waiting requests beyond which 429 is answered")
    parser.add_argument("--max-body-mb", type=float, default=20.0, help="request bodies over this get 413")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="requests not answered by then get 504")
    parser.add_argument("--api-key", default=os.environ.get("MMGPT_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1/* (default: $MMGPT_API_KEY)")
    parser.add_argument("--allow-image-urls", action="store_true",
                        help="fetch http(s) image URLs (public addresses only, size-capped, with a timeout)")
    parser.add_argument("--ray", action="store_true",
                        help="serve on Ray Serve (local instance, or $RAY_ADDRESS): replicas behind Ray's router")
    parser.add_argument("--num-replicas", type=int, default=1, help="with --ray: model replicas")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for name, minimum in (("max_batch_size", 1), ("max_queue", 1), ("port", 0), ("num_replicas", 1)):
        if getattr(args, name) < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}")
    if args.port > 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    for name in ("max_wait_ms", "max_body_mb", "timeout_s"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")


def settings_from(args: argparse.Namespace, model_path: str | Path) -> ServerSettings:
    """The ServerSettings the command line asks for."""
    return ServerSettings(model_name=args.model_name or served_name(model_path), max_batch_size=args.max_batch_size,
                          max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_body_mb=args.max_body_mb,
                          timeout_s=args.timeout_s, api_key=args.api_key, allow_image_urls=args.allow_image_urls)


def serve(args: argparse.Namespace) -> int:
    """Load the model, start uvicorn and serve until SIGINT/SIGTERM; in-flight requests finish first."""
    _check_args(args)
    from mmgpt.cli import check_device

    check_device(args.device)
    try:
        import uvicorn
    except ImportError as e:
        raise OSError(f"serving needs FastAPI and uvicorn (Python >= 3.11): pip install 'mmgpt[serve]' ({e})") from e
    from mmgpt.inference import default_model_path, load_model

    model_path = args.model if args.model is not None else default_model_path()
    if args.ray:
        from mmgpt.serve.ray_app import serve_on_ray

        return serve_on_ray(str(model_path), args.device, settings_from(args, model_path), args.host, args.port,
                            args.num_replicas)
    model = load_model(model_path, args.device)
    model.eval()
    settings = settings_from(args, model_path)
    app = create_app(model, settings)
    # uvicorn re-raises the signal it stopped on once it is done; this handler makes that a clean exit 0
    previous = signal.signal(signal.SIGTERM, lambda *_: logger.info("stopped by SIGTERM"))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                                           timeout_graceful_shutdown=settings.timeout_s))
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: list[str] | None = None, prog: str = "mmgpt serve") -> int:
    """`mmgpt serve` / `python -m mmgpt.serve`: bad options or model folders exit 2 with one line."""
    from mmgpt.cli import run_reporting_errors

    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(logging.INFO)
    return run_reporting_errors(prog, lambda: serve(args))
