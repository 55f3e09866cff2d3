"""/v1/fine_tuning/jobs and /v1/models on the local backend with the tiny model, driven by the real
``openai`` package: files → fine_tuning.jobs → events → checkpoints → models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.openai.conftest import FineTuned, OpenAIServer, upload_sample, wait_for_job

pytestmark = pytest.mark.slow


def test_a_job_trains_and_reports_like_openai(finetuned: FineTuned, tiny_model: Path) -> None:
    client, job = finetuned.client, finetuned.job
    assert job.object == "fine_tuning.job" and job.status == "succeeded"
    assert job.model == str(tiny_model) and job.training_file == finetuned.file_id
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("adp_")
    assert job.finished_at and job.finished_at >= job.created_at and job.error is None
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    assert isinstance(job.hyperparameters.n_epochs, int | float)  # "auto", resolved by the engine
    assert job.fastuner["status"] == "completed"  # type: ignore[attr-defined]  # our view rides along

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert all(e.object == "fine_tuning.job.event" for e in events)
    times = [e.created_at for e in events]
    assert times == sorted(times, reverse=True)  # newest first
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [8, 6, 4, 2]  # log_every=2, max_steps=8
    assert all(e.data["train_loss"] > 0 and "Step" in e.message for e in metrics)
    # the engine validates at the last step (and every eval_every): OpenAI's valid_loss, in nats
    assert metrics[0].data["valid_loss"] > 0 and "validation loss=" in metrics[0].message
    assert any("→ completed" in e.message for e in events if e.type == "message")
    # the events page like any OpenAI list
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert [e.id for e in page.data] == [e.id for e in events[:2]] and page.has_more
    later = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert [e.id for e in later.data] == [e.id for e in events[2:5]]

    (checkpoint,) = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoint.fine_tuned_model_checkpoint == finetuned.adapter_id
    assert checkpoint.fine_tuning_job_id == job.id and checkpoint.step_number == 8
    assert checkpoint.metrics.train_loss and checkpoint.metrics.valid_loss

    models = {m.id: m for m in client.models.list()}
    assert models[finetuned.adapter_id].owned_by == finetuned.job.organization_id
    assert models[str(tiny_model)].owned_by == "fastuner"
    assert client.models.retrieve(finetuned.adapter_id).id == finetuned.adapter_id
    assert client.models.retrieve(str(tiny_model)).id == str(tiny_model)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("adp_000000000000")


def test_another_tenants_ids_are_not_found(openai_server: OpenAIServer, finetuned: FineTuned) -> None:
    job_id = finetuned.job.id
    with openai_server.client(openai_server.new_key()) as other:
        for call in [
            lambda: other.fine_tuning.jobs.retrieve(job_id),
            lambda: other.fine_tuning.jobs.cancel(job_id),
            lambda: other.fine_tuning.jobs.list_events(job_id),
            lambda: other.fine_tuning.jobs.checkpoints.list(job_id),
            lambda: other.fine_tuning.jobs.list(after=job_id),
            lambda: other.models.retrieve(finetuned.adapter_id),
            lambda: other.fine_tuning.jobs.create(training_file=finetuned.file_id, model=finetuned.job.model),
        ]:
            with pytest.raises(openai.NotFoundError):
                call()
        assert list(other.fine_tuning.jobs.list()) == []
        assert finetuned.adapter_id not in {m.id for m in other.models.list()}
    assert finetuned.client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"  # untouched


def test_cancel_idempotency_and_pagination(openai_client: Any, tiny_model: Path) -> None:
    file = upload_sample(openai_client)
    long_run: dict[str, Any] = {"fastuner": {"max_steps": 5000, "hyperparameters": {"log_every": 1}}}

    def start(**kw: Any) -> Any:
        return openai_client.fine_tuning.jobs.create(
            training_file=file.id, model=str(tiny_model), extra_body=long_run, **kw
        )

    first = start(suffix="one", metadata={"team": "a"}, seed=7, extra_headers={"Idempotency-Key": "k-1"})
    assert first.status in ("queued", "running") and first.seed == 7
    assert first.metadata == {"team": "a"} and first.user_provided_suffix == "one"
    again = start(suffix="one", metadata={"team": "a"}, seed=7, extra_headers={"Idempotency-Key": "k-1"})
    assert again.id == first.id  # a retried create starts nothing new
    with pytest.raises(openai.ConflictError):  # the same key for another request
        start(seed=8, extra_headers={"Idempotency-Key": "k-1"})
    jobs = [first, start(), start()]
    for job in jobs:
        assert openai_client.fine_tuning.jobs.cancel(job.id).status == "cancelled"

    page = openai_client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [jobs[2].id, jobs[1].id] and page.has_more  # newest first
    rest = openai_client.fine_tuning.jobs.list(limit=2, after=page.data[-1].id)
    assert [j.id for j in rest.data] == [first.id] and not rest.has_more
    assert [j.id for j in openai_client.fine_tuning.jobs.list(limit=1)] == [j.id for j in jobs[::-1]]

    for job in jobs:  # stopped for good (our status: cancelling → cancelled)
        done = wait_for_job(openai_client, job.id, lambda j: j.fastuner["status"] == "cancelled")
        assert done.status == "cancelled" and done.fine_tuned_model is None and done.finished_at
    with pytest.raises(openai.ConflictError):
        openai_client.fine_tuning.jobs.cancel(first.id)
    assert openai_client.fine_tuning.jobs.checkpoints.list(first.id).data == []


def test_refused_requests_name_the_parameter(openai_client: Any, tiny_model: Path) -> None:
    file = upload_sample(openai_client)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"validation_file": file.id}, "validation_file"),
        ({"hyperparameters": {"learning_rate_multiplier": 1000}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"extra_body": {"fastuner": {"max_steps": 0}}}, "fastuner.max_steps"),
        ({"extra_body": {"fastuner": {"dataset_id": file.id}}}, "fastuner.dataset_id"),
    ]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            openai_client.fine_tuning.jobs.create(training_file=file.id, model=str(tiny_model), **kw)
        assert isinstance(err.value.body, dict) and err.value.body["param"] == param, (kw, err.value.body)
    with pytest.raises(openai.BadRequestError) as err:  # the engine's own check, before any compute
        openai_client.fine_tuning.jobs.create(
            training_file=file.id,
            model=str(tiny_model),
            extra_body={"fastuner": {"hyperparameters": {"bogus": 1}}},
        )
    assert "bogus" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.fine_tuning.jobs.create(training_file=file.id, model="somebody/else")
    assert "not allowed" in err.value.message
    with pytest.raises(openai.NotFoundError):
        openai_client.fine_tuning.jobs.create(training_file="ds_000000000000", model=str(tiny_model))
    assert list(openai_client.fine_tuning.jobs.list()) == []
