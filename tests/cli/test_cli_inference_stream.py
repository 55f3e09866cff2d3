"""`fastuner inference run|batch`: streaming, what a prompt is sent as, and the SDK's ``infer_stream``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from api.domain.deployments import InferenceRequest, InferenceResponse
from cli.client import FastunerClient
from cli.main import cli
from cli.state import State
from fastuner_sdk import NotFoundError, StreamError

DONE = {
    "deployment_id": "dep_1",
    "adapter_id": "adp_1",
    "latency_ms": 41.7,
    "outputs": [
        {"generated_text": "HELLO WORLD", "prompt_tokens": 3, "completion_tokens": 4, "finish_reason": "stop"}
    ],
}


def sse(events: list[tuple[str, dict[str, Any]]]) -> str:
    return ": ping\n\n" + "".join(f"event: {n}\ndata: {json.dumps(d)}\n\n" for n, d in events)


TOKENS = [("token", {"text": t}) for t in ["HEL", "LO", " WOR", "LD"]]


class FakeApi:
    def __init__(self, events: list[tuple[str, dict[str, Any]]], status: int = 200) -> None:
        self.events, self.status = events, status
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v0/inference"
        self.bodies.append(json.loads(request.content))
        if self.status != 200:
            body = {"code": "not_found", "message": "adapter adp_9 not found", "request_id": "r1"}
            return httpx.Response(self.status, json=body)
        return httpx.Response(200, text=sse(self.events), headers={"content-type": "text/event-stream"})


def client_for(api: FakeApi) -> FastunerClient:
    return FastunerClient(httpx.Client(transport=httpx.MockTransport(api), base_url="http://api"))


def test_sdk_infer_stream_yields_pieces_then_the_response() -> None:
    api = FakeApi([*TOKENS, ("done", DONE)])
    items = list(client_for(api).infer_stream(InferenceRequest(adapter_id="adp_1", inputs="hello world")))
    assert items[:-1] == ["HEL", "LO", " WOR", "LD"]
    assert isinstance(items[-1], InferenceResponse) and items[-1].outputs[0].generated_text == "HELLO WORLD"
    assert api.bodies[0]["stream"] is True and api.bodies[0]["inputs"] == "hello world"


def test_sdk_infer_stream_errors() -> None:
    failing = FakeApi([TOKENS[0], ("error", {"code": "backend_error", "message": "OOM", "request_id": "r2"})])
    stream = client_for(failing).infer_stream(InferenceRequest(adapter_id="adp_1", inputs="x"))
    assert next(stream) == "HEL"
    with pytest.raises(StreamError) as err:
        next(stream)
    assert (err.value.code, err.value.message, err.value.request_id) == ("backend_error", "OOM", "r2")
    with pytest.raises(StreamError, match="ended before"):
        list(client_for(FakeApi(TOKENS)).infer_stream(InferenceRequest(adapter_id="adp_1", inputs="x")))
    with pytest.raises(NotFoundError):
        list(client_for(FakeApi([], 404)).infer_stream(InferenceRequest(adapter_id="adp_9", inputs="x")))


def test_sdk_infer_does_not_send_stream() -> None:
    api = FakeApi([])

    def answer(request: httpx.Request) -> httpx.Response:
        api.bodies.append(json.loads(request.content))
        return httpx.Response(200, json=DONE)

    client = FastunerClient(httpx.Client(transport=httpx.MockTransport(answer), base_url="http://api"))
    client.infer(InferenceRequest(adapter_id="adp_1", inputs="x"))
    assert "stream" not in api.bodies[0]


def install(monkeypatch: pytest.MonkeyPatch, api: FakeApi) -> None:
    client = client_for(api)
    monkeypatch.setattr(State, "client", lambda self: client)
    monkeypatch.setenv("COLUMNS", "200")


def test_cli_stream_prints_tokens_then_a_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi([*TOKENS, ("done", DONE)])
    install(monkeypatch, api)
    res = CliRunner().invoke(cli, ["inference", "run", "--adapter", "adp_1", "--input", "hello", "--stream"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("HELLO WORLD\n")
    assert "3+4 tokens" in res.output and "42 ms" in res.output and "dep_1" in res.output
    assert api.bodies[0]["stream"] is True


def test_cli_stream_json_is_one_object_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeApi([*TOKENS, ("done", DONE)]))
    res = CliRunner().invoke(
        cli, ["inference", "run", "--adapter", "adp_1", "--input", "x", "--stream", "--json"]
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.output.splitlines()]
    assert [line["token"] for line in lines[:-1]] == ["HEL", "LO", " WOR", "LD"]
    assert lines[-1]["response"]["outputs"][0]["generated_text"] == "HELLO WORLD"


def test_cli_stream_error_exits_nonzero(monkeypatch: pytest.MonkeyPatch) -> None:
    error = ("error", {"code": "backend_error", "message": "CUDA OOM", "request_id": "r2"})
    install(monkeypatch, FakeApi([TOKENS[0], error]))
    res = CliRunner().invoke(cli, ["inference", "run", "--adapter", "adp_1", "--input", "x", "--stream"])
    assert res.exit_code != 0
    assert "HEL" in res.output and "CUDA OOM" in res.output


def test_prompts_go_as_a_user_turn_unless_raw(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Adapters learn replies after a chat-rendered prompt, so the CLI sends a prompt as a user turn."""
    api = FakeApi([*TOKENS, ("done", DONE)])
    install(monkeypatch, api)
    run = ["inference", "run", "--adapter", "adp_1", "--input", "Shout: hi", "--stream"]
    assert CliRunner().invoke(cli, run).exit_code == 0
    assert CliRunner().invoke(cli, [*run, "--raw"]).exit_code == 0
    assert [b["inputs"] for b in api.bodies] == [[{"role": "user", "content": "Shout: hi"}], "Shout: hi"]

    sent: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content)["inputs"])
        return httpx.Response(200, json=DONE)

    client = FastunerClient(httpx.Client(transport=httpx.MockTransport(answer), base_url="http://api"))
    monkeypatch.setattr(State, "client", lambda self: client)
    prompts = tmp_path / "prompts.jsonl"
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    prompts.write_text(f'{{"input": "a"}}\nplain b\n{json.dumps({"messages": chat})}\n')
    batch = ["inference", "batch", str(prompts), "-o", str(tmp_path / "out.jsonl"), "--adapter", "adp_1"]
    assert CliRunner().invoke(cli, batch).exit_code == 0
    assert CliRunner().invoke(cli, [*batch, "--raw"]).exit_code == 0
    turn = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "plain b"}], chat]
    assert sent == [*turn, "a", "plain b", chat]
