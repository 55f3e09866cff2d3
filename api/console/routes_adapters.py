"""Adapters: the list, an adapter's page (eval base vs adapter, lineage), download, deploy."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.console import web
from api.console.web import CtxDep, PageError, PostSession, SessionDep, page_errors, render, see_other
from api.domain.deployments import DeploymentRequest

router = APIRouter(prefix="/ui/adapters", include_in_schema=False)
TASK_METRICS = {
    "generation": [("exact_match", "exact match")],
    "classification": [("accuracy", "accuracy"), ("macro_f1", "macro-F1")],
}


def task_rows(eval_metrics: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The ``task`` block of ``eval.json`` and one row per metric (base vs adapter)."""
    task = eval_metrics.get("task")
    if not isinstance(task, dict):
        return None, []
    base, adapter = (side if isinstance(side := task.get(k), dict) else {} for k in ("base", "adapter"))
    metrics = TASK_METRICS.get(str(task.get("kind")), TASK_METRICS["generation"])
    return task, [{"name": name, "base": base.get(key), "adapter": adapter.get(key)} for key, name in metrics]


@router.get("", response_class=HTMLResponse)
def adapters_page(request: Request, ctx: CtxDep, session: SessionDep, cursor: str | None = None) -> Response:
    return web.render_list(request, session, "adapters.html", "adapters", ctx.adapters.list_page, cursor)


@router.get("/{adapter_id}", response_class=HTMLResponse)
def adapter_page(
    adapter_id: str, request: Request, ctx: CtxDep, session: SessionDep, error: str | None = None
) -> Response:
    with page_errors():
        adapter = ctx.adapters.get(session.tenant, adapter_id)
    ev = adapter.eval_metrics or {}
    task, task_metrics = task_rows(ev)
    samples = raw if task and isinstance(raw := task.get("samples"), list) else []
    return render(
        request,
        "adapter.html",
        session,
        adapter=adapter,
        ev=ev,
        task=task,
        task_metrics=task_metrics,
        samples=samples[:4],
        error=error,
    )


@router.get("/{adapter_id}/download")
async def download(adapter_id: str, ctx: CtxDep, session: SessionDep) -> Response:
    with page_errors():
        stream = await run_in_threadpool(ctx.adapters.archive, session.tenant, adapter_id)
    return StreamingResponse(
        stream,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{adapter_id}.tar.gz"'},
    )


@router.post("/{adapter_id}/deploy")
async def deploy(
    adapter_id: str,
    ctx: CtxDep,
    session: PostSession,
    ttl_minutes: Annotated[str, Form(max_length=16)] = "60",
    max_lifetime_hours: Annotated[str, Form(max_length=16)] = "",
    instance_type: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Deploy the adapter with an idle TTL and an optional maximum lifetime."""
    try:
        req = DeploymentRequest(
            adapter_ids=[adapter_id],
            ttl_seconds=round(float(ttl_minutes) * 60) if ttl_minutes.strip() else None,
            max_lifetime_seconds=round(float(max_lifetime_hours) * 3600)
            if max_lifetime_hours.strip()
            else None,
            instance_type=instance_type.strip() or None,
        )
    except (ValidationError, ValueError) as exc:
        raise PageError(400, f"invalid deployment settings: {exc}") from exc
    with page_errors():
        dep = await run_in_threadpool(ctx.deployments.create, session.tenant, req)
    return see_other(f"/ui/deployments/{dep.id}")
