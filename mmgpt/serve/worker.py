"""The one thread that owns the model: it gathers queued requests into batches and decodes them.

Requests that arrive within `max_wait_ms` of the first waiting one, and that decode with the same
GenerationConfig, are decoded in one `MMGPT.generate` call of up to `max_batch_size` rows, exactly as
answer() decodes a batch (same processor, same generate, same seeded sampling). Each distinct image of a
batch (a request may carry several) is encoded once, and not at all when its encoder output is in the
image cache, which keeps each image under its own key. A seeded sampling
request is decoded on its own, so its answer depends on its seed and nothing else. Each step's tokens
reach the requests through a stopping criterion, which also ends rows that hit a stop string or whose
client went away.

Requests that come one at a time skip the window: once a batch held a lone request, the next request is decoded
at once when nothing else is queued or arriving (waiting would only add `max_wait_ms` to every answer); a batch
of several requests turns the window back on. A server starts with it on.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from mmgpt.constrained import ANSWER_CHOICES
from mmgpt.decoding import set_values
from mmgpt.devices import model_device
from mmgpt.model import MMGPT
from mmgpt.sampling import seeded_decoding
from mmgpt.serve.events import Choice, Delta, Done, Event, Failed, First
from mmgpt.serve.image_cache import ImageCache, image_key
from mmgpt.serve.metrics import Metrics
from mmgpt.serve.settings import default

logger = logging.getLogger(__name__)

_UNIQUE = itertools.count()
LATE_WAIT_S = 0.05  # at most this long past max_wait for requests that arrived in time but are still being read


class QueueFull(Exception):
    """More requests are waiting than the server's --max-queue."""


@dataclass
class Job:
    """One chat completion request waiting for, or in, a batch; `emit` is called from the worker thread.

    Events (mmgpt.serve.events): First at its first token, Delta when streaming, then Done or Failed.
    `image_keys` (image_cache.image_key of each image's pixels) are computed here unless given.
    """

    prompt: str
    # one image, preprocessed: (3, H, W), with tiling (V, 3, H, W); or a list of such: several, in prompt order
    pixels: torch.Tensor | list[torch.Tensor]
    config: GenerationConfig
    emit: Callable[[Event], None]
    n: int = 1
    seed: int | None = None
    stops: list[str] = field(default_factory=list)
    stream: bool = False
    arrival: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    key: str = ""
    started: bool = False  # its "first" event was sent
    streamed: bool = False  # text was sent: it cannot be decoded again from the start
    render: Callable[[str], str] = str  # how an answer is written in the reply (a JSON value for response_format)
    image_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.image_keys = tuple(self.image_keys) or tuple(image_key(pixels) for pixels in self.images)
        self.key = json.dumps(set_values(self.config), sort_keys=True, default=str)
        if self.config.do_sample and self.seed is not None:
            self.key += f"#seeded-{next(_UNIQUE)}"

    @property
    def images(self) -> list[torch.Tensor]:
        """Each image's pixels, in prompt order."""
        return self.pixels if isinstance(self.pixels, list) else [self.pixels]


class _Row:
    """Decoding state of one choice of one job."""

    def __init__(self, job: Job, choice: int) -> None:
        self.job, self.choice = job, choice
        self.ids: list[int] = []
        self.tokens = 0
        self.done = False
        self.stopped = False  # ended by eos or a stop string
        self.sent = ""


class _Steps(StoppingCriteria):
    """Sees each step's new tokens (the last column): streams text, ends rows at stop strings and cancellations."""

    def __init__(self, rows: list[_Row], model: MMGPT) -> None:
        self.rows, self.model = rows, model
        self.eos = model.processor.tokenizer.eos_token_id
        self.first = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        """input_ids (B, generated so far) -> (B,) True where a row is to end."""
        newest = input_ids[:, -1].tolist()
        self.first_step()
        for row, token in zip(self.rows, newest):
            if row.done:
                continue
            row.tokens += 1
            if token == self.eos:
                row.done = row.stopped = True
                continue
            row.ids.append(token)
            if row.job.stops or row.job.stream:
                self._text(row)
            if row.job.cancelled.is_set():
                row.done = True
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def first_step(self) -> None:
        """Tell each job its decoding started (once)."""
        if self.first:
            self.first = False
            for row in self.rows:
                if row.choice == 0 and not row.job.started:
                    row.job.started = True
                    row.job.emit(First())

    def count(self, tokens: torch.Tensor) -> None:
        """Each row's token count and end from the finished answers (B, N), when no step was watched."""
        for row, ids in zip(self.rows, tokens.tolist()):
            row.stopped = self.eos in ids
            row.tokens = ids.index(self.eos) + 1 if row.stopped else len(ids)
            row.done = True

    def _text(self, row: _Row) -> None:
        text = self.model.processor.decode([row.ids])[0]
        cut = stop_index(text, row.job.stops)
        if cut is not None:
            text, row.done, row.stopped = text[:cut], True, True
        elif row.job.stops:
            # a stop string may be starting at the end: keep its length back until it is decided
            text = text[: max(0, len(text) - max(len(s) for s in row.job.stops) + 1)]
        # a character split across tokens decodes as U+FFFD until its last byte arrives
        text = text.rstrip("\ufffd")
        if row.job.stream and len(text) > len(row.sent) and text.startswith(row.sent):
            row.job.streamed = True
            row.job.emit(Delta(row.choice, text[len(row.sent):]))
            row.sent = text


