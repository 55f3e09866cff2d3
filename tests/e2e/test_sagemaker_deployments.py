"""Issue #5's SageMaker path through the REST API against moto: create (model, endpoint config,
endpoint with our image, env and tags), in service, inference through sagemaker-runtime, and the
janitor on real (moto) endpoints: expired, not yet expired, max lifetime, tagged orphan, untagged
endpoint left alone, concurrent janitors, a failed delete retried."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from fastapi.testclient import TestClient
from moto import mock_aws
from moto.backends import get_backend

from api.app import create_app
from api.services.janitor import Janitor
from tests.api.support import authorize
from tests.e2e.sagemaker_support import sagemaker_settings
from tests.support.aws import ANSWERED, aws_error, hook
from tests.support.moto import ACCOUNT, REGION, moto_sagemaker
from tests.support.rows import add_finished_adapter
from tests.support.threads import race

BUCKET = "fastuner-e2e"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-inference:1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/fastuner-sagemaker"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        settings = sagemaker_settings(
            tmp_path,
            sagemaker_role_arn=ROLE,
            inference_image_uri=IMAGE,
            default_inference_instance_type="ml.g4dn.xlarge",
            orphan_grace_seconds=600,
        )
        with authorize(TestClient(create_app(settings), raise_server_exceptions=False)) as c:
            yield c


def _ctx(client: TestClient) -> Any:
    return client.app.state.ctx  # type: ignore[attr-defined]


def _adapter(client: TestClient, adapter_id: str, base: str = "HuggingFaceTB/SmolLM2-135M-Instruct") -> None:
    add_finished_adapter(
        _ctx(client).db,
        adapter_id,
        dataset_id="ds_e2e" + adapter_id[-4:],
        job_id="ft_" + adapter_id[4:],
        base_model=base,
        uri=f"s3://{BUCKET}/default/adapters/{adapter_id}",
        backend="sagemaker",
        instance_type="ml.g5.xlarge",
    )


def _deploy(client: TestClient, adapters: list[str], **kw: Any) -> dict[str, Any]:
    resp = client.post("/v0/deployments", json={"adapter_ids": adapters, **kw})
    assert resp.status_code == 201, resp.text
    _ctx(client).deployments.sync_once()
    dep: dict[str, Any] = client.get(f"/v0/deployments/{resp.json()['id']}").json()
    return dep


def _janitor(client: TestClient, at: datetime) -> Janitor:
    ctx = _ctx(client)
    return Janitor(ctx.db, ctx.endpoints, ctx.settings, clock=lambda: at)


def test_create_serve_and_delete_on_sagemaker(client: TestClient) -> None:
    _adapter(client, "adp_aaaa00000001")
    _adapter(client, "adp_bbbb00000002")
    sm = boto3.client("sagemaker", region_name=REGION)
    dep = _deploy(
        client, ["adp_aaaa00000001", "adp_bbbb00000002"], ttl_seconds=1800, max_lifetime_seconds=28800
    )
    assert (
        dep["status"] == "in_service"
        and dep["in_service_at"]
        and dep["hourly_price_usd"] == pytest.approx(0.736)
    )
    name = dep["endpoint_name"]
    model = sm.describe_model(ModelName=name)
    env = model["PrimaryContainer"]["Environment"]
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["ExecutionRoleArn"] == ROLE
    assert env["FASTUNER_BASE_MODEL"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert env["FASTUNER_ADAPTER_PREFIX"] == f"s3://{BUCKET}/default/adapters"
    assert env["FASTUNER_PRELOAD_ADAPTERS"] == "adp_aaaa00000001,adp_bbbb00000002"
    variant = sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g4dn.xlarge" and variant["InitialInstanceCount"] == 1
    arn = sm.describe_endpoint(EndpointName=name)["EndpointArn"]
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
    assert tags == {
        "fastuner:managed": "true",
        "fastuner:tenant": "default",
        "fastuner:deployment": dep["id"],
    }

    runtime = get_backend("sagemaker-runtime")[ACCOUNT][REGION]
    output = {
        "generated_text": "AMBER LOTUS",
        "prompt_tokens": 9,
        "completion_tokens": 4,
        "finish_reason": "stop",
    }
    answer = {"outputs": [output], "adapter": "adp_bbbb00000002", "latency_ms": 12.0}
    runtime.results_queue.append((json.dumps(answer), "application/json", "AllTraffic", ""))
    resp = client.post(
        "/v0/inference", json={"adapter_id": "adp_bbbb00000002", "inputs": "Shout this: amber lotus"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["generated_text"] == "AMBER LOTUS"
    assert client.get(f"/v0/deployments/{dep['id']}").json()["last_used_at"] is not None
    costs = client.get("/v0/costs").json()
    assert costs["hourly_usd"] == pytest.approx(0.736)

    for text in ("AMBER", "OPAL"):
        output["generated_text"] = text
        runtime.results_queue.append((json.dumps(answer), "application/json", "AllTraffic", ""))
    batch = client.post(
        "/v0/inference/batch",
        data={"adapter_id": "adp_bbbb00000002", "parameters": json.dumps({"max_new_tokens": 4})},
        files={"file": ("p.jsonl", b'{"input": "amber"}\n{"nothing": 1}\n"opal"\n', "application/x-ndjson")},
    )
    assert batch.status_code == 200 and batch.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in batch.text.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert rows[0]["generated_text"] == "AMBER" and rows[2]["generated_text"] == "OPAL"
    assert rows[1]["error"]["code"] == "invalid_line"
    nobody = client.post(
        "/v0/inference/batch", data={"adapter_id": "adp_nope"}, files={"file": ("p", b"x\n")}
    )
    assert nobody.status_code == 404 and nobody.json()["code"] == "not_found"

    gone = client.delete(f"/v0/deployments/{dep['id']}").json()
    assert gone["status"] == "deleted"
    moto = moto_sagemaker()
    assert name not in moto.endpoints and name not in moto.endpoint_configs and name not in moto._models


def test_mixed_base_models_and_unknown_adapters_are_refused(client: TestClient) -> None:
    _adapter(client, "adp_aaaa00000001")
    _adapter(client, "adp_cccc00000003", base="Qwen/Qwen2.5-0.5B-Instruct")
    resp = client.post("/v0/deployments", json={"adapter_ids": ["adp_aaaa00000001", "adp_cccc00000003"]})
    assert resp.status_code == 400 and "one base model" in resp.json()["message"]
    assert client.post("/v0/deployments", json={"adapter_ids": ["adp_nope"]}).status_code == 404
    assert moto_sagemaker().endpoints == {}


def test_janitor_rules_on_sagemaker(client: TestClient) -> None:
    _adapter(client, "adp_aaaa00000001")
    idle = _deploy(client, ["adp_aaaa00000001"], ttl_seconds=600)
    fresh = _deploy(client, ["adp_aaaa00000001"], ttl_seconds=7200)
    old = _deploy(client, ["adp_aaaa00000001"], ttl_seconds=None, max_lifetime_seconds=3600)
    sm = boto3.client("sagemaker", region_name=REGION)
    # someone else's endpoint (no tags) and an orphan of ours (tagged, no live row)
    for name, tags in (
        ("their-endpoint", []),
        ("fastuner-dep-orphan0000001", [{"Key": "fastuner:managed", "Value": "true"}]),
    ):
        sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
        sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": name,
                    "InstanceType": "ml.g4dn.xlarge",
                    "InitialInstanceCount": 1,
                }
            ],
        )
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=tags)
    later = datetime.now(UTC) + timedelta(minutes=61)

    report = _janitor(client, later).run_once(dry_run=True)
    due = {idle["endpoint_name"], old["endpoint_name"], "fastuner-dep-orphan0000001"}
    assert {a.endpoint_name for a in report.actions} == due
    assert report.hourly_savings_usd == pytest.approx(2 * 0.736)
    assert len(moto_sagemaker().endpoints) == 5  # a dry run deletes nothing

    report = _janitor(client, later).run_once()
    assert all(a.done for a in report.actions), report
    reasons = {a.deployment_id: a.reason for a in report.actions}
    assert reasons[idle["id"]].startswith("idle") and reasons[old["id"]].startswith("max lifetime")
    assert set(moto_sagemaker().endpoints) == {fresh["endpoint_name"], "their-endpoint"}
    assert "their-endpoint" in moto_sagemaker()._models  # never touched
    assert client.get(f"/v0/deployments/{idle['id']}").json()["status"] == "deleted"
    assert client.get(f"/v0/deployments/{fresh['id']}").json()["status"] == "in_service"


def _count_deletes(client: TestClient, *, fail_first: int = 0) -> list[str]:
    """Record DeleteEndpoint calls; refuse the first ``fail_first`` (non-retryable for botocore)."""
    deletes: list[str] = []
    left = {"n": fail_first}

    def on_delete(request: Any, **_: Any) -> AWSResponse | None:
        name = json.loads(request.body)["EndpointName"]
        if left["n"]:
            left["n"] -= 1
            message = f"Cannot delete endpoint {name} in Updating status."
            response = aws_error(400, "ValidationException", message)(request)
            request.url = ANSWERED
            return response
        deletes.append(name)
        return None

    hook(_ctx(client).endpoints.sagemaker, "before-send.sagemaker.DeleteEndpoint", on_delete, first=True)
    return deletes


def test_a_failed_delete_is_retried_next_pass(client: TestClient) -> None:
    _adapter(client, "adp_aaaa00000001")
    deps = [_deploy(client, ["adp_aaaa00000001"], ttl_seconds=60) for _ in range(2)]
    deletes = _count_deletes(client, fail_first=1)
    later = datetime.now(UTC) + timedelta(hours=1)
    first = _janitor(client, later).run_once()
    assert sorted(bool(a.error) for a in first.actions) == [False, True]
    statuses = sorted(client.get(f"/v0/deployments/{d['id']}").json()["status"] for d in deps)
    assert statuses == ["deleted", "deleting"]  # not failed forever: retried next pass
    retry = _janitor(client, later).run_once()
    assert [a.done for a in retry.actions] == [True] and retry.actions[0].reason.startswith("idle")
    assert all(client.get(f"/v0/deployments/{d['id']}").json()["status"] == "deleted" for d in deps)
    assert sorted(deletes) == sorted(d["endpoint_name"] for d in deps)
    assert moto_sagemaker().endpoints == {} and moto_sagemaker()._models == {}


def test_concurrent_janitors_delete_each_endpoint_once(client: TestClient) -> None:
    _adapter(client, "adp_aaaa00000001")
    deps = [_deploy(client, ["adp_aaaa00000001"], ttl_seconds=60) for _ in range(3)]
    deletes = _count_deletes(client)
    later = datetime.now(UTC) + timedelta(hours=1)
    reports = race([_janitor(client, later).run_once for _ in range(3)])
    done = sorted(a.deployment_id for r in reports for a in r.actions if a.done)
    assert done == sorted(d["id"] for d in deps)  # each claimed by exactly one janitor
    assert sorted(deletes) == sorted(d["endpoint_name"] for d in deps)
    assert all(client.get(f"/v0/deployments/{d['id']}").json()["status"] == "deleted" for d in deps)
    assert moto_sagemaker().endpoints == {}
