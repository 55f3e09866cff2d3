"""Issue #4 on the local backend, for real: the training entrypoint runs as a subprocess.

upload → start → (control plane restarted mid-job) → completed → adapter registered with eval
metrics → downloaded adapter loads with stock PEFT; cancel of a running job; the CLI's --wait.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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


def _settings(home: Path, **kw: Any) -> Settings:
    return Settings(home=home, log_json=False, reconcile_interval_seconds=0.5, **kw)


def _wait(client: TestClient, job_id: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v0/finetune/{job_id}").json()
        if until(job):
            return job
        if job["status"] in ("failed", "cancelled", "completed"):
            break
        time.sleep(0.5)
    logs = client.get(f"/v0/finetune/{job_id}/logs", params={"tail": 40}).json()
    raise AssertionError(f"job never reached the expected state: {job}\n" + "\n".join(logs))


def test_train_survives_restart_and_registers_adapter(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "home"
    body = {
        "base_model": str(tiny_model),
        "max_steps": 12,
        "hyperparameters": {"log_every": 2, "checkpoint_every": 4},
    }
    with authorize(TestClient(create_app(_settings(home)))) as first:
        ds = upload(first, SAMPLE, name="upper").json()
        resp = first.post(
            "/v0/finetune", json={"dataset_id": ds["id"], **body}, headers={"Idempotency-Key": "k1"}
        )
        assert resp.status_code == 201, resp.text
        job = resp.json()
        assert job["status"] == "provisioning" and job["backend"] == "local"
        again = first.post(
            "/v0/finetune", json={"dataset_id": ds["id"], **body}, headers={"Idempotency-Key": "k1"}
        )
        assert again.json()["id"] == job["id"]  # retried start: same job, nothing launched twice
        _wait(first, job["id"], lambda j: j["status"] == "running")
    # The control plane is gone; the job keeps training. A new one re-attaches and finishes it.
    with authorize(TestClient(create_app(_settings(home)))) as second:
        done = _wait(second, job["id"], lambda j: j["status"] == "completed")
        assert done["adapter_id"] and done["billable_seconds"] is not None
        assert done["latest_metrics"]["step"] == 12
        latest = done["latest_metrics"]  # the engine's record reaches the API in bits per token
        assert {"loss_bpt", "data_bpt", "param_bpt", "s_hat", "target_s", "band", "unreachable"} <= set(
            latest
        )
        assert latest["loss_bpt"] >= latest["data_bpt"] > 0
        adapter = second.get(f"/v0/adapters/{done['adapter_id']}").json()
        assert adapter["job_id"] == job["id"] and adapter["dataset_sha256"] == ds["content_sha256"]
        ev = adapter["eval_metrics"]
        assert ev["base"]["bpt"] > 0 and ev["adapter"]["bpt"] > 0 and ev["tokens"] > 0
        steps = [p["step"] for p in second.get(f"/v0/finetune/{job['id']}/metrics").json()]
        assert steps == sorted(set(steps)) and steps[-1] == 12
        kinds = [e["message"] for e in second.get(f"/v0/finetune/{job['id']}/events").json()]
        assert kinds[:2] == ["job launching", "launching → provisioning"] and "running → completed" in kinds
        with second.stream("GET", f"/v0/finetune/{job['id']}/metrics", params={"follow": "true"}) as sse:
            assert sse.headers["content-type"].startswith("text/event-stream")
            body = sse.read().decode()
        events = [line.split(": ", 1)[1] for line in body.splitlines() if line.startswith("event: ")]
        assert events.count("metric") == len(steps) and events[-1] == "status"
        assert '"status": "completed"' in body  # the stream ends with the job
        archive = second.get(f"/v0/adapters/{done['adapter_id']}/download")
        assert archive.status_code == 200
    out = tmp_path / "adapter.tar.gz"
    out.write_bytes(archive.content)
    import tarfile

    dest = tmp_path / "adapter"
    with tarfile.open(out) as tar:
        tar.extractall(dest, filter="data")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), dest)
    assert model.active_adapter == "default"
    assert json.loads((dest / "eval.json").read_text())["adapter"]["bpt"] == ev["adapter"]["bpt"]


def test_cancel_a_running_job(tmp_path: Path, tiny_model: Path) -> None:
    with authorize(TestClient(create_app(_settings(tmp_path / "home")))) as client:
        ds = upload(client, SAMPLE, name="upper").json()
        request = {"dataset_id": ds["id"], "base_model": str(tiny_model), "max_steps": 5000}
        job = client.post("/v0/finetune", json={**request, "hyperparameters": {"log_every": 1}}).json()
        _wait(client, job["id"], lambda j: j["status"] == "running")
        assert client.delete(f"/v0/datasets/{ds['id']}").status_code == 409  # in use
        resp = client.post(f"/v0/finetune/{job['id']}/cancel")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelling"
        done = _wait(client, job["id"], lambda j: j["status"] == "cancelled")
        assert done["adapter_id"] is None and done["ended_at"]
        assert client.post(f"/v0/finetune/{job['id']}/cancel").status_code == 409
        root = tmp_path / "home" / "work" / "jobs" / done["backend_job_name"]
        assert any((root / "checkpoints").iterdir()), "SIGTERM must leave a checkpoint"


def test_failed_job_surfaces_the_reason(tmp_path: Path, tiny_model: Path) -> None:
    with authorize(TestClient(create_app(_settings(tmp_path / "home")))) as client:
        ds = upload(client, SAMPLE, name="upper").json()
        bad = client.post(
            "/v0/finetune",
            json={"dataset_id": ds["id"], "base_model": str(tiny_model), "hyperparameters": {"bogus": 1}},
        )
        assert bad.status_code == 422 and "bogus" in bad.json()["message"]  # caught before any compute
        broken = tiny_model.parent / "broken-model"  # under the model roots, like every local model
        broken.mkdir(exist_ok=True)
        (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": 10}')
        job = client.post("/v0/finetune", json={"dataset_id": ds["id"], "base_model": str(broken)}).json()
        done = _wait(client, job["id"], lambda j: j["status"] == "failed")
        assert done["failure_reason"] and "Traceback" not in done["failure_reason"]


def test_cli_start_wait(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTUNER_RECONCILE_INTERVAL_SECONDS", "0.5")
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    from api.settings import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    res = runner.invoke(cli, ["--json", "datasets", "upload", str(SAMPLE), "--name", "upper"])
    ds = json.loads(res.stdout)["id"]
    start = ["--json", "finetune", "start", "--dataset", ds, "--model", str(tiny_model)]
    res = runner.invoke(cli, [*start, "--max-steps", "6", "--hp", "log_every=2", "--wait"])
    assert res.exit_code == 0, res.output
    job = json.loads(res.stdout)
    assert job["status"] == "completed" and job["adapter_id"]
    res = runner.invoke(cli, ["finetune", "metrics", job["id"], "--plot", str(tmp_path / "m.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(cli, ["adapters", "download", job["adapter_id"], "-o", str(tmp_path / "dl")])
    assert res.exit_code == 0 and (tmp_path / "dl" / "adapter_config.json").is_file()
    res = runner.invoke(cli, ["--json", "jobs", "reconcile", "--once"])
    assert res.exit_code == 0 and json.loads(res.stdout)["checked"] == 0
