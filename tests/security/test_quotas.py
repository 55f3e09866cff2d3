"""Per-tenant quotas: concurrent jobs, live endpoints and instance types, enforced at admission
(429 / 403 naming the limit, nothing written), also under concurrent requests, on each database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.backends import get_backend

from api.domain.tenants import Quotas
from tests.e2e.sagemaker_support import ACCOUNT, REGION, SageMakerEnv, mocked_aws, sagemaker_settings

INSTANCE = "ml.g4dn.xlarge"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SageMakerEnv]:
    with mocked_aws(), SageMakerEnv(sagemaker_settings(tmp_path / "home")) as e:
        yield e


def _quotas(env: SageMakerEnv, **values: Any) -> None:
    env.app.state.ctx.tenants.set_quotas("default", Quotas(**values))


def _count(env: SageMakerEnv, path: str) -> int:
    return len(env.client.get(path).json()["items"])


def test_concurrent_job_quota(env: SageMakerEnv) -> None:
    _quotas(env, max_concurrent_jobs=2)
    ds = env.upload_dataset()["id"]
    first, second = env.started(ds)["id"], env.started(ds)["id"]

    resp = env.start(ds)
    assert resp.status_code == 429, resp.text
    body = resp.json()
    assert body["code"] == "quota_exceeded" and "max_concurrent_jobs" in body["message"]
    assert body["details"] == {"limit": "max_concurrent_jobs", "value": 2, "in_use": 2}
    assert _count(env, "/v0/finetune") == 2  # nothing half-written
    assert len(env.calls.of("CreateTrainingJob")) == 2
    assert env.client.get("/v0/tenant").json()["usage"]["active_jobs"] == 2

    # A finished job frees its slot.
    env.set_state(first, "Failed", "Failed", failure_reason="AlgorithmError: boom")
    env.reconcile()
    assert env.job(first)["status"] == "failed"
    assert env.start(ds).status_code == 201
    assert env.job(second)["status"] == "provisioning"


def test_dry_runs_do_not_take_a_slot(env: SageMakerEnv) -> None:
    _quotas(env, max_concurrent_jobs=0)
    ds = env.upload_dataset()["id"]
    assert env.start(ds, dry_run=True).status_code == 200
    assert env.start(ds).status_code == 429


def test_instance_types_outside_the_allow_list_are_403(env: SageMakerEnv) -> None:
    _quotas(env, allowed_instance_types=["ml.g5.*"])
    ds = env.upload_dataset()["id"]
    for dry_run in (True, False):
        resp = env.start(ds, instance_type="ml.p4d.24xlarge", dry_run=dry_run)
        assert resp.status_code == 403, resp.text
        body = resp.json()
        assert body["code"] == "forbidden" and body["details"]["limit"] == "allowed_instance_types"
        assert "ml.p4d.24xlarge" in body["message"] and body["request_id"]
    assert env.start(ds, instance_type="ml.g5.2xlarge").status_code == 201
    assert _count(env, "/v0/finetune") == 1


def _adapter(env: SageMakerEnv) -> str:
    ds = env.upload_dataset()["id"]
    job = env.started(ds)["id"]
    env.put_model(job, {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"0"})
    env.set_state(job, "Completed", "Completed")
    env.reconcile()
    adapter: str = env.job(job)["adapter_id"]
    return adapter


def test_endpoint_quota_and_instance_types(env: SageMakerEnv) -> None:
    adapter = _adapter(env)
    _quotas(env, max_endpoints=1, allowed_instance_types=["ml.g4dn.*"])
    body = {"adapter_ids": [adapter], "instance_type": INSTANCE}
    first = env.client.post("/v0/deployments", json=body)
    assert first.status_code == 201, first.text

    resp = env.client.post("/v0/deployments", json=body)
    assert resp.status_code == 429 and resp.json()["details"]["limit"] == "max_endpoints"
    resp = env.client.post("/v0/deployments", json={**body, "instance_type": "ml.g5.xlarge"})
    assert resp.status_code == 403 and resp.json()["details"]["limit"] == "allowed_instance_types"
    assert _count(env, "/v0/deployments") == 1
    assert len(get_backend("sagemaker")[ACCOUNT][REGION].endpoints) == 1  # nothing created on AWS

    env.client.delete(f"/v0/deployments/{first.json()['id']}")
    env.app.state.ctx.deployments.sync_once()
    assert env.client.post("/v0/deployments", json=body).status_code == 201


def test_quotas_are_per_tenant(env: SageMakerEnv) -> None:
    _quotas(env, max_concurrent_jobs=1)
    ds = env.upload_dataset()["id"]
    assert env.start(ds).status_code == 201
    assert env.start(ds).status_code == 429
    info = env.app.state.ctx.tenants.info("other")
    assert info.quotas.max_concurrent_jobs == env.settings.default_max_concurrent_jobs


def test_concurrent_starts_cannot_overshoot_the_quota(tmp_path: Path, db_url: str) -> None:
    """Eight requests race for three slots: exactly three jobs exist afterwards, on each database."""
    with mocked_aws(), SageMakerEnv(sagemaker_settings(tmp_path / "home", db_url)) as env:
        _quotas(env, max_concurrent_jobs=3)
        ds = env.upload_dataset()["id"]
        barrier = threading.Barrier(8)
        codes: list[int] = []

        def start() -> None:
            barrier.wait()
            codes.append(env.start(ds).status_code)

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [201] * 3 + [429] * 5, codes
        assert _count(env, "/v0/finetune") == 3
