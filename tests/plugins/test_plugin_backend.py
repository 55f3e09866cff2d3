"""A backend defined only here ("k8s": its own instance catalogue and capabilities) registers itself
and runs through the real API: preflight, cost estimate, dry run, a launch that completes into an
adapter, a deployment, the base-model list. Nothing under ``api/`` knows it.

Its capabilities are chosen to differ from both built-ins (jobs see this machine's model folders
like ``local``, yet pick among instance types, take spot and refuse several nodes), so any caller
that asks the backend's name instead of its capabilities takes a wrong turn here and fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.backends import registry
from api.backends.base import TrainingSpec, TrainingStatus
from api.backends.capabilities import Capabilities
from api.backends.endpoints import EndpointSpec, EndpointStatus, ManagedEndpoint
from api.domain.enums import DeploymentStatus, JobStatus
from api.domain.instances import InstanceType
from api.settings import Settings
from api.storage.base import ObjectStore
from tests.api.support import authorize, rows, upload, write_jsonl

NAME = "k8s-test"
CATALOGUE = {
    i.name: i
    for i in (
        InstanceType("k8s.cpu-4", 0.2, 0, 0.0, 0.5),
        InstanceType("k8s.a10g-1", 1.1, 1, 24.0, 125.0),
        InstanceType("k8s.a10g-4", 4.0, 4, 24.0, 125.0),
    )
}
# A tiny Llama: preflight reads its size from this config.json.
SIZES = {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
CONFIG = {"model_type": "llama", **SIZES, "intermediate_size": 128, "tie_word_embeddings": True}


def k8s_capabilities(settings: Settings) -> Capabilities:
    return Capabilities(
        summary="runs one pod per job in the test cluster",
        instances=CATALOGUE,
        default_instance="k8s.a10g-1",
        default_inference_instance="k8s.cpu-4",
        multi_node=False,
        spot=True,
        host_files=True,  # the cluster mounts this machine's model roots
        startup_seconds=45,
        spot_price_factor=0.5,
    )


@dataclass
class K8sJobs:
    """Training "pods" that complete at once, leaving an adapter."""

    name: str = NAME
    model_access: str = "offline"
    launched: dict[str, TrainingSpec] = field(default_factory=dict)

    def start_training(self, spec: TrainingSpec) -> dict[str, Any]:
        self.launched.setdefault(spec.job_name, spec)
        return {"pod": spec.job_name}

    def find_training(self, job_name: str) -> dict[str, Any] | None:
        return {"pod": job_name} if job_name in self.launched else None

    def describe_training(self, job_name: str, state: dict[str, Any]) -> TrainingStatus:
        return TrainingStatus(JobStatus.COMPLETED, secondary_status="Succeeded", billable_seconds=60)

    def stop_training(self, job_name: str, state: dict[str, Any]) -> None:
        return None

    def read_metrics(self, job_name: str, state: dict[str, Any], after_step: int) -> list[dict[str, float]]:
        return []

    def read_logs(self, job_name: str, state: dict[str, Any], tail: int) -> list[str]:
        return [f"pod {job_name} succeeded"]

    def fetch_model(self, job_name: str, state: dict[str, Any], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
        (dest / "adapter_model.safetensors").write_bytes(b"0")


@dataclass
class K8sServices:
    """Inference "services" that are in service as soon as they exist."""

    name: str = NAME
    live: dict[str, EndpointSpec] = field(default_factory=dict)

    def create_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        self.live[spec.endpoint_name] = spec
        return {"service": spec.endpoint_name}

    def describe_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> EndpointStatus:
        live = endpoint_name in self.live
        return EndpointStatus(DeploymentStatus.IN_SERVICE if live else DeploymentStatus.DELETED)

    def delete_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> None:
        self.live.pop(endpoint_name, None)

    def invoke(self, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return {"outputs": []}

    def list_managed(self) -> list[ManagedEndpoint]:
        return [ManagedEndpoint(name, None, spec.tags) for name, spec in self.live.items()]


@dataclass
class Cluster:
    jobs: K8sJobs = field(default_factory=K8sJobs)
    services: K8sServices = field(default_factory=K8sServices)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    made = Cluster()

    def training(settings: Settings, store: ObjectStore) -> K8sJobs:
        return made.jobs

    def endpoints(settings: Settings, store: ObjectStore) -> K8sServices:
        return made.services

    registry.register(registry.BackendEntry(NAME, k8s_capabilities, training, endpoints))
    try:
        yield made
    finally:
        registry.unregister(NAME)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "roots" / "team" / "tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


@pytest.fixture
def client(cluster: Cluster, settings_factory: Any, tmp_path: Path) -> Iterator[TestClient]:
    """The real app, configured with ``FASTUNER_BACKEND`` = the test backend's name."""
    roots = [tmp_path / "roots"]
    app = create_app(settings_factory(backend=NAME, background_tasks=False, model_roots=roots))
    with authorize(TestClient(app, raise_server_exceptions=False)) as c:
        yield c


def _start(client: TestClient, dataset_id: str, model: Path, **body: Any) -> Any:
    return client.post("/v0/finetune", json={"dataset_id": dataset_id, "base_model": str(model), **body})


