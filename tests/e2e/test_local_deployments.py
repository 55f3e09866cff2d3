"""Issue #5 on the local backend, for real: adapters from local fine-tunes served by one
inference server subprocess, inference for two adapters, and the janitor tearing it down after a
short TTL (the port closes)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from cli.main import cli
from tests.api.support import authorize, upload

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "uppercase.jsonl"
DEADLINE_S = 420


def _until(fetch: Any, done: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        obj: dict[str, Any] = fetch()
        if done(obj):
            return obj
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {obj}")


def _finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("completed", "failed")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_two_adapters_one_server_then_janitor(tmp_path: Path, tiny_model: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", log_json=False, reconcile_interval_seconds=0.5, janitor_interval_seconds=3600
    )
    with authorize(TestClient(create_app(settings))) as client:
        ds = upload(client, SAMPLE, name="upper").json()
        request = {"dataset_id": ds["id"], "base_model": str(tiny_model), "max_steps": 4}
        jobs = []
        for seed in (1, 2):
            hyperparameters = {"seed": seed, "learning_rate": 0.05, "scu": "off"}
            jobs.append(
                client.post("/v0/finetune", json={**request, "hyperparameters": hyperparameters}).json()
            )
        adapters = []
        for job in jobs:
            url = f"/v0/finetune/{job['id']}"
            done = _until(lambda url=url: client.get(url).json(), _finished, "fine-tune")
            assert done["status"] == "completed", done
            adapters.append(done["adapter_id"])

        resp = client.post("/v0/deployments", json={"adapter_ids": adapters, "ttl_seconds": 3})
        assert resp.status_code == 201, resp.text
        dep = resp.json()
        assert dep["status"] == "creating" and dep["backend"] == "local"
        url = f"/v0/deployments/{dep['id']}"
        dep = _until(lambda: client.get(url).json(), lambda d: d["status"] != "creating", "in service")
        assert dep["status"] == "in_service", dep
        assert dep["in_service_at"] and dep["teardown_at"]

        params = {"max_new_tokens": 8, "temperature": 0}
        texts = {}
        for adapter_id in [*adapters, adapters[0]]:
            prompt = {"inputs": "Shout this: amber lotus", "parameters": params}
            r = client.post("/v0/inference", json={"adapter_id": adapter_id, **prompt})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["deployment_id"] == dep["id"] and out["outputs"][0]["completion_tokens"] > 0
            texts.setdefault(adapter_id, []).append(out["outputs"][0]["generated_text"])
        assert texts[adapters[0]][0] == texts[adapters[0]][1]  # greedy and stable across interleaving
        assert texts[adapters[0]][0] != texts[adapters[1]][0]  # two different adapters, one server
        base_only = client.post("/v0/inference", json={"deployment_id": dep["id"], **prompt})
        assert base_only.status_code == 200

        missing = client.post("/v0/inference", json={"adapter_id": "adp_doesnotexist", "inputs": "x"})
        assert missing.status_code == 404
        no_tokens = {"adapter_id": adapters[0], "inputs": "x", "parameters": {"max_new_tokens": 0}}
        bad = client.post("/v0/inference", json=no_tokens)
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"

        used = client.get(f"/v0/deployments/{dep['id']}").json()
        assert used["last_used_at"] is not None
        launch = tmp_path / "home" / "work" / "endpoints" / used["endpoint_name"] / "launch.json"
        port = int(json.loads(launch.read_text())["port"])
        assert _port_open(port)
        costs = client.get("/v0/costs").json()
        assert [d["id"] for d in costs["running"]] == [dep["id"]]

        dry = client.post("/v0/janitor/run", params={"dry_run": True}).json()
        assert dry["actions"] == []  # used a moment ago: inside its TTL
        time.sleep(3.5)
        dry = client.post("/v0/janitor/run", params={"dry_run": True}).json()
        assert [a["deployment_id"] for a in dry["actions"]] == [dep["id"]] and _port_open(port)
        report = client.post("/v0/janitor/run").json()
        assert [a["deployment_id"] for a in report["actions"]] == [dep["id"]] and report["actions"][0]["done"]
        gone = client.get(f"/v0/deployments/{dep['id']}").json()
        assert gone["status"] == "deleted" and gone["deleted_reason"].startswith("idle")
        assert not _port_open(port)
        after = client.post("/v0/inference", json={"adapter_id": adapters[0], "inputs": "x"})
        assert after.status_code == 409  # nothing serves it any more
        assert client.post("/v0/janitor/run").json()["actions"] == []

    # The CLI on the same home: deploy, infer (one and batch), costs, delete.
    runner = CliRunner()
    env = {"FASTUNER_HOME": str(tmp_path / "home"), "FASTUNER_RECONCILE_INTERVAL_SECONDS": "0.5"}
    from api.settings import get_settings

    get_settings.cache_clear()
    res = runner.invoke(cli, ["--json", "deployments", "create", adapters[1], "--ttl", "30m"], env=env)
    assert res.exit_code == 0, res.output
    dep2 = json.loads(res.stdout)
    assert dep2["status"] == "in_service"
    res = runner.invoke(
        cli, ["inference", "run", "--adapter", adapters[1], "--input", "Shout this: ember"], env=env
    )
    assert res.exit_code == 0 and dep2["id"] in res.output, res.output
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"input": "Shout this: opal"}\n"Shout this: prism"\n')
    batch = ["inference", "batch", str(prompts), "-o", str(tmp_path / "out.jsonl")]
    res = runner.invoke(cli, [*batch, "--adapter", adapters[1], "--max-new-tokens", "4"], env=env)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2] and all("generated_text" in r for r in rows)
    res = runner.invoke(cli, ["costs"], env=env)
    assert res.exit_code == 0 and dep2["id"] in res.output
    res = runner.invoke(cli, ["--json", "deployments", "delete", dep2["id"]], env=env)
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "deleted"
