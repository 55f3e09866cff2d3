"""How a ``DescribeTrainingJob`` answer maps onto a job's status (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from api.backends.base import TrainingStatus
from api.domain.enums import JobStatus
from api.domain.errors import BackendError

# SecondaryStatus while TrainingJobStatus is InProgress.
PROVISIONING_SECONDARY = frozenset(
    {
        "Starting",
        "Pending",
        "LaunchingMLInstances",
        "PreparingTrainingStack",
        "Downloading",
        "DownloadingTrainingImage",
    }
)
RUNNING_SECONDARY = frozenset({"Training", "Uploading", "Restarting", "Interrupted", "Updating"})
# SecondaryStatus of a job SageMaker stopped because it hit a StoppingCondition: a failure, not a cancel.
LIMIT_SECONDARY: dict[str, str] = {
    "MaxRuntimeExceeded": "the job exceeded its maximum runtime (StoppingCondition.MaxRuntimeInSeconds = {runtime})",
    "MaxWaitTimeExceeded": "the spot job exceeded its maximum wait time (StoppingCondition.MaxWaitTimeInSeconds = {wait}); "
    "spot capacity was not available long enough",
}


def status_from_description(desc: Mapping[str, Any]) -> TrainingStatus:
    """Map a ``DescribeTrainingJob`` response onto our job status."""
    primary = str(desc.get("TrainingJobStatus", ""))
    secondary = desc.get("SecondaryStatus")
    secondary = str(secondary) if secondary else None
    failure: str | None = None
    if primary == "InProgress":
        if secondary in PROVISIONING_SECONDARY:
            status = JobStatus.PROVISIONING
        elif secondary in RUNNING_SECONDARY:
            status = JobStatus.RUNNING
        else:  # a secondary status we do not know yet: training has begun once a start time exists
            status = JobStatus.RUNNING if desc.get("TrainingStartTime") else JobStatus.PROVISIONING
    elif primary == "Stopping":
        # SageMaker stopping a job at a StoppingCondition is not a user cancel: it ends as failed.
        status = JobStatus.RUNNING if secondary in LIMIT_SECONDARY else JobStatus.CANCELLING
    elif primary == "Stopped":
        if secondary in LIMIT_SECONDARY:
            status, failure = JobStatus.FAILED, _limit_reason(secondary, desc)
        else:
            status = JobStatus.CANCELLED
    elif primary == "Failed":
        status = JobStatus.FAILED
        reason = desc.get("FailureReason")
        if reason:
            failure = str(reason)
        elif secondary in LIMIT_SECONDARY:
            failure = _limit_reason(secondary, desc)
        else:
            failure = "the SageMaker training job failed without a reason"
    elif primary == "Completed":
        status = JobStatus.COMPLETED
    else:
        raise BackendError(f"unknown SageMaker TrainingJobStatus {primary!r}")
    billable = desc.get("BillableTimeInSeconds")
    return TrainingStatus(
        status=status,
        secondary_status=secondary,
        failure_reason=failure,
        started_at=_as_datetime(desc.get("TrainingStartTime")),
        ended_at=_as_datetime(desc.get("TrainingEndTime")),
        billable_seconds=int(billable) if billable is not None else None,
    )


def _limit_reason(secondary: str, desc: Mapping[str, Any]) -> str:
    cond = desc.get("StoppingCondition") or {}
    runtime = cond.get("MaxRuntimeInSeconds", "?")
    wait = cond.get("MaxWaitTimeInSeconds", "?")
    return LIMIT_SECONDARY[secondary].format(runtime=f"{runtime} s", wait=f"{wait} s")


def _as_datetime(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None
