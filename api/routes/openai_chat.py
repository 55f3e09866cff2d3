"""OpenAI-compatible ``POST /v1/chat/completions`` and ``POST /v1/completions``.

``model`` is an adapter id: the request goes to the deployment serving it (409
``model_not_deployed`` with the command to deploy it when none does). ``stream: true`` answers
OpenAI's Server-Sent Events: ``data: {chunk}`` events, then ``data: [DONE]``.

Streaming: the stream opens at once (the assistant ``role`` chunk for chat, keep-alive comments
while the model works) and carries the text as the endpoint generates it, one content delta per
piece the inference server streams, then a final chunk per choice with its ``finish_reason`` and,
with ``stream_options.include_usage``, a usage chunk, then ``[DONE]``. With ``n > 1`` (or, for
``/v1/completions``, a list of prompts) the choices are generated in one endpoint call and each
choice's whole text is one content delta, in the same framing (the inference server streams one
input at a time). Errors found before the stream opens (validation, unknown or undeployed model)
are ordinary HTTP errors; one during generation, including the endpoint refusing the request, is
sent as an ``{"error": {...}}`` event, which the OpenAI clients raise as ``APIError``. A client
that goes away stops the generation on the endpoint.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import APIRouter, Response
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Ctx, Tenant
from api.domain.errors import BadRequest, FastunerError
from api.domain.openai import error_param
from api.domain.openai_chat import (
    MAX_INPUTS,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    finish_reason,
)
from api.errors import openai_error_body, openai_error_responses, openai_status
from api.logging import get_logger
from api.routes.deployments import relay
from api.services.openai_chat import Generated, OpenAIChatService, Prompt, Target

log = get_logger("routes.openai_chat")

router = APIRouter(tags=["openai"], responses=openai_error_responses(401))

_ERRORS = openai_error_responses(400, 404, 409, 413, 429, 502)
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks with stream: true"}
}
PING_SECONDS = 15  # SSE comments while generating, so idle-timeout proxies keep the stream open
DEPLOYMENT_HEADER = "X-Fastuner-Deployment"


def _usage(gen: Generated) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=gen.completion_tokens,
        total_tokens=gen.prompt_tokens + gen.completion_tokens,
    )


def _stream_error(exc: Exception) -> str:
    """The ``{"error": {...}}`` event for an error once the stream is open (the handlers in
    api/errors.py answer those raised before it opens, in the same shape)."""
    if isinstance(exc, FastunerError):
        code = getattr(exc, "openai_code", None) or exc.code
        body = openai_error_body(openai_status(exc.status), code, exc.message, error_param(exc))
    else:
        log.exception("generation failed inside an open stream")
        body = openai_error_body(500, "internal_error", "internal server error; quote the request id")
    return json.dumps(body)


class _Call:
    """One request: the service, the target and the prompts, resolved before any byte is sent."""

    def __init__(self, ctx: Ctx, tenant: str, model: str, id_prefix: str) -> None:
        self.service = OpenAIChatService(ctx.deployments)
        self.tenant = tenant
        self.model = model
        self.created = int(time.time())
        self.id = id_prefix + secrets.token_hex(12)

    def head(self, deployment_id: str | None) -> dict[str, Any]:
        """The fields the response (or every chunk of it) carries besides its choices."""
        return {
            "id": self.id,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": deployment_id,
        }

    async def resolve(self) -> Target:
        return await run_in_threadpool(self.service.resolve, self.tenant, self.model)

    async def generate(self, target: Target, prompts: list[Prompt], req: Any) -> Generated:
        return await run_in_threadpool(
            self.service.generate, self.tenant, self.model, target, prompts, req.n, req.parameters()
        )

    async def stream(self, target: Target, prompt: Prompt, req: Any) -> AsyncIterator[str | Generated]:
        """The text pieces as generated, then the :class:`Generated` (one prompt, one choice)."""
        stream = self.service.generate_stream(self.tenant, self.model, target, prompt, req.parameters())
        async for item in relay(stream):
            yield item


class _Frames(Protocol):
    """How one endpoint frames its stream: a piece of a choice's text, a choice's end, usage."""

    def piece(self, index: int, text: str) -> str: ...

    def last(self, index: int, reason: str) -> str: ...

    def usage(self, gen: Generated) -> str: ...


async def _events(
    call: _Call, target: Target, prompts: list[Prompt], req: Any, frames: _Frames
) -> AsyncIterator[str]:
    """The text as generated (one prompt and one choice: piece by piece; else each choice's whole
    text as one piece), each choice's last chunk, the usage chunk when asked for, ``[DONE]``. An
    error once the stream is open ends it as an error event."""
    try:
        if len(prompts) == 1 and req.n == 1:  # token by token
            async for item in call.stream(target, prompts[0], req):
                if isinstance(item, str):
                    yield frames.piece(0, item)
                else:
                    gen = item
        else:  # several choices in one call
            gen = await call.generate(target, prompts, req)
            for i, c in enumerate(gen.choices):
                if c.generated_text:
                    yield frames.piece(i, c.generated_text)
    except Exception as exc:
        yield _stream_error(exc)
        return
    for i, c in enumerate(gen.choices):
        yield frames.last(i, c.finish_reason)
    if req.include_usage:
        yield frames.usage(gen)
    yield "[DONE]"


def _sse(events: AsyncIterator[str]) -> EventSourceResponse:
    return EventSourceResponse(events, sep="\n", ping=PING_SECONDS)


class _ChatFrames:
    def __init__(self, call: _Call, target: Target) -> None:
        self.head = call.head(target.deployment_id)

    def chunk(self, choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> str:
        chunk = ChatCompletionChunk(**self.head, choices=choices, usage=usage)
        return chunk.model_dump_json(exclude_none=False)

    def role(self, index: int) -> str:
        return self.chunk([ChunkChoice(index=index, delta=ChunkDelta(role="assistant", content=""))])

    def piece(self, index: int, text: str) -> str:
        return self.chunk([ChunkChoice(index=index, delta=ChunkDelta(content=text))])

    def last(self, index: int, reason: str) -> str:
        return self.chunk([ChunkChoice(index=index, delta=ChunkDelta(), finish_reason=finish_reason(reason))])

    def usage(self, gen: Generated) -> str:
        return self.chunk([], usage=_usage(gen))


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={**_SSE_DOC, **_ERRORS},
    summary="Chat completion with an adapter (OpenAI-compatible)",
)
async def chat_completions(
    req: ChatCompletionRequest, ctx: Ctx, tenant: Tenant, response: Response
) -> ChatCompletion | EventSourceResponse:
    """OpenAI's ``chat.completions.create``: ``model`` = an adapter id served by a deployment."""
    call = _Call(ctx, tenant, req.model, "chatcmpl-")
    conversation = req.conversation()
    req.parameters()  # refuse unsupported parameters before anything runs
    target = await call.resolve()
    if not req.stream:
        gen = await call.generate(target, [conversation], req)
        response.headers[DEPLOYMENT_HEADER] = gen.deployment_id
        choices = [_chat_choice(i, c.generated_text, c.finish_reason) for i, c in enumerate(gen.choices)]
        return ChatCompletion(**call.head(gen.deployment_id), choices=choices, usage=_usage(gen))
    frames = _ChatFrames(call, target)

    async def events() -> AsyncIterator[str]:
        for i in range(req.n):
            yield frames.role(i)
        async for event in _events(call, target, [conversation], req, frames):
            yield event

    return _sse(events())


