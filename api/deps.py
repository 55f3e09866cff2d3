"""FastAPI dependencies: the service container and the caller's tenant."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from api.context import AppContext
from api.domain.errors import Unauthorized


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


def get_tenant(ctx: Ctx, authorization: Annotated[str | None, Header()] = None) -> str:
    """With API keys configured, a bearer key names the tenant; else single-user embedded mode."""
    keys = ctx.settings.api_keys
    if not keys:
        return ctx.settings.default_tenant
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer API key (Authorization: Bearer <key>)")
    for key, tenant in keys.items():
        if hmac.compare_digest(key.encode(), token.strip().encode()):
            return tenant
    raise Unauthorized("unknown API key")


Tenant = Annotated[str, Depends(get_tenant)]
