"""Issue 12, item 5: the local backend enforces ``max_runtime_seconds`` (it did not at all).

At the limit the supervisor writes ``max_runtime_exceeded`` and sends the job SIGTERM (the trainer
saves a checkpoint and exits 143); a job that ignores it is killed with its whole process group
after the grace period; either way the job fails with reason "max runtime". Fake training commands
here; tests/e2e/test_runtime_limits.py runs the real trainer through the API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api.backends.local import MAX_RUNTIME_SECONDARY, LocalBackend
from api.backends.local_runner import EXIT_FILE, MAX_RUNTIME_FILE
from api.backends.processes import alive
from api.domain.enums import JobStatus
from api.storage.local import LocalStore

# A stand-in trainer: on SIGTERM it "checkpoints" (status.json, as the engine writes it) and exits 143.
POLITE = """
import json, os, signal, sys, time
root = os.environ["OPT_ML_ROOT"]
def stop(*_):
    os.makedirs(root + "/output/data", exist_ok=True)
    json.dump({"status": "interrupted", "step": 7, "total_steps": 100}, open(root + "/output/data/status.json", "w"))
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
open(root + "/started", "w").close()
time.sleep(120)
"""
# One that ignores SIGTERM and has a worker of its own (like torchrun's) that ignores it too.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
open(os.environ["OPT_ML_ROOT"] + "/worker.pid", "w").write(str(worker.pid))
time.sleep(120)
"""


def runner(root: Path, *args: str, code: str) -> subprocess.Popen[bytes]:
    """The supervisor as the backend spawns it: detached, in its own session and process group."""
    root.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "api.backends.local_runner",
        str(root),
        *args,
        "--",
        sys.executable,
        "-c",
        code,
    ]
    return subprocess.Popen(cmd, start_new_session=True, cwd=root)


def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(LocalStore(tmp_path / "store"), tmp_path / "jobs")


def test_at_the_limit_the_job_is_stopped_and_fails_with_max_runtime(tmp_path: Path) -> None:
    root = tmp_path / "jobs" / "j1"
    started = time.monotonic()
    proc = runner(root, "--max-runtime", "2", "--stop-grace", "30", code=POLITE)
    assert proc.wait(timeout=60) == 143
    assert 2 <= time.monotonic() - started < 30
    assert (root / "started").exists() and (root / MAX_RUNTIME_FILE).read_text().strip() == "2"
    assert (root / EXIT_FILE).read_text().strip() == "143"
    status = backend(tmp_path).describe_training("j1", {"root": str(root), "pid": proc.pid})
    assert status.status == JobStatus.FAILED and status.secondary_status == MAX_RUNTIME_SECONDARY
    assert status.failure_reason is not None
    assert status.failure_reason.startswith("max runtime: the job exceeded its maximum runtime")
    assert "max_runtime_seconds = 2 s" in status.failure_reason
    assert "after saving a checkpoint at step 7 of 100" in status.failure_reason


def test_a_job_that_ignores_sigterm_is_killed_with_its_workers(tmp_path: Path) -> None:
    root = tmp_path / "jobs" / "j2"
    proc = runner(root, "--max-runtime", "2", "--stop-grace", "1", code=STUBBORN)
    proc.wait(timeout=60)
    assert (root / EXIT_FILE).read_text().strip() == "137"
    worker = int((root / "worker.pid").read_text())
    deadline = time.monotonic() + 10
    while alive(worker, b"time.sleep") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker, b"time.sleep"), "the job's worker outlived the kill"
    status = backend(tmp_path).describe_training("j2", {"root": str(root), "pid": proc.pid})
    assert status.status == JobStatus.FAILED and status.failure_reason is not None
    assert status.failure_reason.startswith("max runtime") and "killed" in status.failure_reason


def test_a_job_within_its_limit_is_untouched(tmp_path: Path) -> None:
    root = tmp_path / "jobs" / "j3"
    proc = runner(root, "--max-runtime", "60", code="print('done')")
    assert proc.wait(timeout=60) == 0
    assert not (root / MAX_RUNTIME_FILE).exists()
    status = backend(tmp_path).describe_training("j3", {"root": str(root), "pid": proc.pid})
    assert status.status == JobStatus.COMPLETED


def test_a_cancel_is_still_a_cancel(tmp_path: Path) -> None:
    root = tmp_path / "jobs" / "j4"
    proc = runner(root, "--max-runtime", "60", code=POLITE)
    deadline = time.monotonic() + 30
    while not (root / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    be = backend(tmp_path)
    state = {"root": str(root), "pid": proc.pid}
    be.stop_training("j4", state)
    assert proc.wait(timeout=30) == 143
    assert be.describe_training("j4", state).status == JobStatus.CANCELLED


def test_the_backend_passes_the_limit_to_its_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.backends import local as local_mod
    from api.backends.base import TrainingSpec

    seen: list[list[str]] = []

    def spawn(cmd: list[str], **_: object) -> int:
        seen.append(cmd)
        return os.getpid()

    monkeypatch.setattr(local_mod, "spawn_detached", spawn)
    be = LocalBackend(LocalStore(tmp_path / "store"), tmp_path / "jobs", stop_grace_s=5)
    spec = TrainingSpec(
        "ft_x", "t", "job-x", {"max_steps": "1"}, {}, "t/o", "t/c", "local", max_runtime_seconds=321
    )
    state = be.start_training(spec)
    cmd = seen[0]
    assert cmd[cmd.index("--max-runtime") + 1] == "321" and cmd[cmd.index("--stop-grace") + 1] == "5"
    assert cmd[1:4] == ["-m", "api.backends.local_runner", str(tmp_path / "jobs" / "job-x")]
    assert json.loads((Path(state["root"]) / "launch.json").read_text())["pid"] == os.getpid()


def test_usage_errors() -> None:
    from api.backends.local_runner import main

    assert main([]) == 2 and main(["root"]) == 2 and main(["root", "--max-runtime", "x", "--", "true"]) == 2
    assert main(["root", "--bogus", "1", "--", "true"]) == 2 and main(["root", "--"]) == 2