def _chat_choice(index: int, text: str, reason: str) -> ChatChoice:
    message = AssistantMessage(content=text)
    return ChatChoice(index=index, message=message, finish_reason=finish_reason(reason))


class _CompletionFrames:
    def __init__(self, call: _Call, target: Target) -> None:
        self.head = call.head(target.deployment_id)

    def chunk(self, choices: list[CompletionChoice], usage: CompletionUsage | None = None) -> str:
        return Completion(**self.head, choices=choices, usage=usage).model_dump_json()

    def piece(self, index: int, text: str) -> str:
        return self.chunk([CompletionChoice(index=index, text=text, finish_reason=None)])

    def last(self, index: int, reason: str) -> str:
        return self.chunk([CompletionChoice(index=index, text="", finish_reason=finish_reason(reason))])

    def usage(self, gen: Generated) -> str:
        return self.chunk([], usage=_usage(gen))


@router.post(
    "/completions",
    response_model=Completion,
    responses={**_SSE_DOC, **_ERRORS},
    summary="Text completion with an adapter (OpenAI-compatible, legacy)",
)
async def completions(
    req: CompletionRequest, ctx: Ctx, tenant: Tenant, response: Response
) -> Completion | EventSourceResponse:
    """OpenAI's ``completions.create``: ``prompt`` a string or a list of strings (``n`` choices each)."""
    call = _Call(ctx, tenant, req.model, "cmpl-")
    prompts: list[Prompt] = list(req.prompts())
    req.parameters()
    if len(prompts) * req.n > MAX_INPUTS:
        message = f"{len(prompts)} prompts × n={req.n} is over {MAX_INPUTS} generations in one request"
        raise BadRequest(message, details={"param": "prompt"})
    target = await call.resolve()
    if not req.stream:
        gen = await call.generate(target, prompts, req)
        response.headers[DEPLOYMENT_HEADER] = gen.deployment_id
        choices = [
            CompletionChoice(index=i, text=c.generated_text, finish_reason=finish_reason(c.finish_reason))
            for i, c in enumerate(gen.choices)
        ]
        return Completion(**call.head(gen.deployment_id), choices=choices, usage=_usage(gen))
    return _sse(_events(call, target, prompts, req, _CompletionFrames(call, target)))
