"""Jobs: the list, a job's page (live charts over SSE, events, log tail), cancel with confirmation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api.console.web import CtxDep, PostSession, SessionDep, page_errors, render, seconds_since, see_other
from api.domain.errors import FastunerError
from api.domain.finetune import FineTuneJob
from api.routes.finetune import _follow

router = APIRouter(prefix="/ui/jobs", include_in_schema=False)
LOG_TAIL = 60


def progress(job: FineTuneJob) -> dict[str, Any]:
    """Step, planned steps (when known), fraction and ETA from the job's latest metric record."""
    latest = job.latest_metrics or {}
    step = int(latest.get("step", 0))
    total = job.hyperparameters.get("max_steps")
    total = int(total) if isinstance(total, int | float | str) and str(total).isdigit() else None
    if job.status.value == "completed" and step:
        total = total or step
    fraction = min(step / total, 1.0) if total else None
    return {"step": step, "total": total, "fraction": fraction, "eta_s": latest.get("eta_s")}


def cost_so_far(job: FineTuneJob) -> float | None:
    """Billed cost once known, else the hourly price times the time it has run."""
    if job.cost_estimate_usd is not None:
        return job.cost_estimate_usd
    if job.estimate is None or job.started_at is None:
        return None
    end = seconds_since(job.ended_at) if job.ended_at else 0.0
    ran = (seconds_since(job.started_at) or 0.0) - (end or 0.0)
    return round(job.estimate.hourly_usd * job.instance_count * max(ran, 0.0) / 3600, 4)


@router.get("", response_class=HTMLResponse)
def jobs_page(request: Request, ctx: CtxDep, session: SessionDep, cursor: str | None = None) -> Response:
    with page_errors():
        jobs, next_cursor = ctx.finetune.list_page(session.tenant, limit=50, cursor=cursor)
    rows = [{"job": j, "progress": progress(j), "cost": cost_so_far(j)} for j in jobs]
    return render(request, "jobs.html", session, rows=rows, next_cursor=next_cursor)


@router.get("/{job_id}", response_class=HTMLResponse)
async def job_page(job_id: str, request: Request, ctx: CtxDep, session: SessionDep) -> Response:
    with page_errors():
        job = await run_in_threadpool(ctx.finetune.get, session.tenant, job_id)
        events = await run_in_threadpool(ctx.finetune.events, session.tenant, job_id, 0)
    try:
        logs = await run_in_threadpool(ctx.finetune.logs, session.tenant, job_id, LOG_TAIL)
        logs_error = None
    except FastunerError as exc:  # the backend's logs may be unreachable; the page still renders
        logs, logs_error = [], exc.message
    return render(
        request,
        "job.html",
        session,
        job=job,
        events=events[-100:],
        logs=logs,
        logs_error=logs_error,
        progress=progress(job),
        cost=cost_so_far(job),
    )


@router.get("/{job_id}/stream")
async def job_stream(job_id: str, request: Request, ctx: CtxDep, session: SessionDep) -> Response:
    """The API's metrics stream (``metric`` and ``status`` events, ending with the job)."""
    with page_errors():
        await run_in_threadpool(ctx.finetune.get, session.tenant, job_id)
    return EventSourceResponse(_follow(request, ctx, session.tenant, job_id, 0))


@router.get("/{job_id}/cancel", response_class=HTMLResponse)
def confirm_cancel(job_id: str, request: Request, ctx: CtxDep, session: SessionDep) -> Response:
    with page_errors():
        job = ctx.finetune.get(session.tenant, job_id)
    return render(request, "confirm_cancel.html", session, job=job)


@router.post("/{job_id}/cancel")
async def cancel(job_id: str, ctx: CtxDep, session: PostSession) -> Response:
    with page_errors():
        await run_in_threadpool(ctx.finetune.cancel, session.tenant, job_id)
    return see_other(f"/ui/jobs/{job_id}")
