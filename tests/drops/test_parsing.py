"""Pure parts: S3 event bodies, drop keys, bucket ↔ store keys, the sidecar."""

from __future__ import annotations

import json

import pytest

from api.domain.datasets import ValidationLimits
from api.domain.finetune import FineTuneRequest
from api.services.drops import keys, sidecar
from api.services.drops.events import MalformedMessage, ObjectCreated, parse_message
from tests.drops.sqs_support import s3_event
from tests.drops.support import SMOL


def test_s3_event_keys_are_url_decoded() -> None:
    body = s3_event("drop/acme/my data+v2 ü.jsonl", '"abc"')
    assert parse_message(body) == [ObjectCreated("fastuner-e2e", "drop/acme/my data+v2 ü.jsonl", "abc", None)]


def test_test_events_other_event_types_and_sns_envelopes() -> None:
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}
    assert parse_message(json.dumps(test_event)) == []
    assert parse_message(s3_event("drop/a/x.jsonl", "e", name="ObjectRemoved:Delete")) == []
    wrapped = json.dumps({"Type": "Notification", "Message": s3_event("drop/a/x.jsonl", "e")})
    assert [o.key for o in parse_message(wrapped)] == ["drop/a/x.jsonl"]
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "b"}, "object": {"key": "k", "versionId": "v1", "sequencer": "00"}},
    }
    assert parse_message(json.dumps({"Records": [record]})) == [ObjectCreated("b", "k", None, "v1")]


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        "[1, 2]",
        json.dumps({"hello": 1}),
        json.dumps({"Records": [{"s3": {}}]}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}),
    ],
)
def test_malformed_bodies(body: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(body)


def test_drop_keys() -> None:
    drop = keys.parse("drop/acme/reviews.v2.jsonl")
    assert drop == keys.DropKey("drop/acme/reviews.v2.jsonl", "acme", "reviews.v2")
    assert drop.sidecar_key == "drop/acme/reviews.v2.fastuner.json"
    assert drop.status_key == "drop/acme/reviews.v2.status.json"
    for not_a_drop in (
        "drop/acme/x.status.json",
        "drop/acme/x.fastuner.json",
        "acme/datasets/x.jsonl",
        "drop/.jsonl",
        "drop/acme/../x.jsonl",
        "drop//x.jsonl",
        "drop/acme/x.txt",
    ):
        assert keys.parse(not_a_drop) is None, not_a_drop
    nested = keys.parse("drop/acme/sub/x.jsonl")
    assert nested is not None and nested.problem and "sub-folders" in nested.problem
    bad_tenant = keys.parse("drop/ACME/x.jsonl")
    assert bad_tenant is not None and bad_tenant.tenant_id == "" and "tenant id" in (bad_tenant.problem or "")
    odd_name = keys.parse("drop/acme/.hidden.jsonl")
    assert odd_name is not None and "file name" in (odd_name.problem or "")
    empty_name = keys.parse("drop/acme/.jsonl")  # rejected (a status says why), not ignored
    assert empty_name is not None and empty_name.problem


def test_location_maps_bucket_keys_to_store_keys() -> None:
    loc = keys.Location("bkt", "plane/")
    assert loc.store_key("bkt", "plane/drop/a/x.jsonl") == "drop/a/x.jsonl"
    assert loc.store_key("other", "plane/drop/a/x.jsonl") is None
    assert loc.store_key("bkt", "drop/a/x.jsonl") is None
    assert loc.bucket_key("drop/a/x.jsonl") == "plane/drop/a/x.jsonl"


def test_sidecar_job_section_mirrors_the_api_request() -> None:
    assert set(sidecar.JobSection.model_fields) == set(FineTuneRequest.model_fields) - {
        "dataset_id",
        "dry_run",
    }


def _plan(raw: dict[str, object], default_base_model: str | None = SMOL) -> sidecar.DropPlan:
    return sidecar.plan(
        sidecar.parse(json.dumps(raw).encode()),
        name="reviews",
        dataset_id="ds_abc",
        limits=ValidationLimits(),
        default_base_model=default_base_model,
    )


def test_sidecar_defaults_are_the_apis() -> None:
    plan = _plan({})
    assert plan.dataset.name == "reviews" and plan.dataset.seed == 42
    assert plan.job == FineTuneRequest(dataset_id="ds_abc", base_model=SMOL)


def test_sidecar_values_and_split_text() -> None:
    plan = _plan(
        {
            "dataset": {"split": "0.9,0.1", "format": "input_target"},
            "job": {"base_model": "meta-llama/x", "method": "qlora", "spot": True, "max_steps": 5},
        }
    )
    assert plan.dataset.split.as_tuple() == (0.9, 0.1, 0.0)
    job = plan.job
    assert (job.base_model, job.method.value, job.spot, job.max_steps) == ("meta-llama/x", "qlora", True, 5)


def test_sidecar_errors_name_their_field() -> None:
    with pytest.raises(sidecar.SidecarError) as info:
        _plan({"dataset": {"name": "a/b", "seed": -1}, "job": {"lora_r": 0, "max_runtime_seconds": 5}})
    errors = info.value.errors
    assert any(e.startswith("dataset.name") for e in errors) and any(
        e.startswith("dataset.seed") for e in errors
    )
    assert any(e.startswith("job.lora_r") for e in errors)
    assert any(e.startswith("job.max_runtime_seconds") for e in errors)
    for raw in (
        {"job": {"dataset_id": "ds_x"}},
        {"job": {"dry_run": True}},
        {"extra": 1},
        {"dataset": {"split": "0.5"}},
    ):
        with pytest.raises(sidecar.SidecarError):
            _plan(raw)
    with pytest.raises(sidecar.SidecarError, match="base_model"):
        _plan({}, default_base_model=None)
