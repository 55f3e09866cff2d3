"""FastAPI app: the SageMaker inference contract plus ``GET /adapters`` (routes in ``routes/``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraserve import __version__
from loraserve.body import loads_request
from loraserve.config import ServerConfig
from loraserve.engine import Engine
from loraserve.logs import log_event
from loraserve.responses import error_response
from loraserve.routes import health, invocations

__all__ = ["create_app", "load_engine", "loads_request"]

HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def load_engine(engine: Engine, on_failure: Callable[[], None] | None = None) -> None:
    """Load the base model, then preload adapters. On failure /ping stays 503 and ``on_failure`` runs."""
    try:
        engine.load()
    except Exception as exc:
        log_event("base_model_load_failed", logging.ERROR, exc_info=True, error=str(exc))
        if on_failure is not None:
            on_failure()
        return
    engine.preload()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start loading the base model in a background thread unless the engine is loaded already."""
    engine: Engine = app.state.engine
    if engine.state == "loading" and not engine.load_started:
        thread = threading.Thread(
            target=load_engine,
            args=(engine, app.state.on_load_failure),
            name="loraserve-load",
            daemon=True,
        )
        app.state.loader = thread
        thread.start()
    yield


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """404, 405, ... as ``{code, message}`` like every other error."""
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail))


def create_app(
    config: ServerConfig | None = None,
    engine: Engine | None = None,
    *,
    on_load_failure: Callable[[], None] | None = None,
) -> FastAPI:
    """The app. The base model loads in a background thread at start-up unless ``engine`` is ready."""
    app = FastAPI(title="Fastuner LoRA server", version=__version__, lifespan=lifespan)
    if engine is None:
        engine = Engine(config if config is not None else ServerConfig.from_env())
    app.state.engine = engine
    app.state.on_load_failure = on_load_failure
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.include_router(health.router)
    app.include_router(invocations.router)
    return app
