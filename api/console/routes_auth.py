"""Sign-in (an API key, or a one-time token from ``fastuner ui``), sign-out, and the token route."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from api.console.session import COOKIE_PATH, SESSION_COOKIE, SIGNIN_COOKIE, SIGNIN_TOKEN_SECONDS
from api.console.web import PostSession, render, see_other, signer_of
from api.deps import Tenant
from api.domain.errors import Unauthorized

router = APIRouter(include_in_schema=False)
api_router = APIRouter(prefix="/console", include_in_schema=False)
HOME = "/ui/jobs"


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _signed_in(request: Request, key_id: str, tenant: str) -> Response:
    signer = signer_of(request)
    response = see_other(HOME)
    token = signer.new_session(key_id, tenant)
    _set_cookie(request, response, SESSION_COOKIE, token, int(signer.session_seconds))
    response.delete_cookie(SIGNIN_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


@router.get("/")
@router.get("/ui")
@router.get("/ui/")
def root() -> Response:
    return see_other(HOME)


def _signin_form(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = render(request, "signin.html", None, status=status, signin_csrf=token, error=error)
    _set_cookie(request, response, SIGNIN_COOKIE, token, 3600)
    return response


@router.get("/ui/signin")
def signin_page(request: Request) -> Response:
    if signer_of(request).session(request.cookies.get(SESSION_COOKIE)) is not None:
        return see_other(HOME)
    return _signin_form(request)


@router.post("/ui/signin")
def signin(
    request: Request,
    api_key: Annotated[str, Form(max_length=512)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    expected = request.cookies.get(SIGNIN_COOKIE)
    if not csrf or not expected or not secrets.compare_digest(csrf, expected):
        return _signin_form(request, 403, "The form expired (CSRF check failed): please try again.")
    found = signer_of(request).key_for_secret(api_key.strip())
    if found is None:
        return _signin_form(request, 401, "That API key is not valid (or was revoked).")
    return _signed_in(request, *found)


@router.get("/ui/signin/token")
def signin_with_token(request: Request, t: str = "") -> Response:
    """The link ``fastuner ui`` opens: a signed, single-use, 60-second token (never the key)."""
    found = signer_of(request).redeem_signin_token(t)
    if found is None:
        return _signin_form(request, 401, "That sign-in link has expired or was already used.")
    return _signed_in(request, *found)


@router.post("/ui/signout")
def signout(session: PostSession) -> Response:
    response = see_other("/ui/signin")
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


class SigninLink(BaseModel):
    path: str
    expires_in: int


@api_router.post("/signin-token", response_model=SigninLink)
def signin_token(request: Request, tenant: Tenant) -> SigninLink:
    """A one-time console sign-in link for the caller's key (``fastuner ui`` opens it)."""
    header = request.headers.get("authorization", "")
    found = signer_of(request).key_for_secret(header.partition(" ")[2].strip())
    if found is None or found[1] != tenant:
        raise Unauthorized("invalid or revoked API key")
    token = signer_of(request).new_signin_token(found[0])
    return SigninLink(path=f"/ui/signin/token?t={token}", expires_in=SIGNIN_TOKEN_SECONDS)
