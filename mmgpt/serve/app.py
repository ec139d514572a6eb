"""The FastAPI app: `create_app(model, settings)` serves one model on the OpenAI Chat Completions protocol.

The routes are the table below; what each does is in mmgpt.serve.handlers, how a request becomes a queued
job in mmgpt.serve.admission, and the batching in mmgpt.serve.worker.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from mmgpt.serve.settings import ServerSettings, images_per_prompt, served_name

__all__ = ["ROUTES", "ServerSettings", "create_app", "served_name"]

logger = logging.getLogger(__name__)

STATIC = resources.files("mmgpt.serve") / "static"

# (method, path, the mmgpt.serve.handlers.Handlers method answering it)
ROUTES = (
    ("POST", "/v1/chat/completions", "chat_completions"),
    ("GET", "/v1/models", "list_models"),
    ("GET", "/v1/models/{name:path}", "get_model"),
    ("GET", "/health", "health"),
    ("GET", "/metrics", "prometheus"),
    ("GET", "/", "playground"),
)


def create_app(model: Any, settings: ServerSettings) -> Any:
    """A FastAPI app serving `model` (an MMGPT, or an `mmgpt export` folder's mmgpt.exported_model.ExportedModel) on
    the OpenAI Chat Completions protocol."""
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from mmgpt.exported_model import ExportedModel
    from mmgpt.serve.exported import ExportWorker
    from mmgpt.serve.handlers import Handlers
    from mmgpt.serve.metrics import Metrics, RequestCounter
    from mmgpt.serve.worker import Worker

    images_per_prompt(settings, model.config.max_images)  # a setting the model cannot serve stops it here
    metrics = Metrics()
    worker_class = ExportWorker if isinstance(model, ExportedModel) else Worker
    worker = worker_class(model, metrics, settings.max_batch_size, settings.max_wait_ms, settings.max_queue,
                          settings.image_cache_mb)
    model.prefix_length(1)  # reads the image encoder's token count once, before requests share the model
    handlers = Handlers(model, settings, worker, metrics, str(STATIC / "playground.html"))

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
    for method, path, name in ROUTES:
        app.add_api_route(path, getattr(handlers, name), methods=[method])
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    add_error_handlers(app)
    app.add_middleware(RequestCounter, metrics=metrics)
    return app


def add_error_handlers(app: Any) -> None:
    """Every error answered in OpenAI's shape: APIError as raised, HTTP errors by status, anything else 500."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from mmgpt.serve.schemas import APIError

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
