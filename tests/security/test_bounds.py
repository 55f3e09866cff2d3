"""Issue 12, item 5 (the request side): every numeric hyperparameter is finite and within its
documented range, refused with a 422 before anything is stored or launched; ``num_processes`` at
most what the node can run. On SQLite and PostgreSQL.

(The runtime side, max_runtime_seconds and non-finite loss, is in test_runtime_limits.py.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.backends.sagemaker_instances import lookup
from api.domain.errors import BadRequest
from api.services.finetune import preflight
from api.settings import Settings
from tests.api.support import authorize, rows, upload, write_jsonl

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    # local_hub_downloads: these tests are about the bounds, not about whether SMOL is on this machine
    # (without it, preflight refuses a hub id not pulled: tests/models/test_models_api.py).
    settings = Settings(
        home=tmp_path / "home",
        database_url=db_url,
        log_json=False,
        background_tasks=False,
        local_hub_downloads=True,
    )
    with authorize(TestClient(create_app(settings), raise_server_exceptions=False)) as c:
        c.dataset_id = upload(c, write_jsonl(tmp_path / "d.jsonl", rows())).json()["id"]  # type: ignore[attr-defined]
        yield c


def start(client: TestClient, body: dict[str, Any] | str) -> Any:
    if isinstance(body, str):  # raw JSON (NaN and Infinity literals)
        return client.post("/v0/finetune", content=body, headers={"Content-Type": "application/json"})
    ds = client.dataset_id  # type: ignore[attr-defined]
    return client.post("/v0/finetune", json={"dataset_id": ds, "base_model": SMOL, **body})


def refused(resp: Any, needle: str) -> None:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "invalid_request" and needle in body["message"], body


def nothing_started(client: TestClient) -> None:
    assert client.get("/v0/finetune").json()["items"] == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"max_steps": 1e30}, "max_steps"),
        ({"max_steps": 1_000_001}, "max_steps"),
        ({"epochs": 1001}, "epochs"),
        ({"learning_rate": 1.5}, "learning_rate"),
        ({"lora_r": 4096}, "lora_r"),
        ({"target_s": 0}, "target_s"),
        ({"hyperparameters": {"weight_decay": "inf"}}, "weight_decay"),
        ({"hyperparameters": {"kp": "1e309"}}, "kp"),
        ({"hyperparameters": {"lambda_max": "NaN"}}, "lambda_max"),
        ({"hyperparameters": {"lr": "-Infinity"}}, "lr"),
        ({"hyperparameters": {f"k{i}": 1 for i in range(101)}}, "hyperparameters"),
        ({"hyperparameters": {"target_modules": "x" * 5000}}, "target_modules"),
    ],
)
def test_out_of_range_or_non_finite_is_a_422_up_front(
    client: TestClient, body: dict[str, Any], needle: str
) -> None:
    refused(start(client, body), needle)
    refused(start(client, {**body, "dry_run": True}), needle)
    nothing_started(client)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_non_finite_json_numbers_are_a_422(client: TestClient, literal: str) -> None:
    ds = client.dataset_id  # type: ignore[attr-defined]
    for field in ("learning_rate", "epochs", "target_s"):
        body = f'{{"dataset_id": "{ds}", "base_model": "{SMOL}", "{field}": {literal}}}'
        refused(start(client, body), field)
    body = (
        f'{{"dataset_id": "{ds}", "base_model": "{SMOL}", "hyperparameters": {{"weight_decay": {literal}}}}}'
    )
    refused(start(client, body), "weight_decay")
    nothing_started(client)


@pytest.mark.parametrize(
    ("hp", "needle"),
    [
        ({"max_steps": 10**7}, "max_steps"),
        ({"weight_decay": 1e300}, "weight_decay"),
        ({"weight_decay": "11"}, "weight_decay"),
        ({"kp": 11}, "kp"),
        ({"ki": -1}, "ki"),
        ({"lambda_max": 1e9}, "lambda_max"),
        ({"lambda_init": 1e5}, "lambda_init"),
        ({"lambda_fixed": 1e5, "scu": "fixed"}, "lambda_fixed"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"lora_alpha": 1e9}, "lora_alpha"),
        ({"prior_sigma": 1e9}, "prior_sigma"),
        ({"max_grad_norm": 1e9}, "max_grad_norm"),
        ({"batch_size": 10**6}, "batch_size"),
        ({"grad_accum": 10**6}, "grad_accum"),
        ({"block_size": 10**7}, "block_size"),
        ({"seed": -1}, "seed"),
        ({"keep_checkpoints": 10**4}, "keep_checkpoints"),
        ({"num_processes": 500}, "num_processes"),
        ({"unknown_knob": 1}, "unknown_knob"),
    ],
)
def test_engine_ranges_are_a_422_before_anything_runs(
    client: TestClient, hp: dict[str, Any], needle: str
) -> None:
    for dry_run in (True, False):
        refused(start(client, {"hyperparameters": hp, "dry_run": dry_run}), needle)
    nothing_started(client)


def test_num_processes_at_most_the_host_cores_on_the_local_backend(client: TestClient) -> None:
    cores = os.cpu_count() or 1
    resp = start(client, {"hyperparameters": {"num_processes": cores + 1}, "dry_run": True})
    refused(resp, f"num_processes={cores + 1}")
    assert f"at most {cores}" in resp.json()["message"]  # the fix is in the message
    nothing_started(client)
    ok = start(client, {"hyperparameters": {"num_processes": 1}, "dry_run": True})
    assert ok.status_code == 200, ok.text


def test_num_processes_at_most_the_instance_gpus() -> None:
    four = lookup("ml.g5.12xlarge")
    cpu = lookup("ml.m5.xlarge")
    assert four is not None and cpu is not None
    preflight.check_processes(4, four)
    preflight.check_processes(None, cpu)
    preflight.check_processes(1, cpu)
    with pytest.raises(
        BadRequest, match=r"num_processes=5 .*ml\.g5\.12xlarge can run \(4 GPU\(s\)\).*at most 4"
    ):
        preflight.check_processes(5, four)
    with pytest.raises(BadRequest, match="at most 1"):
        preflight.check_processes(2, cpu)


def test_values_inside_the_ranges_are_accepted(client: TestClient) -> None:
    hp = {
        "weight_decay": 0.1,
        "kp": "0.5",
        "lambda_max": 100,
        "max_grad_norm": 5,
        "seed": 7,
        "lora_dropout": 0.1,
    }
    resp = start(client, {"max_steps": 1_000_000, "epochs": 2, "hyperparameters": hp, "dry_run": True})
    assert resp.status_code == 200, resp.text
    assert resp.json()["hyperparameters"]["max_steps"] == "1000000"


def test_ranges_are_documented_in_the_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["FineTuneRequest"]["properties"]
    assert "1,000,000" in schema["max_steps"]["description"]
    assert "finite" in schema["hyperparameters"]["description"]
    assert "max runtime" in schema["max_runtime_seconds"]["description"]
