"""/v0/deployments, /v0/inference, /v0/costs and /v0/janitor/run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Generator, Iterator
from typing import IO, Any, TypeVar, cast

import anyio
from fastapi import APIRouter, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile

from api.context import AppContext
from api.deps import Ctx, Tenant
from api.domain.deployments import (
    Deployment,
    DeploymentRequest,
    GenerationParameters,
    InferenceRequest,
    InferenceResponse,
    InferenceStreamError,
    InferenceToken,
    JanitorReport,
    as_user_turn,
    parse_batch_line,
)
from api.domain.errors import BadRequest, FastunerError
from api.errors import ErrorBody, error_responses
from api.logging import get_logger
from api.routes.paging import Page, PageSize

log = get_logger("routes.deployments")

router = APIRouter(prefix="/deployments", tags=["deployments"], responses=error_responses(401))
inference_router = APIRouter(tags=["inference"], responses=error_responses(401))
ops_router = APIRouter(tags=["operations"], responses=error_responses(401))


class DeploymentPage(Page):
    items: list[Deployment]
    next_cursor: str | None


class Costs(BaseModel):
    running: list[Deployment]
    hourly_usd: float


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Deployment,
    responses=error_responses(400, 403, 404, 413, 422, 429, 502),
)
async def create_deployment(req: DeploymentRequest, ctx: Ctx, tenant: Tenant) -> Deployment:
    """Serve adapters (same base model) on a new endpoint; idle ``ttl_seconds`` later it is torn down."""
    return await run_in_threadpool(ctx.deployments.create, tenant, req)


@router.get("", response_model=DeploymentPage, responses=error_responses(400, 422))
def list_deployments(
    ctx: Ctx,
    tenant: Tenant,
    limit: PageSize = 50,
    cursor: str | None = None,
    live: bool = False,
) -> DeploymentPage:
    return DeploymentPage.of(ctx.deployments.list_page(tenant, limit=limit, cursor=cursor, live_only=live))


@router.get("/{deployment_id}", response_model=Deployment, responses=error_responses(404, 422))
def get_deployment(deployment_id: str, ctx: Ctx, tenant: Tenant) -> Deployment:
    return ctx.deployments.get(tenant, deployment_id)


@router.delete("/{deployment_id}", response_model=Deployment, responses=error_responses(404, 422, 502))
async def delete_deployment(deployment_id: str, ctx: Ctx, tenant: Tenant) -> Deployment:
    return await run_in_threadpool(ctx.deployments.delete, tenant, deployment_id)


_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "JSON, or with stream: true Server-Sent Events: `event: token` "
        "(InferenceToken) per new piece of text, then `event: done` (InferenceResponse) or "
        "`event: error` (InferenceStreamError)",
    }
}
_BUSY_DOC: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "The endpoint's request queue is full: retry shortly"}
}
PING_SECONDS = 15  # SSE comments while the model works, so idle-timeout proxies keep the stream


class AdapterRef(BaseModel):
    adapter_id: str = Field(min_length=1, max_length=128)


@router.post(
    "/{deployment_id}/adapters",
    response_model=Deployment,
    responses=error_responses(400, 404, 409, 422, 502),
)
async def add_deployment_adapter(
    deployment_id: str, body: AdapterRef, ctx: Ctx, tenant: Tenant
) -> Deployment:
    """Serve one more adapter (same base model) on a live deployment, without redeploying the base."""
    return await run_in_threadpool(ctx.deployments.add_adapter, tenant, deployment_id, body.adapter_id)


@router.delete(
    "/{deployment_id}/adapters/{adapter_id}",
    response_model=Deployment,
    responses=error_responses(404, 409, 422, 502),
)
async def remove_deployment_adapter(
    deployment_id: str, adapter_id: str, ctx: Ctx, tenant: Tenant
) -> Deployment:
    """Stop serving one adapter; the base keeps running (with none left, the janitor tears it down)."""
    return await run_in_threadpool(ctx.deployments.remove_adapter, tenant, deployment_id, adapter_id)


@inference_router.post(
    "/inference",
    response_model=InferenceResponse,
    responses={**_STREAM_DOC, **error_responses(400, 404, 409, 413, 422, 502), **_BUSY_DOC},
)
async def inference(
    req: InferenceRequest, request: Request, ctx: Ctx, tenant: Tenant
) -> InferenceResponse | EventSourceResponse:
    """Generate with an adapter (or a deployment's base model); resets the deployment's idle clock.

    With ``stream: true`` (one prompt) the answer is Server-Sent Events as the text is generated:
    ``event: token`` ``{"text"}`` per new piece, then ``event: done`` with the InferenceResponse
    (``generated_text`` = the pieces joined), or ``event: error`` ``{code, message, request_id}``.
    Refusals found before generating (unknown adapter, not deployed, a busy endpoint) are ordinary
    HTTP errors. Closing the connection stops the generation on the endpoint.
    """
    if not req.stream:
        return await run_in_threadpool(ctx.deployments.infer, tenant, req)
    stream = ctx.deployments.infer_stream(tenant, req)
    first = await run_in_threadpool(next, stream)  # refusals raise here: an HTTP error, not an event
    request_id = getattr(request.state, "request_id", None)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for item in relay(stream, first):
                if isinstance(item, str):
                    yield {"event": "token", "data": InferenceToken(text=item).model_dump_json()}
                else:
                    yield {"event": "done", "data": item.model_dump_json()}
        except Exception as exc:
            yield {"event": "error", "data": stream_error(exc, request_id).model_dump_json()}

    return EventSourceResponse(events(), ping=PING_SECONDS)


T = TypeVar("T")
_END = object()


def _next(stream: Generator[T]) -> T | object:
    return next(stream, _END)


async def relay(stream: Generator[T], *first: T) -> AsyncIterator[T]:
    """``first`` (items already taken), then the rest of a blocking generator, each ``next`` in a
    worker thread. However the consumer stops (the end, an error, the client going away =
    cancellation) the generator is closed, which closes the endpoint's stream behind it."""
    try:
        for taken in first:
            yield taken
        while (item := await anyio.to_thread.run_sync(_next, stream)) is not _END:
            yield cast(T, item)
    finally:
        with anyio.CancelScope(shield=True):  # a cancelled request still closes its upstream
            await anyio.to_thread.run_sync(stream.close)


def stream_error(exc: Exception, request_id: str | None) -> InferenceStreamError:
    """The ``error`` event for a failure after the stream opened."""
    if isinstance(exc, FastunerError):
        return InferenceStreamError(code=exc.code, message=exc.message, request_id=request_id)
    log.exception("generation failed inside an open stream")
    return InferenceStreamError(
        code="internal_error", message="internal server error; quote the request id", request_id=request_id
    )


_BATCH_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JSONL or one prompt per line",
                        },
                        "adapter_id": {"type": "string"},
                        "deployment_id": {"type": "string"},
                        "parameters": {"type": "string", "description": "GenerationParameters as JSON"},
                        "raw": {
                            "type": "boolean",
                            "default": False,
                            "description": "send prompt strings as plain text; by default a prompt "
                            "string is sent as one user turn, as `fastuner inference batch` does "
                            "(conversations go as they are either way)",
                        },
                    },
                }
            }
        },
    }
}


