"""A chat completion request from its bytes to a queued Job: body limits, JSON and schema, decoding options, images.

Everything here answers a problem with an APIError naming the field; the whole request, its image count
included, is checked before any image is decoded or fetched.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any

import torch
from pydantic import ValidationError
from starlette.requests import Request
from transformers import GenerationConfig

from mmgpt.constrained import choice_token_ids
from mmgpt.decoding import check_answer_length, resolve_generation_config
from mmgpt.images import ImageError
from mmgpt.model import MMGPT
from mmgpt.serve.conversation import conversation
from mmgpt.serve.events import Event
from mmgpt.serve.image_cache import image_key
from mmgpt.serve.images import FetchLimits
from mmgpt.serve.schemas import APIError, ChatCompletionRequest
from mmgpt.serve.settings import ServerSettings, images_per_prompt
from mmgpt.serve.structured import AnswerFormat, answer_format
from mmgpt.serve.worker import Job, QueueFull, Worker

logger = logging.getLogger(__name__)


async def read_body(request: Request, settings: ServerSettings) -> bytes:
    """The request's body; 413 over --max-body-mb (declared or counted), 408 past --body-timeout-s."""
    max_body = int(settings.max_body_mb * 2**20)
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
    """The body as a ChatCompletionRequest; 400 for bad JSON, 422 naming the first field out of range."""
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


def decoding(model: MMGPT, settings: ServerSettings, chat: ChatCompletionRequest, form: AnswerFormat,
             prefix_length: int) -> GenerationConfig:
    """The request's GenerationConfig; max_tokens must fit the positions the prefix leaves, and --max-tokens."""
    cap = (settings.max_tokens, "the server's --max-tokens")
    options: dict[str, Any] = {}
    name = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
    max_tokens = chat.max_completion_tokens or chat.max_tokens
    if max_tokens is not None:
        try:
            check_answer_length(max_tokens, prefix_length, model.max_positions, name=name, cap=cap)
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
                                cap=cap)
        except ValueError as e:
            raise APIError(400, f"{param}: {e}", param=param) from None
        options["answer_choices"] = form.choices
    try:
        return resolve_generation_config(model.generation_config, **options)[0]
    except (TypeError, ValueError) as e:
        raise APIError(400, f"decoding options: {e}") from None


def prompt_positions(model: MMGPT, prompt: str, num_images: int = 1) -> int:
    """Positions the prompt's prefix takes, every image's included (its ids are cached by the processor)."""
    return model.prefix_length(len(model.processor.prompt_ids(prompt)), num_images)


def _pixels(model: MMGPT, image: bytes, param: str) -> tuple[torch.Tensor, str]:
    """The preprocessed image (3, H, W) and its cache key; 400 naming `param` for an undecodable image."""
    try:
        pixels = model.processor.image_tensor(image)
    except ImageError as e:
        raise APIError(400, f"{param}: {e}", param=param, code="invalid_image") from None
    return pixels, image_key(pixels)


async def admit(model: MMGPT, settings: ServerSettings, worker: Worker, limits: FetchLimits, body: bytes,
                arrival: float, arrived: int | None = None) -> tuple[ChatCompletionRequest, Job, asyncio.Queue[Event]]:
    """Check and preprocess a request's body and queue its job (ending its `Worker.arriving` mark `arrived`)
    -> (request, job, the queue of its events)."""
    chat = parse(body)
    if chat.model != settings.model_name:
        raise APIError(404, f"model {chat.model!r} does not exist; this server serves {settings.model_name!r}",
                       param="model", code="model_not_found")
    if chat.n > settings.max_batch_size:
        # a request's choices are decoded together, in one batch
        raise APIError(400, f"n={chat.n} is more than the {settings.max_batch_size} rows this server decodes "
                            "together (--max-batch-size)", param="n")
    stops = chat.stop_strings()
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
    cancelled = threading.Event()

    def emit(event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(events.put_nowait, event)

    def prepare() -> Job:
        # one trip to a thread, which also queues the job: each hop costs a wake-up of the event loop, and at
        # concurrency 1 they add up
        asked = conversation(model, chat.messages, images_per_prompt(settings, model.config.max_images))
        form = answer_format(chat.response_format, chat.guided_choice)
        config = decoding(model, settings, chat, form, prompt_positions(model, asked.prompt, asked.num_images))
        # the request is checked whole, its image count included, before any image is decoded or fetched
        pixels, keys = zip(*(_pixels(model, image, param) for image, param in asked.images(limits)))
        # one image stays a lone tensor: a one-image request is batched exactly as before
        job = Job(prompt=asked.prompt, pixels=pixels[0] if len(pixels) == 1 else list(pixels), config=config,
                  emit=emit, n=chat.n, seed=chat.seed, stops=stops, stream=chat.stream, arrival=arrival,
                  render=form.render, image_keys=keys, cancelled=cancelled)
        try:
            worker.submit(job, arrived)
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}; retry later", code="queue_full",
                           type="rate_limit_error") from None
        return job

    try:
        return chat, await asyncio.to_thread(prepare), events
    except asyncio.CancelledError:
        cancelled.set()  # the thread may still queue the job: nobody waits for its answer
        raise
