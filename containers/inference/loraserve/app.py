"""FastAPI app: the SageMaker inference contract plus ``GET /adapters``."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraserve import __version__
from loraserve.config import ServerConfig
from loraserve.engine import Engine, Generation
from loraserve.errors import ServeError
from loraserve.logs import log_event
from loraserve.scheduler import DoneEvent, ErrorEvent, Event, QueueFull, TokenEvent
from loraserve.schemas import InvocationRequest, InvocationResponse, Output, describe_validation_error

MAX_REQUEST_DEPTH = 64
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


def output_of(generation: Generation) -> Output:
    return Output(
        generated_text=generation.generated_text,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        finish_reason=generation.finish_reason,
    )


def sse_event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


class RequestTooDeep(ValueError):
    """A request body nested deeper than MAX_REQUEST_DEPTH."""


def loads_request(raw: bytes | str, max_depth: int = MAX_REQUEST_DEPTH) -> Any:
    """``json.loads`` that refuses documents nested deeper than ``max_depth`` with RequestTooDeep
    instead of raising RecursionError (10^5 ``[`` would) or handing the validators a deep tree."""
    too_deep = RequestTooDeep(
        f"JSON nested deeper than {max_depth} levels (arrays/objects inside each other)"
    )
    try:
        value = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level >= max_depth:
                raise too_deep
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return value


def _error(status: int, code: str, message: str, request_id: str | None = None) -> JSONResponse:
    headers = {"X-Request-Id": request_id} if request_id else None
    return JSONResponse(status_code=status, content={"code": code, "message": message}, headers=headers)


def load_engine(engine: Engine, on_failure: Callable[[], None] | None = None) -> None:
    """Load the base model, then preload adapters. On failure /ping stays 503 and ``on_failure`` runs."""
    try:
        engine.load()
    except Exception as exc:
        log_event("base_model_load_failed", logging.ERROR, exc_info=True, error=str(exc))
        if on_failure is not None:
            on_failure()
        return
    engine.preload()


def create_app(
    config: ServerConfig | None = None,
    engine: Engine | None = None,
    *,
    on_load_failure: Callable[[], None] | None = None,
) -> FastAPI:
    """The app. The base model loads in a background thread at start-up unless ``engine`` is ready."""
    if engine is None:
        engine = Engine(config if config is not None else ServerConfig.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine.state == "loading" and not engine.load_started:
            thread = threading.Thread(
                target=load_engine,
                args=(engine, on_load_failure),
                name="loraserve-load",
                daemon=True,
            )
            app.state.loader = thread
            thread.start()
        yield

    app = FastAPI(title="Fastuner LoRA server", version=__version__, lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"), str(exc.detail))

    # /ping and /adapters run on the event loop and never wait for the model lock, so health checks
    # answer at once even while every worker thread is queued behind a long generation.
    @app.get("/ping")
    async def ping() -> JSONResponse:
        body: dict[str, Any] = {"status": engine.state, "base_model": engine.config.base_model}
        if engine.state == "failed":
            body["error"] = engine.error
        return JSONResponse(status_code=200 if engine.ready else 503, content=body)

    @app.get("/adapters")
    async def adapters() -> dict[str, Any]:
        return {
            "loaded": engine.loaded_adapters(),
            "max_adapters": engine.config.max_adapters,
            "source": engine.source.description,
            "evictions": engine.evictions,
            "bytes": engine.adapter_bytes(),
            "memory_budget_bytes": engine.config.adapter_memory_bytes,
            "disk_evictions": getattr(engine.source, "evictions", 0),
            "disk_budget_bytes": engine.config.adapter_disk_bytes,
            "queued": engine.scheduler.queued(),
            "running": engine.scheduler.running,
        }

    @app.post(
        "/invocations",
        response_model=InvocationResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": InvocationRequest.model_json_schema()}},
            }
        },
    )
    async def invocations(request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id = request.headers.get("x-amzn-requestid") or uuid.uuid4().hex
        raw = await request.body()
        try:
            payload = loads_request(raw)
        except RequestTooDeep as exc:
            return _error(400, "invalid_json", f"the request body is not accepted: {exc}", request_id)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, "invalid_json", f"the request body is not valid JSON: {exc}", request_id)
        if not isinstance(payload, dict):
            return _error(400, "invalid_request", "the request body must be a JSON object", request_id)
        try:
            req = InvocationRequest.model_validate(payload)
        except ValidationError as exc:
            message = describe_validation_error(exc)
            log_event("invocation_rejected", request_id=request_id, code="invalid_request", error=message)
            return _error(422, "invalid_request", message, request_id)
        if req.stream and len(req.inputs) != 1:
            return _error(400, "bad_request", "stream: true takes a single input", request_id)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def notify(event: Event) -> None:  # on the scheduler's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        def failed(exc: ServeError) -> JSONResponse:
            log_event(
                "invocation_failed",
                logging.WARNING,
                request_id=request_id,
                adapter=req.adapter,
                status=exc.status,
                code=exc.code,
                error=exc.message,
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            response = _error(exc.status, exc.code, exc.message, request_id)
            if isinstance(exc, QueueFull):
                response.headers["Retry-After"] = str(exc.retry_after_s)
            return response

        try:
            ticket = await run_in_threadpool(
                engine.submit,
                req.inputs,
                req.adapter,
                req.parameters,
                deadline_s=req.deadline_s,
                stream=req.stream,
                notify=notify,
            )
        except ServeError as exc:
            return failed(exc)
        except Exception as exc:
            log_event(
                "invocation_error", logging.ERROR, exc_info=True, request_id=request_id, adapter=req.adapter
            )
            return _error(500, "internal_error", f"{type(exc).__name__}: {exc}", request_id)

        async def next_event() -> Event | None:
            """The next event, or None once the client has gone (the request is then cancelled)."""
            while True:
                try:
                    return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    if await request.is_disconnected():
                        engine.scheduler.cancel(ticket)
                        return None

        def log_done(results: list[Generation]) -> float:
            latency_ms = round((time.perf_counter() - started) * 1000, 2)
            log_event(
                "invocation",
                request_id=request_id,
                adapter=req.adapter,
                inputs=len(results),
                prompt_tokens=sum(r.prompt_tokens for r in results),
                completion_tokens=sum(r.completion_tokens for r in results),
                finish_reasons=[r.finish_reason for r in results],
                max_new_tokens=req.parameters.max_new_tokens,
                temperature=req.parameters.temperature,
                stream=req.stream,
                latency_ms=latency_ms,
            )
            return latency_ms

        try:
            first = await next_event()
        except BaseException:
            engine.scheduler.cancel(ticket)
            raise
        if first is None:
            return _error(499, "cancelled", "the client went away", request_id)
        if isinstance(first, ErrorEvent):
            return failed(first.error)

        if not req.stream:
            results: dict[int, Generation] = {}
            event: Event | None = first
            try:
                while True:
                    if event is None:
                        return _error(499, "cancelled", "the client went away", request_id)
                    if isinstance(event, ErrorEvent):
                        return failed(event.error)
                    if isinstance(event, DoneEvent):
                        results[event.index] = event.generation
                        if len(results) == len(req.inputs):
                            break
                    event = await next_event()
            except BaseException:
                engine.scheduler.cancel(ticket)
                raise
            ordered = [results[i] for i in range(len(req.inputs))]
            response = InvocationResponse(
                outputs=[output_of(r) for r in ordered], adapter=req.adapter, latency_ms=log_done(ordered)
            )
            return JSONResponse(content=response.model_dump(), headers={"X-Request-Id": request_id})

        async def sse() -> AsyncIterator[bytes]:
            event: Event | None = first
            try:
                while event is not None:
                    if isinstance(event, TokenEvent):
                        yield sse_event({"type": "token", "text": event.text})
                    elif isinstance(event, DoneEvent):
                        latency_ms = log_done([event.generation])
                        yield sse_event(
                            {
                                "type": "done",
                                "output": output_of(event.generation).model_dump(),
                                "adapter_id": req.adapter,
                                "latency_ms": latency_ms,
                            }
                        )
                        return
                    else:
                        failed(event.error)
                        yield sse_event({"type": "error", **event.error.to_dict()})
                        return
                    event = await next_event()
            finally:  # the client went away mid-stream (or the server stops): free the slot
                if not ticket.finished:
                    engine.scheduler.cancel(ticket)

        return StreamingResponse(
            sse(),
            media_type="text/event-stream",
            headers={"X-Request-Id": request_id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app
