"""Crashes during job start on the ``sagemaker`` backend (moto), in-process.

The fault points raise :class:`~api.faults.InjectedCrash` (``FASTUNER_FAULT_ACTION=raise``): a
``BaseException`` no handler catches, so the service stops exactly where a ``kill -9`` would stop
it and nothing after the point runs. What must hold afterwards: a training job created before the
crash is adopted (never created twice), one never created is created once, a cancel stops the
job by name, a replay under the same Idempotency-Key returns only a launched job, and launch
errors say whether they were transient.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from api.domain.finetune import FineTuneRequest
from api.faults import InjectedCrash
from api.services.finetune.service import job_name_for
from tests.e2e.sagemaker_support import (
    SMOL,
    TENANT,
    SageMakerEnv,
    mocked_aws,
    sagemaker_settings,
)
from tests.support.aws import aws_error, inject

ADAPTER = {
    "adapter_config.json": json.dumps(
        {"peft_type": "LORA", "r": 16, "base_model_name_or_path": SMOL}
    ).encode(),
    "adapter_model.safetensors": b"\x00" * 64,
    "eval.json": json.dumps({"adapter": {"bpt": 1.0}, "base": {"bpt": 2.0}, "tokens": 10}).encode(),
}


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Iterator[SageMakerEnv]:
    """On SQLite and on PostgreSQL."""
    settings = sagemaker_settings(tmp_path / "home", db_url, launch_retry_wait_seconds=0)
    with mocked_aws(), SageMakerEnv(settings) as e:
        yield e


def crash_start(
    env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch, point: str, dataset_id: str, key: str
) -> str:
    """Start a job with ``point`` armed; the service dies there. Returns the job's id."""
    monkeypatch.setenv("FASTUNER_FAULT_AT", point)
    monkeypatch.setenv("FASTUNER_FAULT_ACTION", "raise")
    req = FineTuneRequest(dataset_id=dataset_id, base_model=SMOL, instance_type="ml.g5.xlarge")
    with pytest.raises(InjectedCrash):
        env.app.state.ctx.finetune.start(TENANT, req, idempotency_key=key)
    monkeypatch.delenv("FASTUNER_FAULT_AT")
    [job] = env.client.get("/v0/finetune").json()["items"]
    assert job["status"] == "launching" and job["backend_job_name"] == job_name_for(job["id"])
    return str(job["id"])


def body(dataset_id: str) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "base_model": SMOL, "instance_type": "ml.g5.xlarge"}


def complete(env: SageMakerEnv, ft: str) -> None:
    env.put_model(ft, ADAPTER)
    env.set_state(
        ft, "Completed", "Completed", training_end_time=datetime.now(UTC), billable_time_in_seconds=60
    )


