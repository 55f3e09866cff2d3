"""Enumerations shared by the API, the database and the CLI."""

from __future__ import annotations

from enum import StrEnum


class DatasetFormat(StrEnum):
    INPUT_TARGET = "input_target"
    CHAT = "chat"
    PROMPT_COMPLETION = "prompt_completion"
    INSTRUCTION = "instruction"
    SHAREGPT = "sharegpt"
    TEXT = "text"  # continued pre-training: every token trained


class TaskType(StrEnum):
    GENERATION = "generation"
    CLASSIFICATION = "classification"
    QA = "qa"


class DatasetStatus(StrEnum):
    READY = "ready"
    DELETING = "deleting"
    DELETED = "deleted"


class JobStatus(StrEnum):
    QUEUED = "queued"  # legacy: rows written before `launching` existed
    LAUNCHING = "launching"  # the launch is recorded (backend job name), not yet confirmed
    PROVISIONING = "provisioning"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class TuneMethod(StrEnum):
    LORA = "lora"
    QLORA = "qlora"


class DeploymentStatus(StrEnum):
    CREATING = "creating"
    IN_SERVICE = "in_service"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
