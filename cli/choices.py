"""Click choices derived from the domain's values (``api.domain``): a list is written once."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

import click

from api.domain.datasets import SPLIT_NAMES
from api.domain.drops import DROP_SOURCES
from api.domain.enums import DatasetFormat, JobStatus, TaskType, TuneMethod


def choice_of(values: type[StrEnum] | Iterable[str]) -> click.Choice[str]:
    """A ``click.Choice`` of an enum's values (or of these strings), in their order."""
    return click.Choice([str(v) for v in values])


TASK_TYPES = choice_of(TaskType)
FORMATS = choice_of(DatasetFormat)
SPLITS = choice_of(SPLIT_NAMES)
METHODS = choice_of(TuneMethod)
JOB_STATUSES = choice_of(JobStatus)
WORKER_SOURCES = choice_of(["auto", *DROP_SOURCES])
