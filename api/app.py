"""FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter, FastAPI

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

# Mounted under /v0 (health is also at the root).
V0_ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    datasets.router,
    finetune.router,
    tenant.router,
    adapters.router,
    deployments.router,
    deployments.inference_router,
    deployments.ops_router,
    models.router,
)
# The OpenAI-compatible API under /v1 (errors in OpenAI's shape there: api/errors.py).
V1_ROUTERS: tuple[APIRouter, ...] = (
    openai_files.router,
    openai_jobs.router,
    openai_models.router,
    openai_chat.router,
)


def create_app(
    settings: Settings | None = None,
    *,
    store: ObjectStore | None = None,
    backend: ComputeBackend | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, json_format=settings.log_json)
    ctx = AppContext.build(settings, store=store, backend=backend)
    local_api_key = _local_api_key(settings, ctx)
    app = FastAPI(
        title="Fastuner",
        version=__version__,
        description="LoRA fine-tuning control plane (SageMaker or one machine).",
        lifespan=_lifespan(settings, ctx),
    )
    app.state.ctx = ctx
    app.state.local_api_key = local_api_key
    install_error_handlers(app)
    console.install(app, ctx)  # the web console at / (pages under /ui; api/console)
    _add_middleware(app, settings, ctx)
    app.include_router(health.router)
    for router in V0_ROUTERS:
        app.include_router(router, prefix="/v0")
    for router in V1_ROUTERS:
        app.include_router(router, prefix="/v1")
    return app


def _local_api_key(settings: Settings, ctx: AppContext) -> str | None:
    """The local key of the embedded default (None when keys are managed by an admin): issued on
    a fresh install, else the one saved then."""
    if not settings.bootstrap_api_key:
        return None
    issued = ctx.auth.bootstrap_local_key(settings.default_tenant, settings.api_key_file)
    return issued or read_secret(settings.api_key_file)


def _lifespan(settings: Settings, ctx: AppContext) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Starts the background loops the settings ask for; stops them and closes ``ctx`` at exit."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        background = Background()
        for interval, name, run_once in _loops(settings, ctx):
            background.start(interval, name, run_once)
        try:
            yield
        finally:
            await background.stop()
            ctx.close()

    return lifespan


def _loops(settings: Settings, ctx: AppContext) -> list[tuple[float, str, Callable[[], object]]]:
    loops: list[tuple[float, str, Callable[[], object]]] = []
    if settings.background_tasks:
        sweeper = Sweeper(ctx.db, ctx.store, settings)  # orphans of interrupted uploads
        loops += [
            (settings.reconcile_interval_seconds, "reconciler", ctx.reconciler.run_once),
            (settings.reconcile_interval_seconds, "deployments", ctx.deployments.sync_once),
            (settings.janitor_interval_seconds, "janitor", ctx.janitor.run_once),
            (settings.sweep_interval_seconds, "sweep", sweeper.run_once),
        ]
    if settings.drop_scan:
        loops.append((settings.drop_scan_interval_seconds, "drops", ctx.drops.scan_once))
    return loops


def _add_middleware(app: FastAPI, settings: Settings, ctx: AppContext) -> None:
    """Outermost last: request id → limits (body caps, body timeouts) → auth → rate limit → app;
    none reads the body, so bad requests are refused before it is parsed (api/middleware.py)."""
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
