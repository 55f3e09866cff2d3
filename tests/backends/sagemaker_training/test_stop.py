"""Stopping a training job: through the StopTrainingJob seam, idempotent, racing the job's end."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError

from api.backends.base import TrainingSpec
from api.backends.sagemaker import SageMakerBackend
from api.domain.enums import JobStatus
from api.domain.errors import BackendError
from tests.backends.sagemaker_training.support import JOB_NAME, set_state
from tests.support.aws import aws_ok, inject
from tests.support.calls import Calls


# -- stop -------------------------------------------------------------------------------------
def test_stop_goes_through_the_seam_and_ends_cancelled(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = backend.start_training(make_spec())
    set_state("InProgress", "Training")
    stopped: list[str] = []

    def fake_stop(name: str) -> None:  # what SageMaker does on StopTrainingJob
        stopped.append(name)
        set_state("Stopping", "Stopping")

    monkeypatch.setattr(backend, "_call_stop", fake_stop)
    backend.stop_training(JOB_NAME, state)
    assert stopped == [JOB_NAME]
    assert backend.describe_training(JOB_NAME, state).status == JobStatus.CANCELLING

    backend.stop_training(JOB_NAME, state)  # already stopping: nothing more to ask
    assert stopped == [JOB_NAME]

    set_state("Stopped", "Stopped", training_end_time=datetime.now(UTC))
    assert backend.describe_training(JOB_NAME, state).status == JobStatus.CANCELLED


@pytest.mark.parametrize("status", ["Completed", "Failed", "Stopped"])
def test_stopping_a_finished_job_is_a_no_op(
    backend: SageMakerBackend,
    make_spec: Callable[..., TrainingSpec],
    monkeypatch: pytest.MonkeyPatch,
    status: str,
) -> None:
    state = backend.start_training(make_spec())
    set_state(status, status)
    monkeypatch.setattr(backend, "_call_stop", lambda name: pytest.fail("must not call StopTrainingJob"))
    backend.stop_training(JOB_NAME, state)
    backend.stop_training("never-created", {})


def test_a_job_finishing_during_the_stop_is_a_no_op(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = backend.start_training(make_spec())
    set_state("InProgress", "Uploading")
    error = {"Error": {"Code": "ValidationException", "Message": "The training job is in status Completed."}}

    def raced(name: str) -> None:
        raise ClientError(error, "StopTrainingJob")  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "_call_stop", raced)
    backend.stop_training(JOB_NAME, state)

    denied = {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}

    def forbidden(name: str) -> None:
        raise ClientError(denied, "StopTrainingJob")  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "_call_stop", forbidden)
    with pytest.raises(BackendError, match="AccessDenied"):
        backend.stop_training(JOB_NAME, state)


def test_the_real_seam_sends_stop_training_job(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], calls: Calls
) -> None:
    state = backend.start_training(make_spec())
    set_state("InProgress", "Training")

    stops = inject(backend.sagemaker, "StopTrainingJob", [aws_ok()])
    backend.stop_training(JOB_NAME, state)
    assert stops["attempts"] == 1
    assert calls.of("StopTrainingJob") == [{"TrainingJobName": JOB_NAME}]