def test_an_unregistered_backend_is_refused_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown backend 'k8s-test' \(FASTUNER_BACKEND\); registered: local"
    ):
        Settings(home=tmp_path, backend=NAME)


def test_preflight_and_estimate_read_the_backends_catalogue(
    client: TestClient, model: Path, tmp_path: Path
) -> None:
    ds = upload(client, write_jsonl(tmp_path / "d.jsonl", rows())).json()["id"]
    dry = _start(client, ds, model, dry_run=True, epochs=1, spot=True)
    assert dry.status_code == 200, dry.text
    assert dry.json()["backend"] == NAME
    est = dry.json()["estimate"]
    assert est["instance_type"] == "k8s.a10g-1" and est["spot"] is True  # the backend's default
    assert est["hourly_usd"] == 0.55  # its price at its spot factor
    assert est["gpu_memory_available_gb"] == 24.0 and est["n_params"] > 0  # read from the folder
    assert any("~45 s of start-up" in n for n in est["notes"]), est["notes"]
    assert any("spot priced at 50%" in n for n in est["notes"]), est["notes"]
    big = _start(client, ds, model, dry_run=True, instance_type="k8s.a10g-4").json()["estimate"]
    assert big["hourly_usd"] == 4.0

    refusals = {
        "ml.g5.xlarge": "instance_type 'ml.g5.xlarge' needs FASTUNER_BACKEND=sagemaker",
        "local": "instance_type 'local' needs FASTUNER_BACKEND=local",
        "k8s.nope": "unknown instance type 'k8s.nope'; known: k8s.cpu-4, k8s.a10g-1, k8s.a10g-4",
    }
    for instance, message in refusals.items():
        resp = _start(client, ds, model, dry_run=True, instance_type=instance)
        assert resp.status_code == 400 and resp.json()["message"] == message, resp.text
    several = _start(client, ds, model, dry_run=True, instance_count=2)
    assert several.status_code == 400
    assert (
        several.json()["message"]
        == f"the {NAME} backend runs one pod per job in the test cluster: no instance_count > 1"
    )
    qlora = _start(client, ds, model, dry_run=True, method="qlora", instance_type="k8s.cpu-4")
    assert qlora.status_code == 400 and "(e.g. k8s.a10g-1)" in qlora.json()["message"]
    too_many = _start(client, ds, model, dry_run=True, hyperparameters={"num_processes": 2})
    assert too_many.status_code == 422 and "k8s.a10g-1 can run (1 GPU(s))" in too_many.json()["message"]
    outside = client.post(
        "/v0/finetune", json={"dataset_id": ds, "base_model": str(tmp_path), "dry_run": True}
    )
    assert outside.status_code == 400 and "FASTUNER_MODEL_ROOTS" in outside.json()["message"]


def test_a_job_launches_completes_and_deploys_on_it(
    client: TestClient, cluster: Cluster, model: Path, tmp_path: Path
) -> None:
    ds = upload(client, write_jsonl(tmp_path / "d.jsonl", rows())).json()["id"]
    job = _start(client, ds, model, max_steps=2)
    assert job.status_code == 201, job.text
    assert job.json()["backend"] == NAME
    (spec,) = cluster.jobs.launched.values()
    assert spec.instance_type == "k8s.a10g-1" and spec.hyperparameters["base_model"] == str(model)

    client.app.state.ctx.reconciler.run_once()  # type: ignore[attr-defined]
    done = client.get(f"/v0/finetune/{job.json()['id']}").json()
    assert done["status"] == "completed" and done["adapter_id"], done

    dep = client.post("/v0/deployments", json={"adapter_ids": [done["adapter_id"]]})
    assert dep.status_code == 201, dep.text
    assert dep.json()["instance_type"] == "k8s.cpu-4" and dep.json()["hourly_price_usd"] == 0.2
    assert list(cluster.services.live) == [dep.json()["endpoint_name"]]
    refused = client.post("/v0/deployments", json={"adapter_ids": [done["adapter_id"]], "instance_count": 2})
    assert refused.status_code == 400 and "no instance_count > 1" in refused.json()["message"]

    listed = {m["id"]: m for m in client.get("/v0/models").json()["items"]}
    assert listed[str(model)]["backend"] == NAME and listed[str(model)]["available"] is True
    assert client.get("/healthz").json()["backend"] == NAME


NAME_TESTS = (  # `settings.backend == "…"`, `self.backend.name != "…"`, `x == "local"`, `"sagemaker" == x`
    re.compile(r"""\bbackend(\.name)?\s*(==|!=)\s*["']"""),
    re.compile(r"""(==|!=)\s*["'](local|sagemaker)["']|["'](local|sagemaker)["']\s*(==|!=)"""),
)


def test_no_caller_asks_a_backends_name() -> None:
    """The control plane compares no backend name with a literal (it asks capabilities)."""
    api = Path(__file__).resolve().parents[2] / "api"
    found = [
        f"{path.relative_to(api)}:{n}: {line.strip()}"
        for path in sorted(api.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(test.search(line) for test in NAME_TESTS)
    ]
    assert found == []
