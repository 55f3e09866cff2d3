"""FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import __version__, console
from api.backends.base import ComputeBackend
from api.background import Background
from api.context import AppContext
from api.errors import install_error_handlers
from api.logging import configure_logging
from api.middleware import PUBLIC_PATHS, AuthMiddleware, RequestIdMiddleware, RequestLimitsMiddleware
from api.ratelimit import RateLimitMiddleware, TenantRateLimiter
from api.routes import (
    adapters,
    datasets,
    deployments,
    finetune,
    health,
    models,
    openai_chat,
    openai_files,
    openai_jobs,
    openai_models,
    tenant,
)
from api.services.auth import read_secret
from api.services.sweep import Sweeper
from api.settings import Settings, get_settings
from api.storage.base import ObjectStore


def create_app(
    settings: Settings | None = None,
    *,
    store: ObjectStore | None = None,
    backend: ComputeBackend | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, json_format=settings.log_json)
    ctx = AppContext.build(settings, store=store, backend=backend)
    # The local key of the embedded default (None when keys are managed by an admin): issued on a
    # fresh install, else the one saved then.
    local_api_key = None
    if settings.bootstrap_api_key:
        issued = ctx.auth.bootstrap_local_key(settings.default_tenant, settings.api_key_file)
        local_api_key = issued or read_secret(settings.api_key_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        background = Background()
        if settings.background_tasks:
            background.start(settings.reconcile_interval_seconds, "reconciler", ctx.reconciler.run_once)
            background.start(settings.reconcile_interval_seconds, "deployments", ctx.deployments.sync_once)
            background.start(settings.janitor_interval_seconds, "janitor", ctx.janitor.run_once)
            sweeper = Sweeper(ctx.db, ctx.store, settings)  # orphans of interrupted uploads
            background.start(settings.sweep_interval_seconds, "sweep", sweeper.run_once)
        if settings.drop_scan:
            background.start(settings.drop_scan_interval_seconds, "drops", ctx.drops.scan_once)
        try:
            yield
        finally:
            await background.stop()
            ctx.close()

    app = FastAPI(
        title="Fastuner",
        version=__version__,
        description="LoRA fine-tuning control plane (SageMaker or one machine).",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.local_api_key = local_api_key
    install_error_handlers(app)
    console.install(app, ctx)  # the web console at / (pages under /ui; api/console)
    # Outermost last: request id → limits (body caps, body timeouts) → auth → rate limit → app;
    # none reads the body, so bad requests are refused before it is parsed (api/middleware.py).
    limiter = TenantRateLimiter(settings.rate_limit, settings.rate_limits, settings.rate_limit_storage_uri)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    app.add_middleware(
        AuthMiddleware,
        authenticate=ctx.auth.authenticate,
        public_paths=PUBLIC_PATHS | console.PUBLIC_PATHS,
        public_prefixes=console.PUBLIC_PREFIXES,
    )
    app.add_middleware(
        RequestLimitsMiddleware,
        max_json_bytes=settings.max_json_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        body_timeout=settings.body_timeout_seconds,
    )
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(health.router, prefix="/v0")
    app.include_router(datasets.router, prefix="/v0")
    app.include_router(finetune.router, prefix="/v0")
    app.include_router(tenant.router, prefix="/v0")
    app.include_router(adapters.router, prefix="/v0")
    app.include_router(deployments.router, prefix="/v0")
    app.include_router(deployments.inference_router, prefix="/v0")
    app.include_router(deployments.ops_router, prefix="/v0")
    app.include_router(models.router, prefix="/v0")
    # OpenAI-compatible API (errors in OpenAI's shape there: api/errors.py)
    app.include_router(openai_files.router, prefix="/v1")
    app.include_router(openai_jobs.router, prefix="/v1")
    app.include_router(openai_models.router, prefix="/v1")
    app.include_router(openai_chat.router, prefix="/v1")
    return app
