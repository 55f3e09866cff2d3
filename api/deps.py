"""FastAPI dependencies: the service container and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.context import AppContext
from api.middleware import TENANT_STATE


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]

# auto_error=False: a missing header is answered by our own typed 401, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="API key (`fastuner admin create-key`)")


def get_tenant(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant the bearer API key belongs to; every resource lookup is scoped to it.

    :class:`api.middleware.AuthMiddleware` has checked the key before the body was read and left
    the tenant in the request state; without the middleware (an app assembled otherwise) the key is
    checked here, by the same service.
    """
    tenant = request.scope.get("state", {}).get(TENANT_STATE)
    if isinstance(tenant, str) and tenant:
        return tenant
    header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
    return ctx.auth.authenticate(header)


Tenant = Annotated[str, Depends(get_tenant)]

# The `Idempotency-Key` header of the job-starting routes (/v0/finetune, /v1/fine_tuning/jobs).
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=128,
        pattern=r"^[\x20-\x7e]+$",
        description="1-128 printable ASCII characters; a retry with the same key and body "
        "returns the first job instead of starting another",
    ),
]
