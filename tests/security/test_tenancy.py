"""Tenancy: another tenant's ids answer 404 on every endpoint, and lists never leak.

The whole app runs as in production (sagemaker backend, S3 store, on moto). Tenant A owns a
dataset, a running job, a completed job with its adapter, and a live deployment; tenant B, with a
key of its own, then calls every operation of the OpenAPI schema with A's ids. A table classifies
each operation; a new route that is not classified fails the test until someone decides how it is
scoped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.e2e.sagemaker_support import SageMakerEnv, mocked_aws, sagemaker_settings

ADAPTER_FILES = {
    "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8}).encode(),
    "adapter_model.safetensors": b"\x00" * 64,
}
INSTANCE = "ml.g4dn.xlarge"  # what moto's endpoint configs accept


@dataclass
class World:
    env: SageMakerEnv
    b: TestClient  # tenant B: its own key, same app
    ids: dict[str, str]  # A's resources: dataset, job (running), done (completed), adapter, deployment

    @property
    def a(self) -> TestClient:
        return self.env.client


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with mocked_aws(), SageMakerEnv(sagemaker_settings(tmp_path / "home")) as env:
        ds = env.upload_dataset()["id"]
        running = env.started(ds)["id"]
        done = env.started(ds)["id"]
        env.put_model(done, ADAPTER_FILES)
        env.set_state(done, "Completed", "Completed")
        assert env.reconcile()["errors"] == []
        adapter = env.job(done)["adapter_id"]
        assert adapter
        resp = env.client.post("/v0/deployments", json={"adapter_ids": [adapter], "instance_type": INSTANCE})
        assert resp.status_code == 201, resp.text
        deployment = resp.json()["id"]
        env.app.state.ctx.deployments.sync_once()
        key = env.app.state.ctx.auth.create_key("tenant-b", "test").secret
        b = TestClient(env.app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {key}"})
        ids = {"dataset": ds, "job": running, "done": done, "adapter": adapter, "deployment": deployment}
        yield World(env, b, ids)


Call = Callable[[World], Any]


def _path(template: str, w: World) -> str:
    ids = {f"{kind}_id": value for kind, value in w.ids.items()}
    return template.format(**ids, file_id=w.ids["dataset"], model_id=w.ids["adapter"])


def _batch(w: World, **target: str) -> Any:
    return w.b.post("/v0/inference/batch", data=target, files={"file": ("b.jsonl", b'{"inputs": "hi"}\n')})


# Operations addressing one of A's resources: B gets 404 `not_found`, as for an id that never existed.
NOT_FOUND: dict[tuple[str, str], Call] = {
    ("GET", "/v0/datasets/{dataset_id}"): lambda w: None,
    ("DELETE", "/v0/datasets/{dataset_id}"): lambda w: None,
    ("GET", "/v0/datasets/{dataset_id}/manifest"): lambda w: None,
    ("GET", "/v0/datasets/{dataset_id}/preview"): lambda w: None,
    ("GET", "/v0/finetune/{job_id}"): lambda w: None,
    ("POST", "/v0/finetune/{job_id}/cancel"): lambda w: None,
    ("GET", "/v0/finetune/{job_id}/events"): lambda w: None,
    ("GET", "/v0/finetune/{job_id}/logs"): lambda w: None,
    ("GET", "/v0/finetune/{job_id}/metrics"): lambda w: None,
    ("GET", "/v0/adapters/{adapter_id}"): lambda w: None,
    ("GET", "/v0/adapters/{adapter_id}/download"): lambda w: None,
    ("GET", "/v0/deployments/{deployment_id}"): lambda w: None,
    ("DELETE", "/v0/deployments/{deployment_id}"): lambda w: None,
    ("DELETE", "/v0/deployments/{deployment_id}/adapters/{adapter_id}"): lambda w: None,
    ("POST", "/v0/deployments/{deployment_id}/adapters"): lambda w: w.b.post(
        f"/v0/deployments/{w.ids['deployment']}/adapters", json={"adapter_id": w.ids["adapter"]}
    ),
    # A's ids inside a request body.
    ("POST", "/v0/finetune"): lambda w: w.b.post(
        "/v0/finetune",
        json={
            "dataset_id": w.ids["dataset"],
            "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "instance_type": "ml.g5.xlarge",
        },
    ),
    ("POST", "/v0/deployments"): lambda w: w.b.post(
        "/v0/deployments", json={"adapter_ids": [w.ids["adapter"]], "instance_type": INSTANCE}
    ),
    ("POST", "/v0/inference"): lambda w: w.b.post(
        "/v0/inference", json={"deployment_id": w.ids["deployment"], "inputs": "hi"}
    ),
    ("POST", "/v0/inference/batch"): lambda w: _batch(w, deployment_id=w.ids["deployment"]),
    # The OpenAI-compatible API (errors in OpenAI's shape there).
    ("GET", "/v1/files/{file_id}"): lambda w: None,
    ("DELETE", "/v1/files/{file_id}"): lambda w: None,
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): lambda w: None,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): lambda w: None,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): lambda w: None,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): lambda w: None,
    ("GET", "/v1/models/{model_id}"): lambda w: None,
    ("POST", "/v1/fine_tuning/jobs"): lambda w: w.b.post(
        "/v1/fine_tuning/jobs",
        json={
            "training_file": w.ids["dataset"],
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "fastuner": {"instance_type": "ml.g5.xlarge"},
        },
    ),
    ("POST", "/v1/chat/completions"): lambda w: w.b.post(
        "/v1/chat/completions",
        json={"model": w.ids["adapter"], "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("POST", "/v1/completions"): lambda w: w.b.post(
        "/v1/completions", json={"model": w.ids["adapter"], "prompt": "hi"}
    ),
}
EXTRA_NOT_FOUND: list[Call] = [  # the same operations, addressed another way
    lambda w: w.b.post("/v0/inference", json={"adapter_id": w.ids["adapter"], "inputs": "hi"}),
    lambda w: _batch(w, adapter_id=w.ids["adapter"]),
    lambda w: w.b.get(f"/v0/finetune/{w.ids['done']}"),
    lambda w: w.b.get(f"/v0/finetune/{w.ids['job']}/metrics", params={"stream": "true"}),
    lambda w: w.b.get("/v1/files", params={"after": w.ids["dataset"]}),
    lambda w: w.b.get("/v1/fine_tuning/jobs", params={"after": w.ids["job"]}),
    lambda w: w.b.get(f"/v1/fine_tuning/jobs/{w.ids['done']}/checkpoints"),
]
# Operations over "everything of mine": B sees only B's (nothing), and learns no id of A's.
SCOPED: dict[tuple[str, str], Call] = {
    ("GET", "/v0/datasets"): lambda w: w.b.get("/v0/datasets"),
    ("GET", "/v0/finetune"): lambda w: w.b.get("/v0/finetune"),
    ("GET", "/v0/adapters"): lambda w: w.b.get("/v0/adapters"),
    ("GET", "/v0/deployments"): lambda w: w.b.get("/v0/deployments"),
    ("GET", "/v0/costs"): lambda w: w.b.get("/v0/costs"),
    ("GET", "/v0/tenant"): lambda w: w.b.get("/v0/tenant"),
    ("POST", "/v0/finetune/reconcile"): lambda w: w.b.post("/v0/finetune/reconcile"),
    ("POST", "/v0/janitor/run"): lambda w: w.b.post("/v0/janitor/run", params={"dry_run": "false"}),
    ("GET", "/v1/files"): lambda w: w.b.get("/v1/files"),
    ("GET", "/v1/fine_tuning/jobs"): lambda w: w.b.get("/v1/fine_tuning/jobs"),
    ("GET", "/v1/models"): lambda w: w.b.get("/v1/models"),
}
# Operations on the caller's own new input (nothing of A's to address).
OWN_INPUT = {("POST", "/v0/datasets"), ("POST", "/v0/datasets/validate"), ("POST", "/v1/files")}
PUBLIC = {("GET", "/healthz"), ("GET", "/v0/healthz")}
# The base-model catalog is the same for every tenant and holds no tenant's data (a pull fills a
# shared, allow-listed model store); it still needs a key.
SHARED = {
    ("GET", "/v0/models"),
    ("GET", "/v0/models/{base_model}"),
    ("POST", "/v0/models/{base_model}/pull"),
}


def test_every_operation_is_classified(world: World) -> None:
    schema = world.env.app.openapi()
    operations = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    classified = set(NOT_FOUND) | set(SCOPED) | OWN_INPUT | PUBLIC | SHARED
    assert operations == classified, (
        f"unclassified: {sorted(operations - classified)}; stale: {sorted(classified - operations)}"
    )
    for method, path in operations - PUBLIC:
        assert schema["paths"][path][method.lower()].get("security"), f"{method} {path} needs a key"


def _assert_not_found(resp: Any) -> None:
    assert resp.status_code == 404, (resp.status_code, resp.text)
    body = resp.json()
    if "error" in body:  # /v1: OpenAI's shape, the request id in its header
        assert body["error"]["code"] in ("not_found", "model_not_found"), body
        assert resp.headers["x-request-id"], body
        return
    assert body["code"] == "not_found" and body["request_id"], body


@pytest.mark.parametrize("operation", sorted(NOT_FOUND), ids=lambda op: f"{op[0]} {op[1]}")
def test_another_tenants_id_is_not_found(world: World, operation: tuple[str, str]) -> None:
    method, template = operation
    call = NOT_FOUND[operation]
    resp = call(world) or world.b.request(method, _path(template, world))
    _assert_not_found(resp)
    _assert_a_untouched(world)


def test_another_tenants_id_is_not_found_however_addressed(world: World) -> None:
    for call in EXTRA_NOT_FOUND:
        _assert_not_found(call(world))
    # An id that never existed answers exactly the same way (no existence oracle).
    never = world.b.get("/v0/datasets/ds_000000000000").json()
    theirs = world.b.get(f"/v0/datasets/{world.ids['dataset']}").json()
    assert never["message"].replace("ds_000000000000", "X") == theirs["message"].replace(
        world.ids["dataset"], "X"
    )


def test_scoped_operations_show_nothing_of_another_tenant(world: World) -> None:
    for (method, path), call in SCOPED.items():
        resp = call(world)
        assert resp.status_code == 200, (method, path, resp.text)
        for value in world.ids.values():
            assert value not in resp.text, f"{method} {path} leaked {value}"
    assert world.b.get("/v0/tenant").json()["tenant_id"] == "tenant-b"
    assert world.b.get("/v0/datasets").json()["items"] == []
    _assert_a_untouched(world)


def test_the_owner_still_sees_everything(world: World) -> None:
    assert [d["id"] for d in world.a.get("/v0/datasets").json()["items"]] == [world.ids["dataset"]]
    assert len(world.a.get("/v0/finetune").json()["items"]) == 2
    assert world.a.get("/v0/tenant").json()["tenant_id"] == "default"


def _assert_a_untouched(w: World) -> None:
    """B's attempts changed nothing of A's (nothing deleted, cancelled, or created for A)."""
    assert w.a.get(f"/v0/datasets/{w.ids['dataset']}").json()["status"] == "ready"
    assert w.a.get(f"/v0/finetune/{w.ids['job']}").json()["status"] in ("queued", "provisioning")
    assert w.a.get(f"/v0/deployments/{w.ids['deployment']}").json()["status"] == "in_service"
    assert w.a.get(f"/v0/adapters/{w.ids['adapter']}").status_code == 200
