"""FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import __version__
from api.context import AppContext
from api.errors import install_error_handlers
from api.logging import configure_logging
from api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from api.routes import datasets, health
from api.settings import Settings, get_settings
from api.storage.base import ObjectStore


def create_app(settings: Settings | None = None, *, store: ObjectStore | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, json_format=settings.log_json)
    ctx = AppContext.build(settings, store=store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.close()

    app = FastAPI(
        title="Fastuner",
        version=__version__,
        description="LoRA fine-tuning control plane (SageMaker or one machine).",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(health.router, prefix="/v0")
    app.include_router(datasets.router, prefix="/v0")
    return app
