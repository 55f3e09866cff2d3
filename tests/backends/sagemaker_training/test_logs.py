"""Metrics and log lines read from CloudWatch Logs, across streams and restarts."""

from __future__ import annotations

from typing import Any

import pytest
from scu.metrics_format import format_train_line

from api.backends.sagemaker import LOG_GROUP, LOG_REREAD_MS, SageMakerBackend
from tests.backends.sagemaker_training.support import JOB_NAME, T0, expected_record, put_log
from tests.support.aws import hook
from tests.support.engine_lines import train_record


@pytest.mark.parametrize("page_size", [10_000, 2])
def test_read_metrics(backend: SageMakerBackend, job_log: dict[str, list[str]], page_size: int) -> None:
    backend.log_page_size = page_size
    assert backend.read_metrics(JOB_NAME, {}, after_step=0) == [
        expected_record(10, 2.5),
        expected_record(20, 2.4),
        expected_record(30, 2.2),  # the replayed step after the restart wins
        expected_record(40, 2.1),
    ]
    assert backend.read_metrics(JOB_NAME, {}, after_step=20) == [
        expected_record(30, 2.2),
        expected_record(40, 2.1),
    ]
    assert backend.read_metrics(JOB_NAME, {}, after_step=40) == []


@pytest.mark.parametrize("page_size", [10_000, 2])
def test_read_logs(backend: SageMakerBackend, job_log: dict[str, list[str]], page_size: int) -> None:
    backend.log_page_size = page_size
    lines = job_log["lines"]
    assert backend.read_logs(JOB_NAME, {}, tail=3) == lines[-3:]
    assert backend.read_logs(JOB_NAME, {}, tail=7) == lines[-7:]
    assert backend.read_logs(JOB_NAME, {}, tail=1000) == lines
    assert backend.read_logs(JOB_NAME, {}, tail=0) == []


def test_metrics_are_read_incrementally(backend: SageMakerBackend, job_log: dict[str, list[str]]) -> None:
    queries: list[dict[str, Any]] = []
    hook(
        backend.logs,
        "before-parameter-build.logs.FilterLogEvents",
        lambda params, **_: queries.append(dict(params)),
    )

    assert [r["step"] for r in backend.read_metrics(JOB_NAME, {}, after_step=0)] == [10, 20, 30, 40]
    assert "startTime" not in queries[-1]
    assert queries[-1]["logStreamNamePrefix"] == f"{JOB_NAME}/"

    # New lines arrive, one of them late (older than the newest event already read).
    stream = f"{JOB_NAME}/algo-1-1763900100"
    put_log(backend.logs, stream, [(T0 + 99, format_train_line(train_record(35, 2.15)))], create=False)
    put_log(backend.logs, stream, [(T0 + 200, format_train_line(train_record(50, 2.0)))], create=False)
    records = backend.read_metrics(JOB_NAME, {}, after_step=40)
    assert queries[-1]["startTime"] == T0 + 104 - LOG_REREAD_MS
    assert records == [expected_record(50, 2.0)]

    # Asked again from further back (the service lost rows): everything is read again.
    records = backend.read_metrics(JOB_NAME, {}, after_step=0)
    assert "startTime" not in queries[-1]
    assert [r["step"] for r in records] == [10, 20, 30, 35, 40, 50]
    assert len(queries) == 3


def test_no_log_yet(backend: SageMakerBackend) -> None:
    # Before the instances start there is no stream (or not even the group).
    assert backend.read_metrics(JOB_NAME, {}, after_step=0) == []
    assert backend.read_logs(JOB_NAME, {}, tail=10) == []
    backend.logs.create_log_group(logGroupName=LOG_GROUP)
    assert backend.read_metrics(JOB_NAME, {}, after_step=0) == []
    assert backend.read_logs(JOB_NAME, {}, tail=10) == []
