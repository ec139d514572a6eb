"""`mmgpt serve`'s options and what it runs: uvicorn around create_app, or (--ray) Ray Serve replicas of it."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from mmgpt.ranges import check_range
from mmgpt.serve.app import create_app
from mmgpt.serve.ray_app import serve_on_ray
from mmgpt.serve.settings import ServerSettings, default, served_name

logger = logging.getLogger(__name__)


# the options that set a ServerSettings field of the same name, and its default
SETTING_FLAGS = (
    ("--max-batch-size", int, "rows decoded together at most"),
    ("--max-wait-ms", float, "how long the first waiting request waits for others to batch with"),
    ("--max-queue", int, "waiting requests beyond which 429 is answered"),
    ("--max-body-mb", float, "request bodies over this get 413"),
    ("--timeout-s", float, "requests not answered by then get 504"),
    ("--max-tokens", int, "new tokens a request may ask for (max_tokens); the model's positions limit it too"),
    ("--body-timeout-s", float, "a request body not received within this gets 408"),
    ("--keep-alive-s", float, "a connection that has not sent a request's headers this long after connecting or "
                              "after its last answer is closed"),
    ("--max-connections", int, "connections beyond this get 503"),
    ("--image-cache-mb", float, "image-encoder outputs kept for images sent again, least recently used dropped "
                                "first; 0: none"),
    ("--max-images-per-prompt", int, "image_url parts one request may carry, counted before any is decoded or "
                                     "fetched; 0: the model's model.max_images"),
)


def build_parser(prog: str) -> argparse.ArgumentParser:
    """`mmgpt serve`'s options."""
    parser = argparse.ArgumentParser(prog=prog, description="Serve a model on the OpenAI Chat Completions API "
                                                            "(POST /v1/chat/completions), with a playground at /.")
    parser.add_argument("--model", default=None,
                        help="model folder, `mmgpt quantize` folder, `mmgpt export` folder (run by onnxruntime), or "
                             "hf://org/name (default: $MMGPT_MODEL or the main job's)")
    parser.add_argument("--model-name", default=None,
                        help="the model id clients send (default: the folder's name; NAME for runs/NAME/model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    for flag, kind, text in SETTING_FLAGS:
        name = flag[2:].replace("-", "_")
        parser.add_argument(flag, type=kind, default=default(name), help=f"{text} (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("MMGPT_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1/* (default: $MMGPT_API_KEY)")
    parser.add_argument("--allow-image-urls", action="store_true",
                        help="fetch http(s) image URLs (public addresses only, size-capped, with a timeout)")
    parser.add_argument("--ray", action="store_true",
                        help="serve on Ray Serve (local instance, or $RAY_ADDRESS): replicas behind Ray's router")
    parser.add_argument("--num-replicas", type=int, default=1, help="with --ray: model replicas")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    ranges = {"max_batch_size": ">= 1", "max_queue": ">= 1", "port": "[0, 65535]", "num_replicas": ">= 1",
              "max_tokens": ">= 1", "max_connections": ">= 1", "max_wait_ms": "> 0", "max_body_mb": "> 0",
              "timeout_s": "> 0", "body_timeout_s": "> 0", "keep_alive_s": "> 0", "image_cache_mb": ">= 0",
              "max_images_per_prompt": ">= 0"}
    for name, allowed in ranges.items():
        value = getattr(args, name)
        check_range(f"--{name.replace('_', '-')}", value, allowed, integer=isinstance(value, int))


def settings_from(args: argparse.Namespace, model_path: str | Path) -> ServerSettings:
    """The ServerSettings the command line asks for."""
    chosen = {flag[2:].replace("-", "_") for flag, _, _ in SETTING_FLAGS} | {"api_key", "allow_image_urls"}
    return ServerSettings(model_name=args.model_name or served_name(model_path),
                          **{name: getattr(args, name) for name in chosen})


def _http_protocol(request_timeout_s: float) -> type:
    """uvicorn's HTTP protocol, closing a connection whose request headers are not in `request_timeout_s` seconds
    after it connected or got its last answer (uvicorn times out idle keep-alive connections only after an answer,
    and stops that timer at their first byte)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class RequestTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _request_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._await_request()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_request()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._request_timer is not None:
                self._request_timer.cancel()
            super().connection_lost(exc)

        def _await_request(self) -> None:
            if self._request_timer is not None:
                self._request_timer.cancel()
            self._request_timer = self.loop.call_later(request_timeout_s, self._close_without_request)

        def _close_without_request(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete  # no request since the timer started
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return RequestTimeoutProtocol


def uvicorn_config(app: Any, settings: ServerSettings, host: str, port: int, log_level: str = "info") -> Any:
    """The uvicorn.Config serving `app`: connection limits and timeouts from `settings`."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=_http_protocol(settings.keep_alive_s),
                          timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type] - a float works
                          limit_concurrency=settings.max_connections, timeout_graceful_shutdown=settings.timeout_s)


def serve(args: argparse.Namespace) -> int:
    """Load the model, start uvicorn and serve until SIGINT/SIGTERM; in-flight requests finish first."""
    _check_args(args)
    try:
        import uvicorn
    except ImportError as e:
        raise OSError(f"serving needs FastAPI and uvicorn (Python >= 3.11): pip install 'mmgpt[serve]' ({e})") from e
    from mmgpt.inference import default_model_path, load_model_or_export

    model_path = args.model if args.model is not None else default_model_path()
    if args.ray:
        return serve_on_ray(str(model_path), args.device, settings_from(args, model_path), args.host, args.port,
                            args.num_replicas)
    model = load_model_or_export(model_path, args.device)
    settings = settings_from(args, model_path)
    app = create_app(model, settings)
    # uvicorn re-raises the signal it stopped on once it is done; this handler makes that a clean exit 0
    previous = signal.signal(signal.SIGTERM, lambda *_: logger.info("stopped by SIGTERM"))
    server = uvicorn.Server(uvicorn_config(app, settings, args.host, args.port))
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
