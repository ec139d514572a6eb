"""What each route of the app does (mmgpt.serve.app lists them): the model card, health, metrics, the playground
and chat completions, answered whole or streamed as server-sent events from the worker's events."""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request

from mmgpt.model import MMGPT
from mmgpt.serve.admission import admit, read_body
from mmgpt.serve.events import Delta, Done, Event, Failed, First
from mmgpt.serve.images import FetchLimits
from mmgpt.serve.metrics import Metrics
from mmgpt.serve.schemas import APIError
from mmgpt.serve.settings import ServerSettings
from mmgpt.serve.worker import Job, Worker


class Handlers:
    """The route handlers of one served model, sharing its worker, metrics and settings."""

    def __init__(self, model: MMGPT, settings: ServerSettings, worker: Worker, metrics: Metrics,
                 playground: str) -> None:
        self.model, self.settings, self.worker, self.metrics = model, settings, worker, metrics
        self.playground_path = playground
        self.limits = FetchLimits(allowed=settings.allow_image_urls, max_bytes=int(settings.max_body_mb * 2**20))
        self.created = int(time.time())
        self.replica = f"{socket.gethostname()}:{os.getpid()}"  # which process answered, behind a router of several

    def check_key(self, request: Request) -> None:
        """401 unless --api-key is unset or the request sends it as a bearer token."""
        if self.settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.settings.api_key.encode()):
            raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'" if given else
                           "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    def model_card(self) -> dict[str, Any]:
        """The served model as OpenAI's /v1/models lists it."""
        return {"id": self.settings.model_name, "object": "model", "created": self.created, "owned_by": "mmgpt"}

    async def list_models(self, request: Request) -> dict[str, Any]:
        """GET /v1/models."""
        self.check_key(request)
        return {"object": "list", "data": [self.model_card()]}

    async def get_model(self, name: str, request: Request) -> dict[str, Any]:
        """GET /v1/models/{name}."""
        self.check_key(request)
        if name != self.settings.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.settings.model_name!r}",
                           param="model", code="model_not_found")
        return self.model_card()

    async def health(self) -> dict[str, Any]:
        """GET /health."""
        return {"status": "ok", "model": self.settings.model_name, "queued": self.worker.queued(),
                "replica": self.replica}

    async def prometheus(self) -> Response:
        """GET /metrics."""
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def playground(self) -> FileResponse:
        """GET /: the playground page."""
        return FileResponse(self.playground_path, media_type="text/html")

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions: one JSON answer, or server-sent events with `stream`."""
        arrival = time.monotonic()
        self.check_key(request)
        body = await read_body(request, self.settings)
        # only now may a batch wait for this request: an upload still under way never holds others back
        with self.worker.arriving(time.monotonic()) as arrived:
            chat, job, events = await admit(self.model, self.settings, self.worker, self.limits, body, arrival,
                                            arrived)
        deadline = arrival + self.settings.timeout_s
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.settings.model_name}
        gone = asyncio.ensure_future(disconnected(request))
        try:
            if chat.stream:
                # until the first token the client may still get a 504; StreamingResponse watches it after that
                first = await self.next_event(gone, job, events, deadline)
                include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
                return StreamingResponse(self.stream(job, events, first, reply, include_usage, deadline),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            while not isinstance(event := await self.next_event(gone, job, events, deadline), Done):
                pass
        finally:
            gone.cancel()
        self.metrics.latency.observe(time.monotonic() - arrival)
        return JSONResponse({
            **reply, "object": "chat.completion",
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                         "finish_reason": c.finish_reason} for i, c in enumerate(event.choices)],
            "usage": usage(event),
        })

    async def next_event(self, gone: asyncio.Future, job: Job, events: asyncio.Queue[Event],
                         deadline: float) -> Event:
        """The job's next event; the client leaving (`gone`) cancels the job, the deadline gives 504, Failed 500."""
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
            raise APIError(504, f"no answer within --timeout-s {self.settings.timeout_s:g} s", code="timeout")
        event = get.result()
        if isinstance(event, First):
            self.metrics.time_to_first_token.observe(time.monotonic() - job.arrival)
        elif isinstance(event, Failed):
            raise APIError(500, event.message)
        return event

    async def stream(self, job: Job, events: asyncio.Queue[Event], first: Event, reply: dict[str, Any],
                     include_usage: bool, deadline: float) -> AsyncIterator[str]:
        """The job's events as chat.completion.chunk server-sent events, ending with data: [DONE]."""
        base = {**reply, "object": "chat.completion.chunk"}
        extra = {"usage": None} if include_usage else {}

        def chunk(choices: list[dict[str, Any]], **more: Any) -> str:
            return f"data: {json.dumps({**base, 'choices': choices, **extra, **more})}\n\n"

        # what is ready goes out in one write: each costs both ends a wake-up, which at a few ms an answer adds up
        out = [chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                       "finish_reason": None} for i in range(job.n)])]
        try:
            event = first
            while not isinstance(event, Done):
                if isinstance(event, Delta):
                    out.append(chunk([{"index": event.index, "delta": {"content": event.text}, "logprobs": None,
                                       "finish_reason": None}]))
                elif isinstance(event, Failed):
                    yield "".join(out) + f"data: {json.dumps(APIError(500, event.message).body())}\n\n"
                    return
                if not events.empty():
                    event = events.get_nowait()
                else:
                    if out:
                        yield "".join(out)
                        out = []
                    try:
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            event = await events.get()
                    except TimeoutError:
                        job.cancelled.set()
                        yield f"data: {json.dumps(APIError(504, 'answer not finished within --timeout-s').body())}\n\n"
                        return
                if isinstance(event, First):
                    self.metrics.time_to_first_token.observe(time.monotonic() - job.arrival)
            out.append(chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}
                              for i, c in enumerate(event.choices)]))
            if include_usage:
                out.append(chunk([], usage=usage(event)))
            yield "".join(out) + "data: [DONE]\n\n"
            self.metrics.latency.observe(time.monotonic() - job.arrival)
        finally:
            job.cancelled.set()  # a client that went away stops its rows at the next step


def usage(done: Done) -> dict[str, int]:
    """OpenAI's usage object of a finished request."""
    completion = sum(c.completion_tokens for c in done.choices)
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": completion,
            "total_tokens": done.prompt_tokens + completion}


async def disconnected(request: Request) -> None:
    """Returns once the client has gone away."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
