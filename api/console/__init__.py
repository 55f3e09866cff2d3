"""The web console at ``/`` (pages under ``/ui``): server-rendered Jinja2 pages over the same
services as the API, tenant-scoped the same way, signed in with an API key held in an HttpOnly,
SameSite=Strict cookie (a signed session, never the key); every form carries a CSRF token.
Front-end libraries are vendored under ``static/vendor`` (see its README)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from api.console import (
    routes_adapters,
    routes_auth,
    routes_datasets,
    routes_deployments,
    routes_drops,
    routes_jobs,
)
from api.console.session import Signer
from api.console.web import HERE, PageError, SecurityHeadersMiddleware, SignInRequired, render, see_other
from api.context import AppContext

# For api.middleware.AuthMiddleware: the console authenticates with its own cookie.
PUBLIC_PATHS = frozenset({"/", "/ui"})
PUBLIC_PREFIXES = ("/ui/",)


async def _sign_in(request: Request, exc: Exception) -> Response:
    if request.url.path.endswith("/stream"):
        return Response("sign in first", status_code=401, media_type="text/plain")
    return see_other("/ui/signin")


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    from api.console.web import current_session

    try:
        session = current_session(request)
    except SignInRequired:
        session = None
    return render(request, "error.html", session, status=exc.status, message=exc.message, code=exc.status)


def install(app: FastAPI, ctx: AppContext) -> None:
    """Mount the console on ``app`` (call before the middleware that must wrap it)."""
    app.state.console_signer = Signer.from_settings(ctx.settings, ctx.db)
    app.add_exception_handler(SignInRequired, _sign_in)
    app.add_exception_handler(PageError, _page_error)
    app.add_middleware(SecurityHeadersMiddleware)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for module in (
        routes_auth,
        routes_jobs,
        routes_datasets,
        routes_adapters,
        routes_deployments,
        routes_drops,
    ):
        app.include_router(module.router)
    app.include_router(routes_auth.api_router, prefix="/v0")