@inference_router.post(
    "/inference/batch",
    response_class=StreamingResponse,
    openapi_extra=_BATCH_DOC,
    responses={200: {"content": {"application/x-ndjson": {}}}, **error_responses(400, 404, 409, 413, 502)},
)
async def inference_batch(request: Request, ctx: Ctx, tenant: Tenant) -> StreamingResponse:
    """Generate for every line of an uploaded file; streams one JSON result (or error) per line.

    A prompt string goes as one user turn, the format an adapter trained here learnt (form field
    ``raw=true``: as plain text); a line holding messages goes as it is.

    The file is read a line at a time from the multipart spool (never whole into memory); a line
    over ``max_json_body_bytes`` or not UTF-8 is that line's error and the lines after it still run.
    """
    form = await request.form(max_files=1, max_fields=5)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest("multipart field 'file' is required")
        target = {k: v for k in ("adapter_id", "deployment_id") if isinstance(v := form.get(k), str) and v}
        raw_params = form.get("parameters")
        params = GenerationParameters.model_validate_json(raw_params if isinstance(raw_params, str) else "{}")
        raw = _form_flag(form.get("raw"), "raw")
        await run_in_threadpool(
            ctx.deployments.resolve_target, tenant, target.get("deployment_id"), target.get("adapter_id")
        )
    except ValidationError as exc:
        await form.close()
        raise BadRequest(f"parameters: {exc.errors()[0]['msg']}") from exc
    except BaseException:
        await form.close()
        raise
    max_line = ctx.settings.max_json_body_bytes

    def results() -> Iterator[bytes]:
        try:
            for number, line in batch_lines(upload.file, max_line):
                record = _batch_result(ctx, tenant, number, line, params, target, raw)
                yield (json.dumps(record) + "\n").encode()
        finally:
            upload.file.close()

    return StreamingResponse(iterate_in_threadpool(results()), media_type="application/x-ndjson")


