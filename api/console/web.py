"""What every console route shares: templates, the signed-in session, CSRF checks, page errors and
the security headers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.console.session import SESSION_COOKIE, Session, Signer
from api.context import AppContext
from api.deps import get_ctx
from api.domain.errors import FastunerError

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")

# Only the console's own files: no inline script or style, no other origin, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def is_console_path(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")


class SecurityHeadersMiddleware:
    """CSP and friends on every console response; pages are never cached (they name a tenant)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_console_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/ui/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- errors --------------------------------------------------------------------------------------
class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in form."""


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@contextmanager
def page_errors() -> Iterator[None]:
    """The services' typed errors as a console page with the same status (404 for another
    tenant's id, exactly like the API)."""
    try:
        yield
    except FastunerError as exc:
        raise PageError(exc.status, exc.message) from exc


def signer_of(request: Request) -> Signer:
    signer: Signer = request.app.state.console_signer
    return signer


# -- the session ---------------------------------------------------------------------------------
def current_session(request: Request) -> Session:
    session = signer_of(request).session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequired
    return session


async def checked_session(request: Request) -> Session:
    """The session of a state-changing form post, whose ``csrf`` field must match it."""
    session = current_session(request)
    form = await request.form()
    token = form.get("csrf")
    if not signer_of(request).csrf_ok(session, token if isinstance(token, str) else None):
        raise PageError(403, "the form's CSRF token is missing or wrong: reload the page and try again")
    return session


SessionDep = Annotated[Session, Depends(current_session)]
PostSession = Annotated[Session, Depends(checked_session)]
CtxDep = Annotated[AppContext, Depends(get_ctx)]


# -- rendering -----------------------------------------------------------------------------------
def render(
    request: Request, name: str, session: Session | None, status: int = 200, **context: Any
) -> HTMLResponse:
    csrf = signer_of(request).csrf_token(session) if session else None
    return templates.TemplateResponse(
        request, name, {"session": session, "csrf": csrf, **context}, status_code=status
    )


Lister = Callable[..., tuple[list[Any], str | None]]
PAGE_SIZE = 50  # rows of a list page


def render_list(
    request: Request, session: Session, name: str, rows: str, list_page: Lister, cursor: str | None
) -> HTMLResponse:
    """A list page: one page of ``list_page`` (a service's) as ``rows`` in template ``name``."""
    with page_errors():
        items, next_cursor = list_page(session.tenant, limit=PAGE_SIZE, cursor=cursor)
    context: dict[str, Any] = {rows: items, "next_cursor": next_cursor}
    return render(request, name, session, **context)


def see_other(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def fmt_usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def fmt_num(value: Any, digits: int = 4) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return "—" if value is None else str(value)


def seconds_until(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - datetime.now(UTC)).total_seconds()


def seconds_since(value: datetime | None) -> float | None:
    left = seconds_until(value)
    return None if left is None else -left


templates.env.filters.update(time=fmt_time, duration=fmt_duration, usd=fmt_usd, num=fmt_num)
templates.env.globals.update(seconds_until=seconds_until, seconds_since=seconds_since)
