"""Deployments and costs: what runs, $/h, idle time, countdown to teardown, delete, "try it"."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.console.web import (
    CtxDep,
    PageError,
    PostSession,
    SessionDep,
    page_errors,
    render,
    seconds_since,
    see_other,
)
from api.domain.deployments import Deployment, GenerationParameters, InferenceRequest, as_user_turn
from api.domain.errors import FastunerError

router = APIRouter(prefix="/ui/deployments", include_in_schema=False)
LIVE = {"creating", "in_service", "deleting"}  # what is (or may still be) billed


def idle_seconds(dep: Deployment) -> float | None:
    if dep.status.value not in LIVE:
        return None
    return seconds_since(dep.last_used_at or dep.in_service_at or dep.created_at)


@router.get("", response_class=HTMLResponse)
def deployments_page(request: Request, ctx: CtxDep, session: SessionDep) -> Response:
    with page_errors():
        items, _ = ctx.deployments.list_page(session.tenant, limit=100)
    live = [d for d in items if d.status.value in LIVE]
    ended = [d for d in items if d.status.value not in LIVE][:20]
    hourly = round(sum(d.hourly_price_usd or 0.0 for d in live), 4)
    return render(
        request, "deployments.html", session, live=live, ended=ended, hourly=hourly, idle=idle_seconds
    )


def _deployment_page(
    request: Request, ctx: CtxDep, tenant: str, session: Any, deployment_id: str, **extra: Any
) -> Response:
    with page_errors():
        dep = ctx.deployments.get(tenant, deployment_id)
    return render(request, "deployment.html", session, dep=dep, idle=idle_seconds(dep), live=LIVE, **extra)


@router.get("/{deployment_id}", response_class=HTMLResponse)
def deployment_page(deployment_id: str, request: Request, ctx: CtxDep, session: SessionDep) -> Response:
    return _deployment_page(request, ctx, session.tenant, session, deployment_id)


@router.post("/{deployment_id}/delete")
async def delete(deployment_id: str, ctx: CtxDep, session: PostSession) -> Response:
    with page_errors():
        await run_in_threadpool(ctx.deployments.delete, session.tenant, deployment_id)
    return see_other(f"/ui/deployments/{deployment_id}")


@router.post("/{deployment_id}/try", response_class=HTMLResponse)
async def try_it(
    deployment_id: str,
    request: Request,
    ctx: CtxDep,
    session: PostSession,
    prompt: Annotated[str, Form(min_length=1, max_length=8000)],
    adapter_id: Annotated[str, Form(max_length=128)] = "",
    max_new_tokens: Annotated[int, Form(ge=1, le=512)] = 32,
    raw: Annotated[bool, Form()] = False,
) -> Response:
    """One inference on the deployment; the page comes back with the answer (or the error)."""
    result, error, status = None, None, 200
    try:
        req = InferenceRequest(
            deployment_id=deployment_id,
            adapter_id=adapter_id or None,
            inputs=as_user_turn(prompt, raw),
            parameters=GenerationParameters(max_new_tokens=max_new_tokens),
        )
        result = await run_in_threadpool(ctx.deployments.infer, session.tenant, req)
    except ValidationError as exc:
        error, status = str(exc.errors()[0]["msg"]), 400
    except FastunerError as exc:
        if exc.status == 404:
            raise PageError(exc.status, exc.message) from exc
        error, status = f"{exc.code}: {exc.message}", exc.status
    return _deployment_page(
        request,
        ctx,
        session.tenant,
        session,
        deployment_id,
        result=result,
        error=error,
        prompt=prompt,
        raw=raw,
        status=status,
    )
