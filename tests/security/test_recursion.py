"""Issue 12, item 8: deeply nested user JSON never escapes as RecursionError.

* a batch-inference line of 10^5 nested brackets gets its own ``invalid_line`` error and the lines
  after it still run (it used to end the stream with HTTP 200, an empty body and a traceback);
* a drop sidecar nested 10^5 deep is ``rejected`` at once (it used to be retried as ``pending``);
* a hyperparameter value nested that deep is a 422 at ``POST /v0/finetune``, not a 500;
* the inference server answers such a body with 400 ``invalid_json``.
On SQLite and PostgreSQL where a database is involved.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.domain import userjson
from api.domain.deployments import InferenceResponse, parse_batch_line
from api.services.drops import sidecar
from api.settings import Settings
from tests.api.support import authorize, rows, upload, write_jsonl
from tests.drops.conftest import MakeWorld, make_world  # noqa: F401  (the fixture)
from tests.drops.support import SMOL, drop, jsonl, ledger, status_of
from tests.drops.support import rows as drop_rows

DEEP = 100_000


def deep_list(n: int = DEEP) -> str:
    return "[" * n + "]" * n


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path / "home", database_url=db_url, log_json=False, background_tasks=False)
    with authorize(TestClient(create_app(settings), raise_server_exceptions=False)) as c:
        yield c


# -- the helper -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [deep_list(), "[" * DEEP, '{"a":' * DEEP + "1" + "}" * DEEP, deep_list(65)])
def test_loads_refuses_deep_documents_with_a_value_error(text: str) -> None:
    with pytest.raises(userjson.JSONDepthError, match="nested deeper than 64"):
        userjson.loads(text)


def test_loads_accepts_ordinary_documents() -> None:
    assert userjson.loads(deep_list(64)) is not None
    assert (
        userjson.loads('{"messages": [{"role": "user", "content": "hi"}]}')["messages"][0]["content"] == "hi"
    )
    with pytest.raises(json.JSONDecodeError):
        userjson.loads("{not json")


def test_batch_line_parser() -> None:
    with pytest.raises(ValueError, match="nested deeper"):
        parse_batch_line(deep_list())
    assert parse_batch_line("not json, a prompt") == "not json, a prompt"
    assert parse_batch_line('{"input": "x"}') == "x"


# -- batch inference over HTTP ----------------------------------------------------------------


def _answer(text: str) -> InferenceResponse:
    """What a deployment answers for one input (the fakes of ``DeploymentService.infer`` below)."""
    output = {"generated_text": text, "prompt_tokens": 1, "completion_tokens": 1, "finish_reason": "stop"}
    return InferenceResponse.model_validate(
        {"outputs": [output], "adapter_id": "adp_x", "deployment_id": "dep_x", "latency_ms": 1.0}
    )


def _fake_deployment(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, answer: Callable[[Any], str]
) -> list[Any]:
    """Every target resolves and ``infer`` answers ``answer(inputs)``; returns the inputs seen."""
    service = client.app.state.ctx.deployments  # type: ignore[attr-defined]
    seen: list[Any] = []

    def infer(tenant: str, req: Any) -> InferenceResponse:
        seen.append(req.inputs)
        return _answer(answer(req.inputs))

    monkeypatch.setattr(service, "resolve_target", lambda *a: None)
    monkeypatch.setattr(service, "infer", infer)
    return seen


def test_a_deep_batch_line_is_its_own_error_and_later_lines_run(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _fake_deployment(client, monkeypatch, lambda inputs: f"echo {inputs}")
    body = ("first\n" + deep_list() + "\n" + json.dumps({"input": "third"}) + "\n").encode()
    resp = client.post(
        "/v0/inference/batch", data={"adapter_id": "adp_x", "raw": "true"}, files={"file": ("b.jsonl", body)}
    )
    assert resp.status_code == 200, resp.text
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert [r["line"] for r in lines] == [1, 2, 3]
    assert lines[0]["generated_text"] == "echo first" and lines[2]["generated_text"] == "echo third"
    assert lines[1]["error"]["code"] == "invalid_line" and "nested deeper" in lines[1]["error"]["message"]
    assert seen == ["first", "third"]


def test_an_unexpected_error_on_one_line_does_not_end_the_stream(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def answer(inputs: Any) -> str:
        if inputs == "boom":
            raise RecursionError("somewhere deep")
        return "ok"

    _fake_deployment(client, monkeypatch, answer)
    resp = client.post(
        "/v0/inference/batch",
        data={"adapter_id": "adp_x", "raw": "true"},
        files={"file": ("b.jsonl", b"boom\nfine\n")},
    )
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert lines[0]["error"]["code"] == "internal_error" and lines[1]["generated_text"] == "ok"


def test_batch_prompt_strings_go_as_a_user_turn_unless_raw(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``fastuner inference batch``: the format every pair/chat record was trained in."""
    seen = _fake_deployment(client, monkeypatch, lambda inputs: "ok")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    body = (
        "plain\n" + json.dumps({"input": "keyed"}) + "\n" + json.dumps({"messages": chat}) + "\n"
    ).encode()
    for raw, want in (
        (None, [[{"role": "user", "content": "plain"}], [{"role": "user", "content": "keyed"}], chat]),
        ("false", [[{"role": "user", "content": "plain"}], [{"role": "user", "content": "keyed"}], chat]),
        ("true", ["plain", "keyed", chat]),
    ):
        seen.clear()
        data = {"adapter_id": "adp_x"} | ({"raw": raw} if raw else {})
        resp = client.post("/v0/inference/batch", data=data, files={"file": ("b.jsonl", body)})
        lines = [json.loads(line) for line in resp.text.splitlines()]
        assert seen == want, raw
        assert [r["input"] for r in lines] == want  # each result says what was sent
    bad = client.post(
        "/v0/inference/batch", data={"adapter_id": "adp_x", "raw": "maybe"}, files={"file": ("b", body)}
    )
    yes = client.post(
        "/v0/inference/batch", data={"adapter_id": "adp_x", "raw": "yes"}, files={"file": ("b", body)}
    )
    assert yes.status_code == 200 and seen[-3:] == ["plain", "keyed", chat]  # as a console Form() bool
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request" and "raw" in bad.json()["message"]


