"""/v1/fine_tuning/jobs (OpenAI-compatible): create (``Idempotency-Key`` honoured), list, retrieve,
cancel, events, checkpoints — over ``POST /v0/finetune`` and friends; ``fine_tuned_model`` is the
adapter id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from api.deps import Ctx, IdempotencyKey, Tenant
from api.domain.finetune import FineTuneJob
from api.domain.openai import (
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
)
from api.errors import openai_error_responses
from api.routes.openai_files import Compat

router = APIRouter(prefix="/fine_tuning/jobs", tags=["openai"], responses=openai_error_responses(401))

After = Annotated[str | None, Query(max_length=128, description="the last id of the previous page")]


@router.post(
    "",
    response_model=FineTuningJob,
    responses=openai_error_responses(400, 403, 404, 409, 413, 429, 502),
)
async def create_job(
    body: FineTuningJobCreate,
    tenant: Tenant,
    ctx: Ctx,
    compat: Compat,
    idempotency_key: IdempotencyKey = None,
) -> FineTuningJob:
    """Preflight, then launch a fine-tune of ``model`` on ``training_file`` (see the request schema
    for how OpenAI's hyperparameters map onto the engine's, and ``fastuner`` for our options)."""
    req = await run_in_threadpool(compat.job_request, body)
    job = await run_in_threadpool(ctx.finetune.start, tenant, req, idempotency_key=idempotency_key)
    assert isinstance(job, FineTuneJob)  # never a dry run: `fastuner.dry_run` is refused
    await run_in_threadpool(compat.record, tenant, job.id, body)
    return await run_in_threadpool(compat.to_job, tenant, job)


@router.get("", response_model=FineTuningJobList, responses=openai_error_responses(400, 404))
def list_jobs(
    tenant: Tenant,
    compat: Compat,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FineTuningJobList:
    """The tenant's jobs, newest first."""
    items, more = compat.jobs(tenant, after=after, limit=limit)
    return FineTuningJobList.of(items, more)


@router.get("/{job_id}", response_model=FineTuningJob, responses=openai_error_responses(404))
def retrieve_job(job_id: str, tenant: Tenant, compat: Compat) -> FineTuningJob:
    return compat.job(tenant, job_id)


@router.post(
    "/{job_id}/cancel", response_model=FineTuningJob, responses=openai_error_responses(404, 409, 502)
)
async def cancel_job(job_id: str, tenant: Tenant, ctx: Ctx, compat: Compat) -> FineTuningJob:
    """Stop the job; it reads ``cancelled`` at once (Fastuner's own status, under ``fastuner``,
    is ``cancelling`` until the backend has stopped it). 409 once the job has ended."""
    job = await run_in_threadpool(ctx.finetune.cancel, tenant, job_id)
    return await run_in_threadpool(compat.to_job, tenant, job)


@router.get(
    "/{job_id}/events", response_model=FineTuningJobEventList, responses=openai_error_responses(400, 404)
)
def list_events(
    job_id: str,
    tenant: Tenant,
    compat: Compat,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> FineTuningJobEventList:
    """Newest first: the job's status changes and warnings (``type: message``) and one
    ``type: metrics`` event per logged training step (losses in nats per target token, as
    OpenAI's; our bits-per-token values and the SCU controller's state in ``data``)."""
    items, more = compat.events(tenant, job_id, after=after, limit=limit)
    return FineTuningJobEventList.of(items, more)


@router.get(
    "/{job_id}/checkpoints",
    response_model=FineTuningJobCheckpointList,
    responses=openai_error_responses(400, 404),
)
def list_checkpoints(
    job_id: str,
    tenant: Tenant,
    compat: Compat,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> FineTuningJobCheckpointList:
    """The job's registered adapter, once it has succeeded (``fine_tuned_model_checkpoint`` = the
    adapter id; ``valid_loss`` its held-out loss in nats per token)."""
    items = compat.checkpoints(tenant, job_id)
    if after:
        ids = [c.id for c in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return FineTuningJobCheckpointList.of(items[:limit], len(items) > limit)
