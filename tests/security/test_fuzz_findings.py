"""Regressions for the server errors the OpenAPI fuzz (test_openapi_fuzz.py) and probing around it
turned up, on SQLite and PostgreSQL: each is now a 4xx with the usual ``{code, message, request_id}``.

* ``after`` of job events/metrics beyond the INTEGER columns (SQLite: OverflowError; PostgreSQL:
  integer out of range).
* ids holding a NUL (path, JSON body, form field): PostgreSQL cannot bind one; such an id names
  nothing, like any other unknown id. A NUL in a stored name (dataset name, base model) is refused.
* a hand-made page cursor with a naive timestamp or a NUL (the query could bind neither).
* a JSON body holding an unpaired surrogate escape (``"\\ud800"``): not Unicode text, it failed
  where it was stored, hashed or echoed in an error message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.sagemaker_support import SAMPLE, SMOL, SageMakerEnv, mocked_aws, sagemaker_settings

MAX_AFTER = 2**31 - 1  # INTEGER on PostgreSQL


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[SageMakerEnv]:
    with mocked_aws(), SageMakerEnv(sagemaker_settings(tmp_path / "home", db_url)) as e:
        yield e


def error(resp: Any, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code and body["request_id"] and body["message"], body
    message: str = body["message"]
    return message


def test_after_beyond_the_columns_is_422(env: SageMakerEnv) -> None:
    job = env.started(env.upload_dataset()["id"])["id"]
    for kind in ("events", "metrics"):
        url = f"/v0/finetune/{job}/{kind}"
        for after in (MAX_AFTER + 1, 2**63, 2**70, -1, -(2**63) - 1):
            assert "after" in error(env.client.get(url, params={"after": after}), 422, "invalid_request")
        resp = env.client.get(url, params={"after": MAX_AFTER})
        assert resp.status_code == 200 and resp.json() == [], resp.text
    assert env.client.get(f"/v0/finetune/{job}/events", params={"after": 0}).json()  # still there


NUL_PATHS = [
    "/v0/datasets/ds_x%00",
    "/v0/datasets/ds_x%00/manifest",
    "/v0/datasets/ds_x%00/preview",
    "/v0/finetune/ft_%00",
    "/v0/finetune/ft_%00/events",
    "/v0/finetune/ft_%00/metrics",
    "/v0/finetune/ft_%00/logs",
    "/v0/adapters/adp_%00",
    "/v0/adapters/adp_%00/download",
    "/v0/deployments/dep_%00",
]


def test_ids_with_a_nul_name_nothing(env: SageMakerEnv) -> None:
    c = env.client
    for path in NUL_PATHS:
        error(c.get(path), 404, "not_found")
    error(c.delete("/v0/datasets/ds_x%00"), 404, "not_found")
    error(c.delete("/v0/deployments/dep_%00"), 404, "not_found")
    error(c.post("/v0/finetune/ft_%00/cancel"), 404, "not_found")
    error(c.post("/v0/finetune", json={"dataset_id": "ds_\x00x", "base_model": SMOL}), 404, "not_found")
    error(c.post("/v0/deployments", json={"adapter_ids": ["adp_\x00"]}), 404, "not_found")
    error(c.post("/v0/inference", json={"adapter_id": "adp_\x00", "inputs": "x"}), 404, "not_found")
    error(c.post("/v0/inference", json={"deployment_id": "dep_\x00", "inputs": "x"}), 404, "not_found")
    resp = c.post("/v0/inference/batch", data={"adapter_id": "adp_\x00"}, files={"file": ("p", b"x\n")})
    error(resp, 404, "not_found")


@pytest.mark.parametrize(
    "cursor",
    ["2026-01-01T00:00:00+00:00|ds_\x00", "2026-01-01T00:00:00+00:00|", "2026-01-01T00:00:00|ds_a"],
    ids=["nul", "no-id", "naive"],
)
def test_hand_made_cursors_are_400(env: SageMakerEnv, cursor: str) -> None:
    for listing in ("/v0/datasets", "/v0/finetune", "/v0/adapters", "/v0/deployments"):
        assert (
            error(env.client.get(listing, params={"cursor": cursor}), 400, "bad_request") == "invalid cursor"
        )
    first = env.upload_dataset()["id"]
    second = env.upload_dataset()["id"]
    page = env.client.get("/v0/datasets", params={"limit": 1}).json()  # a cursor of ours still pages
    rest = env.client.get("/v0/datasets", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert sorted(d["id"] for d in page["items"] + rest["items"]) == sorted([first, second])


def test_a_nul_is_refused_in_stored_names(env: SageMakerEnv) -> None:
    with SAMPLE.open("rb") as fh:
        resp = env.client.post(
            "/v0/datasets",
            data={"name": "up\x00per"},
            files={"file": ("u.jsonl", fh, "application/x-ndjson")},
        )
    assert "control characters" in error(resp, 400, "bad_request")
    ds = env.upload_dataset()["id"]
    resp = env.start(ds, base_model="HuggingFaceTB/SmolLM2-\x00")
    assert "control characters" in error(resp, 422, "invalid_request")
    assert env.calls.of("CreateTrainingJob") == []


LONE_SURROGATE_BODIES = {  # "@" stands for the unpaired surrogate escape (json.dumps cannot write one)
    "/v0/finetune": [
        '{"dataset_id": "DS", "base_model": "SMOL", "hyperparameters": {"target_modules": "@"}}',
        '{"dataset_id": "DS", "base_model": "SMOL", "hyperparameters": {"@": 1}}',
        '{"dataset_id": "DS", "base_model": "SMOL", "instance_type": "ml.@"}',
        '{"dataset_id": "ds_@", "base_model": "SMOL"}',
    ],
    "/v0/deployments": ['{"adapter_ids": ["adp_@"]}'],
    "/v0/inference": [
        '{"adapter_id": "adp_@", "inputs": "x"}',
        '{"deployment_id": "dep_000000000000", "inputs": ["@"]}',
        '{"deployment_id": "dep_000000000000", "inputs": "x", "parameters": {"stop": ["@"]}}',
    ],
}


def test_unpaired_surrogates_in_json_are_422(env: SageMakerEnv) -> None:
    ds = env.upload_dataset()["id"]
    json_type = {"Content-Type": "application/json"}
    for url, bodies in LONE_SURROGATE_BODIES.items():
        for template in bodies:
            body = template.replace("DS", ds).replace("SMOL", SMOL)
            resp = env.client.post(url, content=body.replace("@", "\\ud800").encode(), headers=json_type)
            assert "unpaired surrogate" in error(resp, 422, "invalid_request"), body
            # A paired one (an emoji, as json.dumps escapes it) is ordinary text.
            resp = env.client.post(
                url, content=body.replace("@", "\\ud83d\\ude00").encode(), headers=json_type
            )
            assert resp.status_code < 500 and "surrogate" not in resp.text, (body, resp.text)
    assert len(env.calls.of("CreateTrainingJob")) == 1  # the emoji target_modules: a valid request


@pytest.mark.parametrize("key", ["", "caf\u00e9", "tab\there"], ids=["empty", "non-ascii", "control"])
def test_an_unusable_idempotency_key_is_422_not_stored(env: SageMakerEnv, key: str) -> None:
    """An empty key used to skip the replay lookup yet be stored, so its second use was a 500."""
    ds = env.upload_dataset()["id"]
    headers = {"Idempotency-Key": key.encode("latin-1")}  # raw bytes: httpx would refuse non-ASCII str
    for _ in range(2):
        error(env.start(ds, headers=headers), 422, "invalid_request")  # type: ignore[arg-type]
    assert env.client.get("/v0/finetune").json()["items"] == []


def test_the_same_key_twice_replays_the_first_job(env: SageMakerEnv) -> None:
    ds = env.upload_dataset()["id"]
    first = env.start(ds, headers={"Idempotency-Key": "k 1"})
    second = env.start(ds, headers={"Idempotency-Key": "k 1"})
    assert first.status_code == 201 and second.json()["id"] == first.json()["id"]
