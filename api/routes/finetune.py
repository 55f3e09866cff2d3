"""/v0/finetune: start (Idempotency-Key honoured), list, get, cancel, events, metrics (JSON or SSE), logs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Ctx, IdempotencyKey, Tenant
from api.domain.enums import JobStatus
from api.domain.finetune import DryRun, FineTuneJob, FineTuneRequest, JobEvent, MetricPoint
from api.errors import error_responses
from api.routes.paging import Page, PageSize

router = APIRouter(prefix="/finetune", tags=["finetune"], responses=error_responses(401))
FOLLOW_POLL_SECONDS = 1.0
# ``after`` is compared with event ids and metric steps in SQL, so it must fit their columns
# (INTEGER: 32 bits on PostgreSQL); a larger value would fail the query instead of matching nothing.
MAX_CURSOR = 2**31 - 1


class JobPage(Page):
    items: list[FineTuneJob]
    next_cursor: str | None


class ReconcileSummary(BaseModel):
    checked: int
    transitions: list[str]
    metrics_ingested: int
    adapters_registered: list[str]
    errors: list[str]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=FineTuneJob | DryRun,
    responses={
        200: {"model": DryRun, "description": "dry run: the resolved launch and its estimate"},
        **error_responses(400, 403, 404, 409, 413, 422, 429, 502),
    },
)
async def start_job(
    req: FineTuneRequest,
    ctx: Ctx,
    tenant: Tenant,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> FineTuneJob | DryRun:
    """Preflight, then launch a fine-tune on the configured backend (``dry_run`` launches nothing)."""
    result = await run_in_threadpool(ctx.finetune.start, tenant, req, idempotency_key=idempotency_key)
    if isinstance(result, DryRun):
        response.status_code = status.HTTP_200_OK
    return result


@router.get("", response_model=JobPage, responses=error_responses(400, 422))
def list_jobs(
    ctx: Ctx,
    tenant: Tenant,
    limit: PageSize = 50,
    cursor: str | None = None,
    status: JobStatus | None = None,
) -> JobPage:
    return JobPage.of(ctx.finetune.list_page(tenant, limit=limit, cursor=cursor, status=status))


@router.post("/reconcile", response_model=ReconcileSummary, tags=["admin"])
async def reconcile(ctx: Ctx, tenant: Tenant) -> ReconcileSummary:
    """Sync the caller's non-terminal jobs with their backend now (a background loop does all)."""
    report = await run_in_threadpool(ctx.reconciler.run_once, tenant)
    return ReconcileSummary(**report.__dict__)


@router.get("/{job_id}", response_model=FineTuneJob, responses=error_responses(404, 422))
def get_job(job_id: str, ctx: Ctx, tenant: Tenant) -> FineTuneJob:
    return ctx.finetune.get(tenant, job_id)


@router.post("/{job_id}/cancel", response_model=FineTuneJob, responses=error_responses(404, 409, 422, 502))
async def cancel_job(job_id: str, ctx: Ctx, tenant: Tenant) -> FineTuneJob:
    return await run_in_threadpool(ctx.finetune.cancel, tenant, job_id)


@router.get("/{job_id}/events", response_model=list[JobEvent], responses=error_responses(404, 422))
def job_events(
    job_id: str,
    ctx: Ctx,
    tenant: Tenant,
    after: Annotated[int, Query(ge=0, le=MAX_CURSOR, description="only events with a larger id")] = 0,
) -> list[JobEvent]:
    return ctx.finetune.events(tenant, job_id, after)


@router.get("/{job_id}/logs", response_model=list[str], responses=error_responses(404, 422, 502))
async def job_logs(
    job_id: str, ctx: Ctx, tenant: Tenant, tail: Annotated[int, Query(ge=1, le=10_000)] = 200
) -> list[str]:
    return await run_in_threadpool(ctx.finetune.logs, tenant, job_id, tail)


@router.get(
    "/{job_id}/metrics",
    response_model=list[MetricPoint],
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "with follow=true: SSE"},
        **error_responses(404, 422),
    },
)
def job_metrics(
    job_id: str,
    request: Request,
    ctx: Ctx,
    tenant: Tenant,
    after: Annotated[int, Query(ge=0, le=MAX_CURSOR, description="only points of a later step")] = 0,
    follow: bool = False,
) -> list[MetricPoint] | EventSourceResponse:
    """Metric points after step ``after``; with ``follow=true`` (or ``Accept: text/event-stream``) a
    Server-Sent Events stream of ``metric`` and ``status`` events that ends when the job does."""
    points = ctx.finetune.metrics(tenant, job_id, after)
    if not (follow or "text/event-stream" in request.headers.get("accept", "")):
        return points
    return EventSourceResponse(_follow(request, ctx, tenant, job_id, after))


async def _follow(
    request: Request, ctx: Ctx, tenant: str, job_id: str, after: int
) -> AsyncIterator[dict[str, str]]:
    last_status: str | None = None
    while True:
        points = await run_in_threadpool(ctx.finetune.metrics, tenant, job_id, after)
        for point in points:
            after = point.step
            yield {"event": "metric", "id": str(point.step), "data": point.model_dump_json()}
        job = await run_in_threadpool(ctx.finetune.get, tenant, job_id)
        if job.status.value != last_status:
            last_status = job.status.value
            yield {
                "event": "status",
                "data": json.dumps({"status": last_status, "adapter_id": job.adapter_id}),
            }
        if job.status.terminal or await request.is_disconnected():
            return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
