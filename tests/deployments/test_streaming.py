"""Token streaming on the control plane: the endpoint backends' ``invoke_stream`` (local HTTP,
SageMaker's ``InvokeEndpointWithResponseStream``), ``POST /v0/inference`` with ``stream: true``
and the SDK/CLI on top of it.

The inference server side is faked here with the fixed wire contract (``data: <json>\\n\\n``
events ``token`` / ``done`` / ``error``); the test against a real local deployment is at the end.
"""

from __future__ import annotations

import binascii
import itertools
import json
import struct
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from api.backends.endpoints import InvocationError, StreamingEndpointBackend, parse_sse_events
from api.backends.sagemaker_endpoints import RUNTIME_CONFIG, SageMakerEndpoints
from api.domain.errors import BackendError

OUTPUT = {
    "generated_text": "HELLO WORLD",
    "prompt_tokens": 3,
    "completion_tokens": 4,
    "finish_reason": "stop",
}
PIECES = ["HEL", "LO", " WOR", "LD"]


def contract_events(pieces: list[str] = PIECES, output: dict[str, Any] = OUTPUT) -> list[dict[str, Any]]:
    """What the inference server streams for one request (the fixed contract)."""
    tokens: list[dict[str, Any]] = [{"type": "token", "text": p} for p in pieces]
    done = {"type": "done", "output": output, "adapter_id": "adp_x", "latency_ms": 12.5}
    return [*tokens, done]


def sse_bytes(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


# -- the SSE parser ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_events_parse_whatever_the_chunk_boundaries(size: int) -> None:
    raw = sse_bytes(contract_events()).replace(b"\n\n", b"\r\n\r\n", 1) + b": ping\n\n"
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    assert list(parse_sse_events(chunks)) == contract_events()


def test_a_non_json_event_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="not a JSON object"):
        list(parse_sse_events([b"data: [1]\n\n"]))


def test_a_partial_event_at_the_end_is_dropped() -> None:
    assert list(parse_sse_events([b'data: {"type": "token", "text": "a"}\n\ndata: {"ty'])) == [
        {"type": "token", "text": "a"}
    ]


# -- SageMaker: InvokeEndpointWithResponseStream ------------------------------------------------
# botocore's Stubber cannot build an event-stream response (it validates ``Body`` as a plain
# structure), so the test answers the HTTP request itself with real ``application/vnd.amazon.
# eventstream`` frames in a ``before-send`` hook: botocore signs and serialises the real request
# and parses the real binary frames, error events included.
def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return struct.pack("B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v


def eventstream_frame(headers: dict[str, str], payload: bytes) -> bytes:
    head = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + head + payload
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


def payload_part(data: bytes) -> bytes:
    return eventstream_frame(
        {":message-type": "event", ":event-type": "PayloadPart", ":content-type": "application/octet-stream"},
        data,
    )


def model_stream_error(message: str) -> bytes:
    body = json.dumps({"Message": message, "ErrorCode": "ModelStreamError"}).encode()
    return eventstream_frame(
        {":message-type": "exception", ":exception-type": "ModelStreamError",
         ":content-type": "application/json"},
        body,
    )  # fmt: skip


class _Raw:
    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.closed = False

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield from self.frames

    def read(self, *_: Any, **__: Any) -> bytes:
        return b"".join(self.frames)

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.closed = True


class SageMakerStream:
    """A SageMaker backend whose runtime client answers InvokeEndpointWithResponseStream here."""

    def __init__(self) -> None:
        self.runtime = boto3.client("sagemaker-runtime", region_name="us-east-1", config=RUNTIME_CONFIG)
        self.backend = SageMakerEndpoints(
            None,  # type: ignore[arg-type]  # (the store is not used by invocations)
            image_uri="img", role_arn="arn:aws:iam::123456789012:role/r", region="us-east-1",
            runtime_client=self.runtime, sagemaker_client=boto3.client("sagemaker", region_name="us-east-1"),
        )  # fmt: skip
        self.requests: list[Any] = []
        self.raw: _Raw | None = None
        self.respond: Any = None
        self.runtime.meta.events.register_first(
            "before-send.sagemaker-runtime.InvokeEndpointWithResponseStream", self._send
        )

    def answer_frames(self, frames: list[bytes]) -> None:
        def respond(request: Any) -> AWSResponse:
            self.raw = _Raw(frames)
            headers = {
                "Content-Type": "application/vnd.amazon.eventstream",
                "X-Amzn-Invoked-Production-Variant": "AllTraffic",
            }
            return AWSResponse(request.url, 200, headers, self.raw)

        self.respond = respond

    def answer_error(self, status: int, code: str, message: str, **extra: Any) -> None:
        def respond(request: Any) -> AWSResponse:
            body = json.dumps({"__type": code, "message": message, **extra}).encode()
            return AWSResponse(request.url, status, {"x-amzn-ErrorType": code}, _Raw([body]))

        self.respond = respond

    def _send(self, request: Any, **_: Any) -> AWSResponse:
        self.requests.append((request.url, dict(request.headers), request.body))
        response: AWSResponse = self.respond(request)
        request.url = "https://answered-by-test.invalid/"
        return response


def test_sagemaker_invoke_stream_reassembles_events_across_payload_parts() -> None:
    sm = SageMakerStream()
    raw = sse_bytes(contract_events())
    cuts = [0, 5, 6, 40, 41, 90, len(raw)]  # parts cut inside "data:", inside JSON, at "\n|\n"
    sm.answer_frames([payload_part(raw[a:b]) for a, b in itertools.pairwise(cuts)])
    assert isinstance(sm.backend, StreamingEndpointBackend)
    events = list(sm.backend.invoke_stream("fastuner-dep-x", {}, {"inputs": "hi", "adapter": "adp_x"}))
    assert events == contract_events()
    [(url, headers, body)] = sm.requests
    assert url.endswith("/endpoints/fastuner-dep-x/invocations-response-stream")
    assert headers["X-Amzn-SageMaker-Accept"] == b"text/event-stream"
    assert json.loads(body) == {"inputs": "hi", "adapter": "adp_x", "stream": True}


def test_sagemaker_stream_error_event_is_a_backend_error() -> None:
    sm = SageMakerStream()
    sm.answer_frames([payload_part(sse_bytes(contract_events()[:1])), model_stream_error("container died")])
    stream = sm.backend.invoke_stream("fastuner-dep-x", {}, {"inputs": "hi"})
    assert next(stream) == contract_events()[0]
    with pytest.raises(BackendError, match="container died"):
        next(stream)


def test_sagemaker_stream_refused_before_generation_maps_like_invoke() -> None:
    sm = SageMakerStream()
    body = json.dumps({"code": "adapter_not_found", "message": "no adapter adp_q"})
    sm.answer_error(
        424, "ModelError", "Received client error (404)", OriginalStatusCode=404, OriginalMessage=body
    )
    with pytest.raises(InvocationError) as refused:
        next(sm.backend.invoke_stream("fastuner-dep-x", {}, {"inputs": "hi"}))
    assert (refused.value.status, refused.value.code) == (404, "adapter_not_found")


def test_sagemaker_closing_the_stream_closes_the_response() -> None:
    sm = SageMakerStream()
    sm.answer_frames([payload_part(sse_bytes(contract_events()))])
    stream = sm.backend.invoke_stream("fastuner-dep-x", {}, {"inputs": "hi"})
    next(stream)
    stream.close()
    assert sm.raw is not None and sm.raw.closed
