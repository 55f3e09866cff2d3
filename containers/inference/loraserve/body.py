"""The ``POST /invocations`` body: bounded-depth JSON, then the validated request or a 4xx answer."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from loraserve.logs import log_event
from loraserve.responses import error_response
from loraserve.schemas import InvocationRequest, describe_validation_error

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


def parse_invocation(raw: bytes, request_id: str) -> InvocationRequest | JSONResponse:
    """The validated request, or the 400/422 response that refuses it."""
    try:
        payload = loads_request(raw)
    except RequestTooDeep as exc:
        return error_response(400, "invalid_json", f"the request body is not accepted: {exc}", request_id)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return error_response(400, "invalid_json", f"the request body is not valid JSON: {exc}", request_id)
    if not isinstance(payload, dict):
        return error_response(400, "invalid_request", "the request body must be a JSON object", request_id)
    try:
        req = InvocationRequest.model_validate(payload)
    except ValidationError as exc:
        message = describe_validation_error(exc)
        log_event("invocation_rejected", request_id=request_id, code="invalid_request", error=message)
        return error_response(422, "invalid_request", message, request_id)
    if req.stream and len(req.inputs) != 1:
        return error_response(400, "bad_request", "stream: true takes a single input", request_id)
    return req
