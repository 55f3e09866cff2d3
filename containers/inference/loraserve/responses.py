"""Response bodies: ``{code, message}`` errors, server-sent events, one output."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

from loraserve.generation import Generation
from loraserve.schemas import Output


def error_response(status: int, code: str, message: str, request_id: str | None = None) -> JSONResponse:
    headers = {"X-Request-Id": request_id} if request_id else None
    return JSONResponse(status_code=status, content={"code": code, "message": message}, headers=headers)


def sse_event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def output_of(generation: Generation) -> Output:
    return Output(
        generated_text=generation.generated_text,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        finish_reason=generation.finish_reason,
    )
