"""Token streaming on the control plane: the endpoint backends' ``invoke_stream`` (local HTTP,
SageMaker's ``InvokeEndpointWithResponseStream``), ``POST /v0/inference`` with ``stream: true``
and the SDK/CLI on top of it.

The inference server side is faked here with the fixed wire contract (``data: <json>\\n\\n``
events ``token`` / ``done`` / ``error``); the test against a real local deployment is at the end.
"""

from __future__ import annotations

import asyncio
import binascii
import itertools
import json
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import httpx
import pytest
from botocore.awsrequest import AWSResponse

from api.backends.endpoints import InvocationError, StreamingEndpointBackend, parse_sse_events
from api.backends.sagemaker_components import SageMakerComponents
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
        {
            ":message-type": "exception",
            ":exception-type": "ModelStreamError",
            ":content-type": "application/json",
        },
        body,
    )


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

    def __init__(self, backend_class: type[SageMakerEndpoints] = SageMakerEndpoints) -> None:
        self.runtime = boto3.client("sagemaker-runtime", region_name="us-east-1", config=RUNTIME_CONFIG)
        self.backend = backend_class(
            None,  # type: ignore[arg-type]  # (the store is not used by invocations)
            image_uri="img",
            role_arn="arn:aws:iam::123456789012:role/r",
            region="us-east-1",
            runtime_client=self.runtime,
            sagemaker_client=boto3.client("sagemaker", region_name="us-east-1"),
        )
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


def test_sagemaker_components_stream_to_the_adapters_component() -> None:
    sm = SageMakerStream(SageMakerComponents)
    state = {"mode": "components", "base_component": "ic-base", "adapter_components": {"adp_x": "ic-x"}}
    for adapter, component in (("adp_x", b"ic-x"), (None, b"ic-base")):
        sm.answer_frames([payload_part(sse_bytes(contract_events()))])
        events = list(sm.backend.invoke_stream("fastuner-dep-x", state, {"inputs": "hi", "adapter": adapter}))
        assert events == contract_events()
        assert sm.requests[-1][1]["X-Amzn-SageMaker-Inference-Component"] == component


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


