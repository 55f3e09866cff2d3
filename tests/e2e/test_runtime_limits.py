"""Issue 12, item 5 through the API with the real trainer on the local backend, on SQLite and
PostgreSQL: a job at its max runtime is stopped (after a checkpoint) and fails with reason
"max runtime"; a job whose loss turns non-finite fails with that reason and registers no adapter.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.backends.base import TrainingSpec
from api.backends.local import LocalBackend
from api.settings import Settings
from tests.api.support import authorize, upload

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "uppercase.jsonl"
DEADLINE_S = 420


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, log_json=False, reconcile_interval_seconds=0.5
    )
    with authorize(TestClient(create_app(settings))) as c:
        yield c


def wait(client: TestClient, job_id: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v0/finetune/{job_id}").json()
        if until(job) or job["status"] in ("failed", "cancelled", "completed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never finished")


def test_max_runtime_stops_the_job_after_a_checkpoint(
    client: TestClient, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API's minimum is 60 s; the backend gets a shorter limit so the test stays short.
    real = LocalBackend.start_training

    def short(self: LocalBackend, spec: TrainingSpec) -> dict[str, Any]:
        return real(self, dataclasses.replace(spec, max_runtime_seconds=25))

    monkeypatch.setattr(LocalBackend, "start_training", short)
    monkeypatch.setenv("FASTUNER_SCU_TEST_STEP_SLEEP", "0.2")  # a long run: it cannot finish in time
    ds = upload(client, SAMPLE, name="upper").json()
    request = {"dataset_id": ds["id"], "base_model": str(tiny_model), "max_steps": 100_000}
    hyperparameters = {"log_every": 1, "checkpoint_every": 1000}
    resp = client.post(
        "/v0/finetune", json={**request, "max_runtime_seconds": 60, "hyperparameters": hyperparameters}
    )
    assert resp.status_code == 201, resp.text
    job = wait(client, resp.json()["id"], lambda j: False)
    assert job["status"] == "failed", job
    assert job["failure_reason"].startswith("max runtime"), job["failure_reason"]
    assert job["secondary_status"] == "MaxRuntimeExceeded" and job["adapter_id"] is None
    root = tmp_path / "home" / "work" / "jobs" / job["backend_job_name"]
    if job["latest_metrics"]:  # the trainer had started training when the limit came: it checkpointed
        assert "after saving a checkpoint" in job["failure_reason"]
        assert any((root / "checkpoints").glob("step-*")), "SIGTERM at the limit must leave a checkpoint"
    assert client.get("/v0/adapters").json()["items"] == []


def test_non_finite_loss_fails_the_job_and_registers_no_adapter(client: TestClient, tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    broken = tiny_model.parent / "nan-weights"  # under the model roots
    if not (broken / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        with torch.no_grad():
            model.get_input_embeddings().weight.fill_(float("nan"))
        model.save_pretrained(broken)
        AutoTokenizer.from_pretrained(tiny_model).save_pretrained(broken)
    ds = upload(client, SAMPLE, name="upper").json()
    resp = client.post(
        "/v0/finetune", json={"dataset_id": ds["id"], "base_model": str(broken), "max_steps": 6}
    )
    assert resp.status_code == 201, resp.text
    job = wait(client, resp.json()["id"], lambda j: False)
    assert job["status"] == "failed", job
    assert "the loss became non-finite at step 1 of 6" in job["failure_reason"], job["failure_reason"]
    assert job["adapter_id"] is None
    assert client.get("/v0/adapters").json()["items"] == []