def stop_index(text: str, stops: list[str]) -> int | None:
    """Where the first of `stops` begins in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class Worker:
    """Owns the model; `submit` queues a Job from any thread, a background thread decodes batches."""

    def __init__(self, model: MMGPT, metrics: Metrics, max_batch_size: int = default("max_batch_size"),
                 max_wait_ms: float = default("max_wait_ms"), max_queue: int = default("max_queue"),
                 image_cache_mb: float = default("image_cache_mb")) -> None:
        self.model, self.metrics = model, metrics
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.image_cache = ImageCache(int(image_cache_mb * 2**20), metrics)
        self.device = model_device(model)
        self._pending: list[Job] = []
        # arrival times of requests still being read and preprocessed (not yet submitted)
        self._arriving: dict[int, float] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._alone = False  # the last batch held one request: a lone next one does not wait for company
        self._thread = threading.Thread(target=self._run, name="mmgpt-serve-worker", daemon=True)

    def start(self) -> None:
        """Start decoding in the background."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Decode what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def queued(self) -> int:
        """Requests waiting for a batch."""
        with self._cond:
            return len(self._pending)

    @contextlib.contextmanager
    def arriving(self, arrival: float) -> Iterator[int]:
        """Mark a request as arrived while it is read and preprocessed: a batch due meanwhile waits for it.

        Yields its key: `submit(job, arrived=key)` ends the mark as the job is queued.
        """
        key = next(_UNIQUE)
        with self._cond:
            self._arriving[key] = arrival
        try:
            yield key
        finally:
            with self._cond:
                if self._arriving.pop(key, None) is not None:
                    self._cond.notify_all()

    def submit(self, job: Job, arrived: int | None = None) -> None:
        """Queue `job`, ending its `arriving` mark `arrived`; QueueFull when max_queue requests already wait."""
        with self._cond:
            if arrived is not None:
                # in the same step as queueing it: the worker never sees the job as both queued and still arriving
                self._arriving.pop(arrived, None)
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting (--max-queue {self.max_queue})")
            self._pending.append(job)
            self.metrics.queue_depth.set(len(self._pending))
            self._cond.notify_all()

    def _take(self) -> list[Job] | None:
        """Jobs sharing the first waiting job's settings, once it waited max_wait or the batch is full."""
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._pending[0]
            lone = self._alone and len(self._pending) == 1 and not self._arriving
            due = time.monotonic() if lone else first.arrival + self.max_wait
            while not self._stopping:
                rows = sum(j.n for j in self._pending if j.key == first.key)
                left = due - time.monotonic()
                if rows >= self.max_batch_size:
                    break
                if left <= 0:
                    # requests that arrived in the window but are still being preprocessed (the event loop
                    # shares the GIL with decoding, so that can lag) join this batch; a bounded extra wait
                    late = any(t <= due for t in self._arriving.values())
                    if not late or -left > self.max_wait + LATE_WAIT_S:
                        break
                    left = LATE_WAIT_S
                self._cond.wait(left)
            taken, rows = [], 0
            for job in self._pending:
                if job.key == first.key and (not taken or rows + job.n <= self.max_batch_size):
                    taken.append(job)
                    rows += job.n
            self._pending = [j for j in self._pending if all(j is not t for t in taken)]
            self.metrics.queue_depth.set(len(self._pending))
            self._alone = len(taken) == 1
        live = [job for job in taken if not job.cancelled.is_set()]
        if len(live) < len(taken):
            logger.info("dropped %d request(s) whose client went away before decoding", len(taken) - len(live))
        return live

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs:
                self._decode_isolating(jobs)

    def _decode_isolating(self, jobs: list[Job]) -> None:
        """Decode `jobs` together; if that fails, each again alone, so a failure fails only the requests causing it."""
        try:
            self._decode(jobs)
            return
        except Exception as e:  # a failed batch fails its requests, not the server
            if len(jobs) == 1:
                self._fail(jobs[0], e)
                return
            logger.warning("decoding a batch of %d requests failed (%s: %s); decoding them one by one", len(jobs),
                           type(e).__name__, e)
        for job in jobs:
            if job.streamed:  # its client already has part of an answer
                self._fail(job, RuntimeError("the batch it was decoded in failed"))
                continue
            try:
                self._decode([job])
            except Exception as e:
                self._fail(job, e)

    @staticmethod
    def _fail(job: Job, error: Exception) -> None:
        logger.error("decoding a request failed", exc_info=error)
        job.emit(Failed(f"decoding failed: {type(error).__name__}: {error}"))

    def _encode_images(self, jobs: list[Job], rows: list[_Row]) -> dict[str, torch.Tensor]:
        """Each row's image-encoder outputs, as generate's keywords: `image_features` (B, Li, D) for one whole
        image per row, else (B, K, Li, D) with each row's images' views first, in prompt order (as the processor
        lays them out), and their `image_mask` (B, K).

        Each distinct image of the batch is encoded once, or not at all when the cache has it.
        """
        pixels = {key: image for job in jobs for key, image in zip(job.image_keys, job.images)}
        features = {key: self.image_cache.get(key) for key in pixels}
        missing = [key for key, found in features.items() if found is None]
        if missing:
            # a tiled image is its views: the encoder reads views, and each image takes back its own
            views = [pixels[key].reshape(-1, *pixels[key].shape[-3:]) for key in missing]
            encoded = self.model.encode_images(torch.cat(views).to(self.device))
            for key, output in zip(missing, encoded.split([len(v) for v in views])):
                features[key] = output.reshape(*pixels[key].shape[:-3], *output.shape[1:])
                self.image_cache.put(key, features[key])
        # each row's entries (views of its images, in order): (entries, Li, D)
        entries = [torch.cat([features[key].reshape(-1, *features[key].shape[-2:]) for key in row.job.image_keys])
                   for row in rows]
        if self.model.config.max_images == 1 and self.model.config.image_encoder.tiling.views == 1:
            return {"image_features": torch.cat(entries)}
        image = entries[0].new_zeros(len(rows), max(len(e) for e in entries), *entries[0].shape[1:])
        image_mask = torch.zeros(image.shape[:2], dtype=torch.long, device=image.device)
        for i, row_entries in enumerate(entries):
            image[i, : len(row_entries)] = row_entries
            image_mask[i, : len(row_entries)] = 1
        return {"image_features": image, "image_mask": image_mask}

    @torch.inference_mode()
    def _decode(self, jobs: list[Job]) -> None:
        rows = [_Row(job, choice) for job in jobs for choice in range(job.n)]
        processor = self.model.processor
        # the prompts only: the images reach the model as encoder outputs (`_encode_images`)
        batch = {k: v.to(self.device) for k, v in processor.encode_prompts([row.job.prompt for row in rows]).items()}
        self.metrics.batch_size.observe(len(rows))
        config, seed = jobs[0].config, jobs[0].seed
        steps = _Steps(rows, self.model)
        # a search over answer choices ends all at once (and may run as beams): no per-step text
        choices = bool(getattr(config, ANSWER_CHOICES, None))
        watch = {} if choices else {"stopping_criteria": StoppingCriteriaList([steps])}
        if choices:
            steps.first_step()
        images = self._encode_images(jobs, rows)
        with seeded_decoding(config, seed, self.device) as (decoding, extra):
            tokens = self.model.generate(batch["input_ids"], batch["attention_mask"], images.pop("pixel_values", None),
                                         generation_config=decoding, **images, **watch, **extra)
        if choices:
            steps.count(tokens)
        texts = [row.job.render(text) for row, text in zip(rows, processor.decode(tokens))]
        lengths = [self.model.prefix_length(n, len(row.job.images))
                   for n, row in zip(batch["attention_mask"].sum(1).tolist(), rows)]
        results: dict[int, list[Choice]] = {}
        for row, text in zip(rows, texts):
            cut = stop_index(text, row.job.stops)
            if cut is not None:
                text, row.stopped = text[:cut], True
            if row.job.stream and len(text) > len(row.sent):
                if text.startswith(row.sent):
                    row.job.emit(Delta(row.choice, text[len(row.sent):]))
                else:
                    logger.warning("streamed text %r is not a prefix of the answer %r", row.sent, text)
            results.setdefault(id(row.job), []).append(
                Choice(text, "stop" if row.stopped else "length", row.tokens))
            self.metrics.generated_tokens.inc(row.tokens)
        offset = 0
        for job in jobs:
            self.metrics.prompt_tokens.inc(int(lengths[offset]))
            job.emit(Done(results[id(job)], int(lengths[offset])))
            offset += job.n