def test_a_training_job_created_before_the_crash_is_adopted_not_duplicated(
    env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = env.upload_dataset()
    ft = crash_start(env, monkeypatch, "finetune.after_backend_call", ds["id"], "k1")
    assert list(env.moto_jobs()) == [job_name_for(ft)]  # created, but not recorded
    env.set_state(ft, "InProgress", "Training", training_end_time=None)

    report = env.reconcile()
    assert f"{ft}: launch adopted" in report["transitions"] and report["errors"] == []
    job = env.job(ft)
    assert job["status"] == "running"  # adopted, then described in the same pass
    assert len(env.calls.of("CreateTrainingJob")) == 1 and list(env.moto_jobs()) == [job_name_for(ft)]
    events = env.events(ft)
    assert [e["message"] for e in events[:2]] == ["job launching", "launching → provisioning"]
    assert events[1]["data"]["how"] == "adopted"

    complete(env, ft)
    report = env.reconcile()
    adapter = "adp_" + ft.removeprefix("ft_")
    assert report["adapters_registered"] == [adapter]
    assert env.job(ft)["status"] == "completed"
    # A retry with the same key returns the launched (here: finished) job and creates nothing.
    again = env.start(ds["id"], headers={"Idempotency-Key": "k1"})
    assert again.status_code == 201 and again.json()["id"] == ft and again.json()["status"] == "completed"
    assert len(env.calls.of("CreateTrainingJob")) == 1


def test_an_idempotent_replay_resolves_the_launch_inline(
    env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = env.upload_dataset()
    ft = crash_start(env, monkeypatch, "finetune.after_backend_call", ds["id"], "k2")
    again = env.start(ds["id"], headers={"Idempotency-Key": "k2"})
    assert again.status_code == 201 and again.json()["id"] == ft
    assert again.json()["status"] != "launching"  # never a job that was never launched
    assert len(env.calls.of("CreateTrainingJob")) == 1 and list(env.moto_jobs()) == [job_name_for(ft)]


def test_a_launch_lost_before_the_backend_call_is_made_once(
    env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = env.upload_dataset()
    ft = crash_start(env, monkeypatch, "finetune.before_launch", ds["id"], "k3")
    assert env.moto_jobs() == {}
    # The launcher (this process, which "died" there) holds nothing: the replay launches it now.
    again = env.start(ds["id"], headers={"Idempotency-Key": "k3"})
    assert again.status_code == 201 and again.json()["id"] == ft and again.json()["status"] == "provisioning"
    assert list(env.moto_jobs()) == [job_name_for(ft)]
    env.set_state(ft, "InProgress", "Starting", training_end_time=None)  # moto's are born Completed
    assert env.reconcile()["errors"] == []
    assert len(env.calls.of("CreateTrainingJob")) == 1
    assert "launch lost (its launcher is gone); launching again" in [e["message"] for e in env.events(ft)]


def test_a_launch_lost_twice_fails_with_a_reason(env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = env.upload_dataset()
    ft = crash_start(env, monkeypatch, "finetune.before_launch", ds["id"], "k4")
    monkeypatch.setenv("FASTUNER_FAULT_AT", "finetune.before_launch")
    with pytest.raises(InjectedCrash):  # the relaunch dies at the same point
        env.app.state.ctx.reconciler.run_once()
    monkeypatch.delenv("FASTUNER_FAULT_AT")
    report = env.reconcile()
    assert report["transitions"] == [f"{ft}: launch failed"]
    job = env.job(ft)
    assert job["status"] == "failed" and "the launch was lost 2 times" in job["failure_reason"]
    assert env.moto_jobs() == {} and env.calls.of("CreateTrainingJob") == []


def test_cancel_of_a_launching_job_stops_the_backend_job_by_name(
    env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    stops: list[str] = []
    monkeypatch.setattr(env.backend, "_call_stop", stops.append)  # moto has no StopTrainingJob
    ds = env.upload_dataset()
    ft = crash_start(env, monkeypatch, "finetune.after_backend_call", ds["id"], "k5")
    env.set_state(ft, "InProgress", "Training", training_end_time=None)
    resp = env.client.post(f"/v0/finetune/{ft}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelling"
    assert stops == [job_name_for(ft)]
    env.set_state(ft, "Stopped", "Stopped", training_end_time=datetime.now(UTC))
    env.reconcile()
    assert env.job(ft)["status"] == "cancelled"
    assert len(env.calls.of("CreateTrainingJob")) == 1


def test_cancel_of_a_job_never_launched_is_immediate_and_nothing_starts_later(
    env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = env.upload_dataset()
    ft = crash_start(env, monkeypatch, "finetune.before_launch", ds["id"], "k6")
    resp = env.client.post(f"/v0/finetune/{ft}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert env.reconcile()["checked"] == 0
    assert env.moto_jobs() == {} and env.calls.of("CreateTrainingJob") == []


def test_a_transient_launch_failure_is_retried_under_the_same_key(
    env: SageMakerEnv, no_backoff: list[int]
) -> None:
    ds = env.upload_dataset()
    throttled = aws_error(400, "ThrottlingException", "Rate exceeded")
    inject(env.backend.sagemaker, "CreateTrainingJob", [throttled] * 11)  # botocore gives up after 11
    first = env.start(ds["id"], headers={"Idempotency-Key": "k7"})
    assert first.status_code == 502 and first.json()["details"]["transient"] is True
    ft = first.json()["details"]["job_id"]
    failed = env.job(ft)
    assert failed["status"] == "failed" and failed["failure_reason"].startswith("launch failed (transient")
    again = env.start(ds["id"], headers={"Idempotency-Key": "k7"})
    assert again.status_code == 201 and again.json()["id"] == ft and again.json()["status"] == "provisioning"
    assert again.json()["failure_reason"] is None and list(env.moto_jobs()) == [job_name_for(ft)]
    assert "failed → launching" in [e["message"] for e in env.events(ft)]


def test_a_permanent_launch_failure_replays_the_failure(env: SageMakerEnv) -> None:
    ds = env.upload_dataset()
    invalid = aws_error(400, "ValidationException", "Instance type not supported")
    inject(env.backend.sagemaker, "CreateTrainingJob", [invalid] * 5)
    first = env.start(ds["id"], headers={"Idempotency-Key": "k8"})
    assert first.status_code == 502 and first.json()["details"]["transient"] is False
    ft = first.json()["details"]["job_id"]
    again = env.start(ds["id"], headers={"Idempotency-Key": "k8"})
    assert again.status_code == 201 and again.json()["id"] == ft and again.json()["status"] == "failed"
    assert again.json()["failure_reason"].startswith("launch failed (permanent)")
    assert len(env.calls.of("CreateTrainingJob")) == 1 and env.moto_jobs() == {}


def test_other_transient_errors_are_retried_with_backoff(
    env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors not retried by botocore already (a connection reset outside an AWS call) are retried
    by the launcher (tenacity) before the job fails."""
    real = env.backend.start_training
    calls: list[int] = []

    def flaky(spec: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionResetError("connection reset by peer")
        return real(spec)

    monkeypatch.setattr(env.backend, "start_training", flaky)
    ds = env.upload_dataset()
    resp = env.start(ds["id"])
    assert resp.status_code == 201 and resp.json()["status"] == "provisioning" and len(calls) == 3

    calls.clear()
    monkeypatch.setattr(env.backend, "start_training", lambda spec: _reset(calls))
    resp = env.start(ds["id"])
    assert resp.status_code == 502
    details = resp.json()["details"]
    assert details == {"job_id": details["job_id"], "transient": True, "attempts": 4}
    assert len(calls) == 4  # launch_retries = 3
    job = env.job(details["job_id"])
    assert (
        job["failure_reason"]
        == "launch failed (transient, 4 attempts): ConnectionResetError: connection reset"
    )


def _reset(calls: list[int]) -> dict[str, Any]:
    calls.append(1)
    raise ConnectionResetError("connection reset")


def test_cancel_while_the_launch_is_in_flight_stops_what_it_launches(
    env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    stops: list[str] = []
    monkeypatch.setattr(env.backend, "_call_stop", stops.append)
    entered, go = threading.Event(), threading.Event()
    real = env.backend.start_training

    def slow(spec: Any) -> dict[str, Any]:
        entered.set()
        assert go.wait(30)
        state = real(spec)
        env.set_state(spec.job_id, "InProgress", "Starting", training_end_time=None)
        return state

    monkeypatch.setattr(env.backend, "start_training", slow)
    ds = env.upload_dataset()
    req = FineTuneRequest(dataset_id=ds["id"], base_model=SMOL, instance_type="ml.g5.xlarge")
    results: dict[str, Any] = {}
    starter = threading.Thread(
        target=lambda: results.update(start=env.app.state.ctx.finetune.start(TENANT, req))
    )
    starter.start()
    assert entered.wait(30)
    [job] = env.client.get("/v0/finetune").json()["items"]
    canceller = threading.Thread(
        target=lambda: results.update(cancel=env.app.state.ctx.finetune.cancel(TENANT, job["id"]))
    )
    canceller.start()
    while env.job(job["id"])["status"] != "cancelling":  # the cancel waits for the launch
        time.sleep(0.02)
    go.set()
    starter.join(30)
    canceller.join(30)
    assert results["cancel"].status.value == "cancelling"
    assert stops == [job_name_for(job["id"])]  # what the launch created was stopped
    env.set_state(job["id"], "Stopped", "Stopped", training_end_time=datetime.now(UTC))
    env.reconcile()
    assert env.job(job["id"])["status"] == "cancelled"
