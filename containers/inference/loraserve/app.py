"""FastAPI app: the SageMaker inference contract plus ``GET /adapters``."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraserve import __version__
from loraserve.config import ServerConfig
from loraserve.engine import Engine
from loraserve.errors import ServeError
from loraserve.logs import log_event
from loraserve.schemas import InvocationRequest, InvocationResponse, Output, describe_validation_error

MAX_REQUEST_DEPTH = 64


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
        try:
            results = await run_in_threadpool(engine.generate, req.inputs, req.adapter, req.parameters)
        except ServeError as exc:
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
            return _error(exc.status, exc.code, exc.message, request_id)
        except Exception as exc:
            log_event(
                "invocation_error", logging.ERROR, exc_info=True, request_id=request_id, adapter=req.adapter
            )
            return _error(500, "internal_error", f"{type(exc).__name__}: {exc}", request_id)
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        response = InvocationResponse(
            outputs=[
                Output(
                    generated_text=r.generated_text,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    finish_reason=r.finish_reason,
                )
                for r in results
            ],
            adapter=req.adapter,
            latency_ms=latency_ms,
        )
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
            latency_ms=latency_ms,
        )
        return JSONResponse(content=response.model_dump(), headers={"X-Request-Id": request_id})

    return app
