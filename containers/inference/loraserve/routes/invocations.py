"""``POST /invocations``: validate, submit to the engine, then answer with one JSON body or a stream.

The request waits on the event loop for the scheduler's events (``notify`` hands them over from the
worker thread); a client that goes away cancels its request, freeing its place in the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from loraserve.body import parse_invocation
from loraserve.deps import EngineDep
from loraserve.engine import Engine
from loraserve.errors import QueueFull, ServeError
from loraserve.generation import Generation
from loraserve.logs import log_event
from loraserve.responses import error_response, output_of, sse_event
from loraserve.schemas import InvocationRequest, InvocationResponse
from loraserve.tickets import DoneEvent, ErrorEvent, Event, Ticket, TokenEvent

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

router = APIRouter()
_REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": InvocationRequest.model_json_schema()}},
}


@router.post("/invocations", response_model=InvocationResponse, openapi_extra={"requestBody": _REQUEST_BODY})
async def invocations(request: Request, engine: EngineDep) -> Response:
    started = time.perf_counter()
    request_id = request.headers.get("x-amzn-requestid") or uuid.uuid4().hex
    parsed = parse_invocation(await request.body(), request_id)
    if isinstance(parsed, JSONResponse):
        return parsed
    return await Invocation(request, engine, parsed, request_id, started).answer()


@dataclass
class Invocation:
    """One validated request: submitted, its events awaited, its answer built and logged."""

    request: Request
    engine: Engine
    req: InvocationRequest
    request_id: str
    started: float  # time.perf_counter() when the request arrived
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def notify(self, event: Event) -> None:  # on the scheduler's thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    # --------------------------------------------------------------- answers
    def error(self, status: int, code: str, message: str) -> JSONResponse:
        return error_response(status, code, message, self.request_id)

    def gone(self) -> JSONResponse:
        return self.error(499, "cancelled", "the client went away")

    def latency_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)

    def failed(self, exc: ServeError) -> JSONResponse:
        log_event(
            "invocation_failed",
            logging.WARNING,
            request_id=self.request_id,
            adapter=self.req.adapter,
            status=exc.status,
            **exc.log_fields(),
            latency_ms=self.latency_ms(),
        )
        response = self.error(exc.status, exc.code, exc.message)
        if isinstance(exc, QueueFull):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    def log_done(self, results: list[Generation]) -> float:
        """Log the finished request; returns its latency in milliseconds."""
        latency_ms = self.latency_ms()
        log_event(
            "invocation",
            request_id=self.request_id,
            adapter=self.req.adapter,
            inputs=len(results),
            prompt_tokens=sum(r.prompt_tokens for r in results),
            completion_tokens=sum(r.completion_tokens for r in results),
            finish_reasons=[r.finish_reason for r in results],
            max_new_tokens=self.req.parameters.max_new_tokens,
            temperature=self.req.parameters.temperature,
            stream=self.req.stream,
            latency_ms=latency_ms,
        )
        return latency_ms

    # ----------------------------------------------------------------- steps
    async def answer(self) -> Response:
        ticket = await self.submit()
        if isinstance(ticket, JSONResponse):
            return ticket
        try:
            first = await self.next_event(ticket)
            if first is None:
                return self.gone()
            if isinstance(first, ErrorEvent):
                return self.failed(first.error)
            if self.req.stream:
                return self.stream(ticket, first)
            results = await self.collect(ticket, first)
        except BaseException:
            self.engine.scheduler.cancel(ticket)
            raise
        if isinstance(results, JSONResponse):
            return results
        response = InvocationResponse(
            outputs=[output_of(r) for r in results],
            adapter=self.req.adapter,
            latency_ms=self.log_done(results),
        )
        return JSONResponse(content=response.model_dump(), headers={"X-Request-Id": self.request_id})

    async def submit(self) -> Ticket | JSONResponse:
        """Queue the request (validation, adapter download and tokenisation on a worker thread)."""
        req = self.req
        try:
            return await run_in_threadpool(
                self.engine.submit,
                req.inputs,
                req.adapter,
                req.parameters,
                deadline_s=req.deadline_s,
                stream=req.stream,
                notify=self.notify,
            )
        except ServeError as exc:
            return self.failed(exc)
        except Exception as exc:
            log_event(
                "invocation_error",
                logging.ERROR,
                exc_info=True,
                request_id=self.request_id,
                adapter=req.adapter,
            )
            return self.error(500, "internal_error", f"{type(exc).__name__}: {exc}")

    async def next_event(self, ticket: Ticket) -> Event | None:
        """The next event, or None once the client has gone (the request is then cancelled)."""
        while True:
            try:
                return await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await self.request.is_disconnected():
                    self.engine.scheduler.cancel(ticket)
                    return None

    async def collect(self, ticket: Ticket, first: Event) -> list[Generation] | JSONResponse:
        """Every input's generation, in input order; or the error response that ended the request."""
        results: dict[int, Generation] = {}
        event: Event | None = first
        while True:
            if event is None:
                return self.gone()
            if isinstance(event, ErrorEvent):
                return self.failed(event.error)
            if isinstance(event, DoneEvent):
                results[event.index] = event.generation
                if len(results) == len(self.req.inputs):
                    return [results[i] for i in range(len(results))]
            event = await self.next_event(ticket)

    def stream(self, ticket: Ticket, first: Event) -> StreamingResponse:
        headers = {"X-Request-Id": self.request_id, **SSE_HEADERS}
        return StreamingResponse(self.sse(ticket, first), media_type="text/event-stream", headers=headers)

    async def sse(self, ticket: Ticket, first: Event) -> AsyncIterator[bytes]:
        """Token events, then a done (or error) event."""
        event: Event | None = first
        try:
            while event is not None:
                if isinstance(event, TokenEvent):
                    yield sse_event({"type": "token", "text": event.text})
                elif isinstance(event, DoneEvent):
                    yield sse_event(self.done_event(event.generation))
                    return
                else:
                    self.failed(event.error)
                    yield sse_event({"type": "error", **event.error.to_dict()})
                    return
                event = await self.next_event(ticket)
        finally:  # the client went away mid-stream (or the server stops): free the slot
            if not ticket.finished:
                self.engine.scheduler.cancel(ticket)

    def done_event(self, generation: Generation) -> dict[str, object]:
        latency_ms = self.log_done([generation])
        output = output_of(generation).model_dump()
        return {"type": "done", "output": output, "adapter_id": self.req.adapter, "latency_ms": latency_ms}