_BOOL = TypeAdapter(bool)


def _form_flag(value: object, name: str) -> bool:
    """A boolean form field read as FastAPI reads ``Form()`` booleans (the console's): pydantic's
    true/false, 1/0, yes/no, on/off; absent or empty is false."""
    if value is None or value == "":
        return False
    if isinstance(value, str):
        try:
            return _BOOL.validate_python(value)
        except ValidationError:
            pass
    raise BadRequest(f"{name}: give true or false")


def batch_lines(fh: IO[bytes], max_line: int) -> Iterator[tuple[int, str | ValueError]]:
    """Non-blank lines of a batch file as ``(line number, text)``, or a ValueError for a line that
    is too long (the rest of it is skipped unread into memory) or not UTF-8."""
    number = 0
    while raw := fh.readline(max_line + 1):
        number += 1
        if len(raw) > max_line and not raw.endswith(b"\n"):
            while (rest := fh.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            yield number, ValueError(f"line is longer than {max_line} bytes")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, ValueError("line is not UTF-8")
            continue
        if text.strip():
            yield number, text


def _batch_result(
    ctx: AppContext,
    tenant: str,
    number: int,
    line: str | ValueError,
    params: GenerationParameters,
    target: dict[str, str],
    raw: bool,
) -> dict[str, Any]:
    record: dict[str, Any] = {"line": number}
    try:
        if isinstance(line, ValueError):
            raise line
        inputs = as_user_turn(parse_batch_line(line), raw)
        record["input"] = inputs
        resp = ctx.deployments.infer(tenant, InferenceRequest(inputs=inputs, parameters=params, **target))
        record.update(resp.outputs[0].model_dump())
    except ValueError as exc:
        record["error"] = {"code": "invalid_line", "message": str(exc)}
    except FastunerError as exc:
        record["error"] = {"code": exc.code, "message": exc.message}
    except Exception:  # one line's surprise must not cut the stream short for the lines after it
        log.exception("batch inference line failed", extra={"line": number})
        record.pop("input", None)
        record["error"] = {"code": "internal_error", "message": "this line could not be processed"}
    return record


@ops_router.get("/costs", response_model=Costs)
def costs(ctx: Ctx, tenant: Tenant) -> Costs:
    """Running deployments, their hourly price and when the janitor will tear each down."""
    items, _ = ctx.deployments.list_page(tenant, limit=200, live_only=True)
    return Costs(running=items, hourly_usd=round(sum(d.hourly_price_usd or 0.0 for d in items), 4))


@ops_router.post("/janitor/run", response_model=JanitorReport, responses=error_responses(422))
async def run_janitor(ctx: Ctx, tenant: Tenant, dry_run: bool = False) -> JanitorReport:
    """One janitor pass over the caller's deployments now (the API also runs it periodically)."""
    return await run_in_threadpool(ctx.janitor.run_once, dry_run=dry_run, tenant_id=tenant)