# -- a fake inference server (the fixed contract) behind the local endpoint backend ---------------
class FakeServer:
    """``/invocations`` as the inference server answers it. The adapter picks the behaviour:
    ``adp_x`` streams PIECES; ``adp_slow`` streams a token every 50 ms for 10 s (and records
    whether the client went away); ``adp_fail`` streams one token, then an error event;
    ``adp_missing`` is a 404, ``adp_busy`` a 429, before any generation."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.cancelled = threading.Event()
        self.url = ""

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        async def invocations(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            adapter = body.get("adapter")
            if adapter == "adp_missing":
                return JSONResponse({"code": "adapter_not_found", "message": "no adapter adp_missing"}, 404)
            if adapter == "adp_busy":
                return JSONResponse({"code": "queue_full", "message": "queue full"}, 429)
            if not body.get("stream"):
                inputs = body["inputs"]
                one = isinstance(inputs, str) or all(isinstance(m, dict) for m in inputs)
                outputs = [OUTPUT] * (1 if one else len(inputs))
                return JSONResponse({"outputs": outputs, "adapter_id": adapter, "latency_ms": 1.0})

            async def events() -> AsyncIterator[bytes]:
                if adapter == "adp_slow":
                    try:
                        for i in range(200):
                            yield sse_bytes([{"type": "token", "text": f"t{i} "}])
                            await asyncio.sleep(0.05)
                    except BaseException:
                        self.cancelled.set()
                        raise
                    return
                if adapter == "adp_fail":
                    yield sse_bytes([{"type": "token", "text": "HEL"}])
                    yield sse_bytes([{"type": "error", "code": "generation_failed", "message": "CUDA OOM"}])
                    return
                for event in contract_events():
                    yield sse_bytes([event])
                    await asyncio.sleep(0.01)

            return StreamingResponse(events(), media_type="text/event-stream")

        return Starlette(routes=[Route("/invocations", invocations, methods=["POST"])])


def serve(app: Any) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server failed to start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeServer]:
    fake = FakeServer()
    for url in serve(fake.app()):
        fake.url = url
        yield fake


@dataclass
class Api:
    url: str
    app: Any
    http: httpx.Client
    deployment_id: str

    def last_used_at(self) -> Any:
        return self.http.get(f"/v0/deployments/{self.deployment_id}").json()["last_used_at"]


ADAPTERS = ["adp_x", "adp_slow", "adp_fail", "adp_missing", "adp_busy"]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, fake_server: FakeServer) -> Iterator[Api]:
    """The real app (local endpoint backend) with one in-service deployment whose endpoint is
    the fake server."""
    from api.app import create_app
    from api.db import models
    from api.settings import Settings

    home = tmp_path_factory.mktemp("streaming") / "home"
    app = create_app(Settings(home=home, log_json=False, log_level="WARNING", rate_limit=""))
    ctx = app.state.ctx
    key = ctx.auth.create_key("t-stream", "test").secret
    with ctx.db.session() as s:
        s.add(
            models.DeploymentRow(
                id="dep_stream",
                tenant_id="t-stream",
                adapter_ids=ADAPTERS,
                base_model="tiny",
                backend="local",
                endpoint_name="fastuner-dep-stream",
                instance_type="local",
                status="in_service",
                ttl_seconds=600,
                in_service_at=datetime.now(UTC),
                backend_state={"url": fake_server.url, "root": str(home / "ep")},
            )
        )
    for url in serve(app):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            yield Api(url, app, http, "dep_stream")


def read_sse(resp: httpx.Response) -> list[tuple[str, Any]]:
    from fastuner_sdk._sse import iter_sse

    return [(e.event, json.loads(e.data)) for e in iter_sse(resp.iter_lines())]


def test_v0_inference_streams_tokens_then_done(api: Api, fake_server: FakeServer) -> None:
    before = api.last_used_at()
    body = {"deployment_id": api.deployment_id, "adapter_id": "adp_x", "inputs": "hi", "stream": True}
    with api.http.stream("POST", "/v0/inference", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = read_sse(resp)
    assert events[:-1] == [("token", {"text": p}) for p in PIECES]
    kind, done = events[-1]
    assert kind == "done"
    assert done["deployment_id"] == api.deployment_id and done["adapter_id"] == "adp_x"
    assert done["outputs"] == [OUTPUT] and done["latency_ms"] > 0
    assert "".join(p for _, e in events[:-1] for p in [e["text"]]) == done["outputs"][0]["generated_text"]
    assert fake_server.bodies[-1] == {
        "inputs": "hi",
        "adapter": "adp_x",
        "stream": True,
        "parameters": {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "stop": []},
    }
    assert api.last_used_at() != before  # the idle clock was reset (the TTL janitor reads it)


def test_v0_inference_without_stream_is_unchanged(api: Api) -> None:
    resp = api.http.post("/v0/inference", json={"deployment_id": api.deployment_id, "inputs": "hi"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"] == [OUTPUT]


@pytest.mark.parametrize(
    ("adapter", "status", "code"),
    [
        ("adp_missing", 404, "not_found"),
        ("adp_busy", 503, "endpoint_busy"),
        ("adp_other", 400, "bad_request"),
    ],
)
def test_refusals_before_generation_are_http_errors(api: Api, adapter: str, status: int, code: str) -> None:
    body = {"deployment_id": api.deployment_id, "adapter_id": adapter, "inputs": "hi", "stream": True}
    resp = api.http.post("/v0/inference", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code and resp.json()["request_id"]


def test_stream_takes_one_prompt(api: Api) -> None:
    body = {"deployment_id": api.deployment_id, "inputs": ["a", "b"], "stream": True}
    resp = api.http.post("/v0/inference", json=body)
    assert resp.status_code == 422 and "one prompt" in resp.text
    one_chat = {**body, "inputs": [{"role": "user", "content": "hi"}], "adapter_id": "adp_x"}
    assert api.http.post("/v0/inference", json=one_chat).status_code == 200


def test_an_error_during_generation_is_an_error_event(api: Api) -> None:
    body = {"deployment_id": api.deployment_id, "adapter_id": "adp_fail", "inputs": "hi", "stream": True}
    with api.http.stream("POST", "/v0/inference", json=body) as resp:
        assert resp.status_code == 200
        events = read_sse(resp)
        request_id = resp.headers.get("x-request-id")
    assert events[0] == ("token", {"text": "HEL"})
    kind, error = events[1]
    assert kind == "error" and len(events) == 2
    assert error["code"] == "backend_error" and "CUDA OOM" in error["message"]
    assert error["request_id"] and error["request_id"] == request_id


def test_a_client_going_away_closes_the_endpoints_stream(api: Api, fake_server: FakeServer) -> None:
    fake_server.cancelled.clear()
    body = {"deployment_id": api.deployment_id, "adapter_id": "adp_slow", "inputs": "hi", "stream": True}
    with api.http.stream("POST", "/v0/inference", json=body) as resp:
        lines = resp.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # generation is under way
    # the client closed its connection: the API closes its upstream, the server sees it go away
    assert fake_server.cancelled.wait(10), "the endpoint's stream was not closed"


def test_tenancy_another_tenants_deployment_is_404(api: Api) -> None:
    other = api.app.state.ctx.auth.create_key("t-other", "test").secret
    body = {"deployment_id": api.deployment_id, "adapter_id": "adp_x", "inputs": "hi", "stream": True}
    resp = httpx.post(f"{api.url}/v0/inference", json=body, headers={"Authorization": f"Bearer {other}"})
    assert resp.status_code == 404


# -- /v1 (OpenAI-compatible) streams the endpoint's pieces as content deltas ----------------------
def v1_events(api: Api, path: str, body: dict[str, Any]) -> list[Any]:
    with api.http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200, resp.read()
        raw = resp.read().decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.strip() and not e.startswith(":")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_v1_chat_stream_carries_the_endpoints_pieces(api: Api, fake_server: FakeServer) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = v1_events(api, "/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert deltas == PIECES
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert fake_server.bodies[-1]["stream"] is True
    assert fake_server.bodies[-1]["inputs"] == [[{"role": "user", "content": "hi"}]]


def test_v1_chat_stream_with_n_2_sends_whole_choices(api: Api) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True, "n": 2}
    chunks = v1_events(api, "/v1/chat/completions", body)
    content = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [(c["index"], c["delta"]["content"]) for c in content] == [(0, "HELLO WORLD"), (1, "HELLO WORLD")]


def test_v1_completions_stream_carries_the_endpoints_pieces(api: Api) -> None:
    body = {"model": "tiny", "prompt": "hi", "stream": True}
    chunks = v1_events(api, "/v1/completions", body)
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == PIECES
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    two = v1_events(api, "/v1/completions", {**body, "prompt": ["a", "b"]})
    assert [c["choices"][0]["text"] for c in two[:2]] == ["HELLO WORLD", "HELLO WORLD"]
