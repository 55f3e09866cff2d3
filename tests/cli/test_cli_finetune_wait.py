"""`fastuner finetune wait ID` follows a job on its event stream (no polling) and exits 0 only when
it completed; `finetune start --dataset FILE` uploads the file first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cli.client import FastunerClient
from cli.main import cli
from cli.state import State
from tests.api.support import rows, write_jsonl
from tests.support.api_json import dataset_json, job_json

JOB = "ft_wait0001"


def job(status: str, *, step: int | None = None, reason: str | None = None) -> dict[str, Any]:
    latest = None if step is None else {"step": step, "loss_bpt": 3.5, "s_hat": 0.03, "target_s": 0.03}
    adapter = "adp_1" if status == "completed" else None
    return job_json(JOB, status, latest=latest, failure_reason=reason, adapter_id=adapter)


def sse(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


class FakeApi:
    """A job that is running when first asked, then ends as ``final`` on its event stream."""

    def __init__(self, final: str, reason: str | None = None) -> None:
        self.final, self.reason = final, reason
        self.requests: list[httpx.Request] = []
        self.ended = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.params.get("follow") == "true":
            assert request.url.params["after"] == "2"  # resumes after what the job already showed
            self.ended = True
            points = [
                ("metric", {"step": s, "values": {"loss_bpt": 3.0 - s / 10, "lambda": 1.5}}) for s in (4, 6)
            ]
            final = ("status", {"status": self.final, "adapter_id": None})
            return httpx.Response(200, text=sse([("status", {"status": "running"}), *points, final]))
        if request.url.path == f"/v0/finetune/{JOB}":
            if self.ended:
                return httpx.Response(
                    200, json=job(self.final, reason=self.reason)
                )  # no latest: the view keeps the stream's
            return httpx.Response(200, json=job("running", step=2))
        return httpx.Response(404, json={"code": "not_found", "message": "nope", "request_id": "r1"})

    def gets(self) -> int:
        return sum(r.url.path == f"/v0/finetune/{JOB}" for r in self.requests)


def install(monkeypatch: pytest.MonkeyPatch, api: Any) -> None:
    client = FastunerClient(httpx.Client(transport=httpx.MockTransport(api), base_url="http://api"))
    monkeypatch.setattr(State, "client", lambda self: client)
    monkeypatch.setenv("COLUMNS", "200")


def test_wait_follows_the_stream_and_exits_0_on_completed(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi("completed")
    install(monkeypatch, api)
    res = CliRunner().invoke(cli, ["finetune", "wait", JOB])
    assert res.exit_code == 0, res.output
    assert "completed" in res.output and "adp_1" in res.output
    assert "2.4000 bits/token" in res.output  # the stream's last point (step 6) was shown
    assert sum(r.url.params.get("follow") == "true" for r in api.requests) == 1
    assert api.gets() <= 3  # before, once per status change, after: no polling


@pytest.mark.parametrize(("final", "reason"), [("failed", "CUDA out of memory"), ("cancelled", None)])
def test_wait_exits_1_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, final: str, reason: str | None
) -> None:
    install(monkeypatch, FakeApi(final, reason))
    res = CliRunner().invoke(cli, ["finetune", "wait", JOB])
    assert res.exit_code == 1
    assert f"job {JOB} {final}" in res.stderr
    if reason:
        assert reason in res.stderr


def test_wait_json_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeApi("failed", "boom"))
    res = CliRunner().invoke(cli, ["finetune", "wait", JOB, "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["status"] == "failed" and out["failure_reason"] == "boom"


def test_wait_for_an_unknown_job(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeApi("completed"))
    res = CliRunner().invoke(cli, ["finetune", "wait", "ft_nope"])
    assert res.exit_code == 1 and "not_found" in res.stderr


# -- start --dataset FILE -----------------------------------------------------------------------
def test_start_with_a_file_uploads_then_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    dataset = dataset_json("ds_new00001", row_counts={"train": 96})

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v0/datasets":
            return httpx.Response(201, json=dataset)
        assert json.loads(request.content)["dataset_id"] == "ds_new00001"
        return httpx.Response(201, json=job("queued"))

    install(monkeypatch, handler)
    path = write_jsonl(tmp_path / "train.jsonl", rows(120))
    res = CliRunner().invoke(cli, ["finetune", "start", "--dataset", str(path), "--model", "tiny"])
    assert res.exit_code == 0, res.output
    assert "ds_new00001" in res.output and JOB in res.output
    assert [r.url.path for r in seen] == ["/v0/datasets", "/v0/finetune"]
    assert b'name="name"\r\n\r\ntrain' in seen[0].content


def test_start_with_a_missing_file_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install(monkeypatch, FakeApi("completed"))
    res = CliRunner().invoke(
        cli, ["finetune", "start", "--dataset", str(tmp_path / "x.jsonl"), "--model", "m"]
    )
    assert res.exit_code == 2 and "no such file" in res.output


def test_start_with_an_invalid_file_shows_the_report_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTUNER_LOG_JSON", "false")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    from api.settings import get_settings

    get_settings.cache_clear()
    data = rows(120)
    data[3] = {"input": "", "target": "x"}
    data[7] = {"input": "", "target": "y"}
    path = write_jsonl(tmp_path / "bad.jsonl", data)
    runner = CliRunner()
    res = runner.invoke(cli, ["finetune", "start", "--dataset", str(path), "--model", "tiny"])
    assert res.exit_code == 1
    assert "✗ invalid" in res.stdout and "empty_text" in res.stdout and "4, 8" in res.stdout
    assert "nothing was started" in res.stderr
    listed = runner.invoke(cli, ["finetune", "list", "--json"])
    assert json.loads(listed.stdout)["items"] == []
    get_settings.cache_clear()
