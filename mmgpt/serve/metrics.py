"""The server's Prometheus metrics, in a registry of its own (several apps in one process keep apart)."""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Requests by status, latency and time to first token, batch sizes, queue depth, tokens, the image cache."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mmgpt_requests", "HTTP requests by path and status code", ["path", "status"],
                                registry=self.registry)
        self.latency = Histogram("mmgpt_request_latency_seconds", "chat completion latency, arrival to last token",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.time_to_first_token = Histogram("mmgpt_time_to_first_token_seconds",
                                             "chat completion arrival to its first generated token",
                                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("mmgpt_batch_size", "rows decoded together in one generate call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("mmgpt_queue_depth", "requests waiting to be decoded", registry=self.registry)
        self.generated_tokens = Counter("mmgpt_generated_tokens", "completion tokens generated",
                                        registry=self.registry)
        self.prompt_tokens = Counter("mmgpt_prompt_tokens", "prefix positions (fused text and image) read",
                                     registry=self.registry)
        self.image_cache_hits = Counter("mmgpt_image_cache_hits", "images whose encoder output was cached",
                                        registry=self.registry)
        self.image_cache_misses = Counter("mmgpt_image_cache_misses", "images encoded (not in the cache)",
                                          registry=self.registry)
        self.image_cache_bytes = Gauge("mmgpt_image_cache_bytes", "bytes of image-encoder outputs cached",
                                       registry=self.registry)


class RequestCounter:
    """ASGI middleware counting responses by path and status (plain ASGI: BaseHTTPMiddleware costs a task group)."""

    PATHS = ("/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Pass the request on; count its response status (500 when it raised before answering)."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = "500"

        async def record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            path = scope["path"] if scope["path"] in self.PATHS else "other"
            self.metrics.requests.labels(path, status).inc()