# -- hyperparameters --------------------------------------------------------------------------


def test_deep_hyperparameter_values_are_a_422(client: TestClient, tmp_path: Path) -> None:
    ds = upload(client, write_jsonl(tmp_path / "d.jsonl", rows())).json()
    # Deep enough to exhaust the recursion limit, short enough for the 4096-character cap on values
    # (longer ones are refused as such, also with a 422).
    for value in (deep_list(2000), "[" * 4000, deep_list(9)):
        resp = client.post(
            "/v0/finetune",
            json={
                "dataset_id": ds["id"],
                "base_model": SMOL,
                "dry_run": True,
                "hyperparameters": {"target_modules": value},
            },
        )
        assert resp.status_code == 422, resp.text
        assert "nested deeper" in resp.json()["message"]


@pytest.mark.parametrize("depth", [100, 600, 950, DEEP])
def test_a_deep_request_body_is_a_client_error(client: TestClient, depth: int) -> None:
    """Below the parser's recursion limit the validators used to recurse into the body and fail with
    a 500 (600-950 levels); beyond it FastAPI's parser refuses the body."""
    bodies = {
        "/v0/finetune": '{"dataset_id": "ds_xxxx", "base_model": "x", "hyperparameters": {"a": %s}}',
        "/v0/deployments": '{"adapter_ids": %s}',
    }
    for url, body in bodies.items():
        resp = client.post(url, content=body % deep_list(depth), headers={"Content-Type": "application/json"})
        assert resp.status_code in (400, 422), (url, depth, resp.text)
        if depth < 900:
            assert "nested deeper than 64" in resp.json()["message"]


# -- drop sidecars ----------------------------------------------------------------------------


def test_sidecar_parser_refuses_deep_nesting() -> None:
    with pytest.raises(sidecar.SidecarError, match="nested deeper"):
        sidecar.parse(('{"job": {"hyperparameters": ' + deep_list() + "}}").encode())
    with pytest.raises(sidecar.SidecarError, match="nested deeper"):
        sidecar.parse(deep_list().encode())


def test_a_deep_sidecar_is_rejected_at_once(make_world: MakeWorld, db_url: str) -> None:  # noqa: F811
    world = make_world(db_url)
    key = drop(world.store, "deep", jsonl(drop_rows()), sidecar=deep_list().encode())
    outcomes = world.ctx.drops.scan_once()
    assert [o.action for o in outcomes] == ["rejected"]
    status = status_of(world.store, key)
    assert status["state"] == "rejected" and "nested deeper" in status["message"]
    assert [row.status for row in ledger(world.ctx)] == ["rejected"]
    assert world.backend.started == []


# -- the inference server ---------------------------------------------------------------------


def test_inference_server_refuses_deep_bodies(tmp_path: Path) -> None:
    from loraserve.app import create_app as create_server
    from loraserve.app import loads_request
    from loraserve.config import ServerConfig
    from loraserve.engine import Engine

    engine = Engine(ServerConfig(base_model=str(tmp_path / "no-model"), cache_dir=tmp_path))
    client = TestClient(create_server(engine=engine))  # no lifespan: the model is never loaded
    for body in (deep_list(), '{"inputs": "x", "parameters": ' + deep_list(100) + "}"):
        resp = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400 and resp.json()["code"] == "invalid_json", resp.text
        assert "nested deeper" in resp.json()["message"]
    assert loads_request(b'{"inputs": [[1]]}') == {"inputs": [[1]]}
