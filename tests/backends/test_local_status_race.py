"""CI flake (stop 18): a job whose runner exited *while* its status was read was called "disappeared".

``describe_training`` looked for the exit file, then asked whether the runner lived; a runner that
wrote its exit file and exited between the two looks gone without a status, and a finished or
cancelled job was marked failed. The runner is asked first now: found gone, its exit file (written
before it exits) is there to read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from api.backends import local
from api.backends.local import STOP_FILE, LocalBackend
from api.backends.local_runner import EXIT_FILE
from api.domain.enums import JobStatus
from api.storage.local import LocalStore


@pytest.mark.parametrize(
    ("code", "stopped", "expected"),
    [("0", False, JobStatus.COMPLETED), ("143", True, JobStatus.CANCELLED)],
)
def test_a_runner_that_exits_between_the_checks_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str, stopped: bool, expected: JobStatus
) -> None:
    root = tmp_path / "jobs" / "j1"
    root.mkdir(parents=True)
    if stopped:
        (root / STOP_FILE).touch()

    def exits_now(pid: int, marker: bytes) -> bool:  # the runner finishes just as it is asked about
        (root / EXIT_FILE).write_text(f"{code}\n")
        return False

    monkeypatch.setattr(local, "alive", exits_now)
    be = LocalBackend(LocalStore(tmp_path / "store"), tmp_path / "jobs")
    status = be.describe_training("j1", {"root": str(root), "pid": 4242})
    assert status.status == expected, status.failure_reason


def test_a_runner_gone_without_an_exit_file_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "jobs" / "j2"
    root.mkdir(parents=True)
    monkeypatch.setattr(local, "alive", lambda pid, marker: False)
    be = LocalBackend(LocalStore(tmp_path / "store"), tmp_path / "jobs")
    status = be.describe_training("j2", {"root": str(root), "pid": 4242})
    assert status.status == JobStatus.FAILED and "disappeared" in (status.failure_reason or "")


def test_a_runner_gone_without_an_exit_file_after_a_stop_is_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel that lands before the runner installs its SIGTERM handler kills it with no exit
    file (seen in tests/openai cancelling jobs right after create): the stop was asked for."""
    root = tmp_path / "jobs" / "j3"
    root.mkdir(parents=True)
    (root / STOP_FILE).touch()
    monkeypatch.setattr(local, "alive", lambda pid, marker: False)
    be = LocalBackend(LocalStore(tmp_path / "store"), tmp_path / "jobs")
    status = be.describe_training("j3", {"root": str(root), "pid": 4242})
    assert status.status == JobStatus.CANCELLED and status.failure_reason is None
