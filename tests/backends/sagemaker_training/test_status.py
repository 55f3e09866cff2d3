"""DescribeTrainingJob mapped to the job's status, times, billing and failure reason."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from api.backends.base import TrainingSpec
from api.backends.sagemaker import SageMakerBackend, status_from_description
from api.domain.enums import JobStatus
from api.domain.errors import BackendError
from tests.backends.sagemaker_training.support import JOB_NAME, set_state


# -- status -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "secondary", "expected"),
    [
        ("InProgress", "Starting", JobStatus.PROVISIONING),
        ("InProgress", "Pending", JobStatus.PROVISIONING),
        ("InProgress", "LaunchingMLInstances", JobStatus.PROVISIONING),
        ("InProgress", "PreparingTrainingStack", JobStatus.PROVISIONING),
        ("InProgress", "Downloading", JobStatus.PROVISIONING),
        ("InProgress", "DownloadingTrainingImage", JobStatus.PROVISIONING),
        ("InProgress", "Training", JobStatus.RUNNING),
        ("InProgress", "Uploading", JobStatus.RUNNING),
        ("InProgress", "Restarting", JobStatus.RUNNING),
        ("InProgress", "Interrupted", JobStatus.RUNNING),
        ("Stopping", "Stopping", JobStatus.CANCELLING),
        ("Stopping", "MaxRuntimeExceeded", JobStatus.RUNNING),  # not a user cancel: ends failed
        ("Stopped", "Stopped", JobStatus.CANCELLED),
        ("Stopped", "MaxRuntimeExceeded", JobStatus.FAILED),
        ("Stopped", "MaxWaitTimeExceeded", JobStatus.FAILED),
        ("Failed", "Failed", JobStatus.FAILED),
        ("Completed", "Completed", JobStatus.COMPLETED),
    ],
)
def test_status_mapping(
    backend: SageMakerBackend,
    make_spec: Callable[..., TrainingSpec],
    status: str,
    secondary: str,
    expected: JobStatus,
) -> None:
    state = backend.start_training(make_spec())
    set_state(status, secondary)
    observed = backend.describe_training(JOB_NAME, state)
    assert observed.status == expected
    assert observed.secondary_status == secondary
    assert (observed.failure_reason is not None) == (expected == JobStatus.FAILED)


def test_a_job_moves_through_its_life(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec]
) -> None:
    state = backend.start_training(make_spec())
    set_state("InProgress", "Starting", training_start_time=None, training_end_time=None)
    first = backend.describe_training(JOB_NAME, state)
    assert first.status == JobStatus.PROVISIONING
    assert (first.started_at, first.ended_at, first.billable_seconds) == (None, None, None)

    started = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    set_state("InProgress", "Training", training_start_time=started)
    assert backend.describe_training(JOB_NAME, state).status == JobStatus.RUNNING

    ended = datetime(2026, 11, 23, 10, 42, tzinfo=UTC)
    set_state("Completed", "Completed", training_end_time=ended, billable_time_in_seconds=2520)
    done = backend.describe_training(JOB_NAME, state)
    assert done.status == JobStatus.COMPLETED
    assert done.started_at == started
    assert done.ended_at == ended
    assert done.billable_seconds == 2520
    assert done.failure_reason is None


def test_failure_reason_is_surfaced(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec]
) -> None:
    state = backend.start_training(make_spec())
    reason = "AlgorithmError: CUDA out of memory; lower batch_size or use qlora"
    set_state("Failed", "Failed", failure_reason=reason, billable_time_in_seconds=95)
    observed = backend.describe_training(JOB_NAME, state)
    assert observed.status == JobStatus.FAILED
    assert observed.failure_reason == reason
    assert observed.billable_seconds == 95


def test_hitting_max_runtime_is_a_failure_with_a_clear_reason(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec]
) -> None:
    state = backend.start_training(make_spec(spot=True))
    set_state("Stopped", "MaxRuntimeExceeded")
    assert "maximum runtime" in (backend.describe_training(JOB_NAME, state).failure_reason or "")
    assert "3600 s" in (backend.describe_training(JOB_NAME, state).failure_reason or "")
    set_state("Stopped", "MaxWaitTimeExceeded")
    reason = backend.describe_training(JOB_NAME, state).failure_reason or ""
    assert "wait time" in reason
    assert "7200 s" in reason


def test_status_of_descriptions_moto_cannot_produce() -> None:
    # An InProgress secondary status we do not know: provisioning until training has started.
    assert status_from_description({"TrainingJobStatus": "InProgress"}).status == JobStatus.PROVISIONING
    started = {
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "New",
        "TrainingStartTime": datetime.now(UTC),
    }
    assert status_from_description(started).status == JobStatus.RUNNING
    failed = status_from_description({"TrainingJobStatus": "Failed"})
    assert failed.status == JobStatus.FAILED
    assert failed.failure_reason
    with pytest.raises(BackendError, match="unknown"):
        status_from_description({"TrainingJobStatus": "Exploded"})


def test_describing_a_missing_job_is_a_backend_error(backend: SageMakerBackend) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        backend.describe_training("never-created", {})
