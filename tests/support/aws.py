"""botocore seams for the AWS tests: per-test event hooks, and AWS answers injected before moto.

A handler registered with :func:`hook` stays until :func:`forget_hooks` (``tests/conftest.py``
calls it after every test), so module-wide clients start each test clean. No moto here: this
module only speaks botocore.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from botocore.awsrequest import AWSResponse

Respond = Callable[[Any], AWSResponse]
ANSWERED = "https://answered-by-test.invalid/"  # a host moto does not serve

_hooks: list[tuple[Any, str, Callable[..., Any]]] = []


def hook(client: Any, event: str, handler: Callable[..., Any], *, first: bool = False) -> None:
    """Register ``handler`` on ``client`` for ``event`` until the test ends."""
    events = client.meta.events
    (events.register_first if first else events.register)(event, handler)
    _hooks.append((client, event, handler))


def forget_hooks() -> None:
    while _hooks:
        client, event, handler = _hooks.pop()
        client.meta.events.unregister(event, handler)


class Body:
    """A raw HTTP body as botocore reads it: streamed once, or read whole."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.closed = False

    def stream(self, **_: Any) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from (chunk for chunk in chunks if chunk)

    def read(self, *_: Any, **__: Any) -> bytes:
        return b"".join(self.stream())

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.closed = True


def aws_response(
    request: Any, status: int, *chunks: bytes, headers: dict[str, str] | None = None
) -> AWSResponse:
    headers = {"x-amzn-RequestId": "test", "Content-Type": "application/x-amz-json-1.1", **(headers or {})}
    return AWSResponse(request.url, status, headers, Body(*chunks))


def aws_error(status: int, code: str, message: str) -> Respond:
    """An AWS JSON-protocol error response."""
    body = json.dumps({"__type": code, "message": message}).encode()
    return lambda request: aws_response(request, status, body, headers={"x-amzn-ErrorType": code})


def aws_ok(body: bytes = b"{}") -> Respond:
    return lambda request: aws_response(request, 200, body)


def inject(
    client: Any, operation: str, responses: Sequence[Respond | None], *, then: Respond | None = None
) -> dict[str, int]:
    """Answer the first attempts of ``operation`` with ``responses``, later ones with ``then``
    (None: pass on to moto). Counts every attempt.

    Registered first, so botocore takes its response over moto's. botocore still runs every
    ``before-send`` handler, so an answered request is pointed at a host moto does not serve:
    moto leaves it alone instead of executing it too.
    """
    seen = {"attempts": 0}

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        index = seen["attempts"]
        seen["attempts"] += 1
        respond = responses[index] if index < len(responses) else then
        if respond is None:
            return None
        response = respond(request)
        request.url = ANSWERED
        return response

    service = client.meta.service_model.service_id.hyphenize()
    hook(client, f"before-send.{service}.{operation}", handler, first=True)
    return seen


def answer(client: Any, operation: str, respond: Respond) -> dict[str, int]:
    """Answer every attempt of ``operation`` with ``respond(request)`` instead of moto."""
    return inject(client, operation, [], then=respond)
