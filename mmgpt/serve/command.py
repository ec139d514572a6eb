"""`mmgpt serve`'s options and what it runs: uvicorn around create_app, or (--ray) Ray Serve replicas of it."""
from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from mmgpt.serve.app import ServerSettings, create_app, served_name
from mmgpt.serve.ray_app import serve_on_ray

logger = logging.getLogger(__name__)


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
    try:
        import uvicorn
    except ImportError as e:
        raise OSError(f"serving needs FastAPI and uvicorn (Python >= 3.11): pip install 'mmgpt[serve]' ({e})") from e
    from mmgpt.inference import default_model_path, load_model

    model_path = args.model if args.model is not None else default_model_path()
    if args.ray:
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
