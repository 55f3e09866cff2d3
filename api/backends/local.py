"""The ``local`` backend: the training container's entrypoint as a detached subprocess.

Each job gets a directory laid out like SageMaker's ``/opt/ml`` (hyperparameters.json,
resourceconfig.json, input channels copied from the store), and ``api.backends.local_runner``
supervises ``python -m scu.entry train`` there in its own session, so the job keeps running if the
control plane stops; a restarted control plane re-attaches through the pid and the exit file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.backends.base import TrainingSpec, TrainingStatus
from api.backends.local_runner import EXIT_FILE
from api.domain.enums import JobStatus
from api.domain.errors import BackendError
from api.domain.metrics import parse_metric_records
from api.logging import get_logger
from api.storage.base import ObjectStore

log = get_logger("backend.local")

EXIT_INTERRUPTED = 143
STOP_FILE = "stop_requested"
LAUNCH_FILE = "launch.json"
LOG_FILE = "logs.txt"

# Popen handles of jobs started by this process, so finished children are reaped (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


class LocalBackend:
    name = "local"

    def __init__(self, store: ObjectStore, jobs_dir: Path, *, python: str | None = None) -> None:
        self.store = store
        self.jobs_dir = jobs_dir
        self.python = python or sys.executable

    # -- launch -------------------------------------------------------------------------------
    def start_training(self, spec: TrainingSpec) -> dict[str, Any]:
        root = self.jobs_dir / spec.job_name
        launch = root / LAUNCH_FILE
        if launch.is_file():  # idempotent: this job was launched already
            state: dict[str, Any] = json.loads(launch.read_text())
            return state
        if root.exists():  # a launch that died half-way: start clean
            shutil.rmtree(root)
        config = root / "input" / "config"
        config.mkdir(parents=True)
        (config / "hyperparameters.json").write_text(json.dumps(spec.hyperparameters, indent=2))
        (config / "resourceconfig.json").write_text(
            json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "lo"})
        )
        for channel, key in spec.channels.items():
            dest = root / "input" / "data" / channel / key.rsplit("/", 1)[-1]
            self.store.download_file(key, dest)
        for sub in ("model", "checkpoints", "output/data"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        cmd = [
            self.python, "-m", "api.backends.local_runner", str(root), "--",
            self.python, "-m", "scu.entry", "train",
        ]  # fmt: skip
        with (root / LOG_FILE).open("ab") as logf:
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=dict(os.environ, OPT_ML_ROOT=str(root), PYTHONUNBUFFERED="1"),
                    cwd=root,
                )
            except OSError as exc:
                raise BackendError(f"could not start the training process: {exc}") from exc
        _children[proc.pid] = proc
        state = {"root": str(root), "pid": proc.pid, "started_at": datetime.now(UTC).isoformat()}
        tmp = root / (LAUNCH_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(launch)
        log.info("local training started", extra={"job_name": spec.job_name, "pid": proc.pid})
        return state

    # -- status -------------------------------------------------------------------------------
    def describe_training(self, job_name: str, state: dict[str, Any]) -> TrainingStatus:
        root = self._root(job_name, state)
        pid = int(state.get("pid", 0))
        if pid in _children:
            _children[pid].poll()
        started = _parse_time(state.get("started_at"))
        exit_file = root / EXIT_FILE
        if exit_file.is_file():
            code = int(exit_file.read_text().strip() or 1)
            ended = datetime.fromtimestamp(exit_file.stat().st_mtime, UTC)
            _children.pop(pid, None)
            billable = int((ended - started).total_seconds()) if started else None
            if code == 0:
                return TrainingStatus(JobStatus.COMPLETED, "Completed", None, started, ended, billable)
            if code == EXIT_INTERRUPTED and (root / STOP_FILE).exists():
                return TrainingStatus(JobStatus.CANCELLED, "Stopped", None, started, ended, billable)
            return TrainingStatus(
                JobStatus.FAILED, "Failed", self._failure_reason(root, code), started, ended, billable
            )
        if not _alive(pid):
            return TrainingStatus(
                JobStatus.FAILED,
                "Failed",
                "the training process disappeared without an exit status (was the machine restarted?)",
                started,
                datetime.now(UTC),
            )
        if (root / STOP_FILE).exists():
            return TrainingStatus(JobStatus.CANCELLING, "Stopping", None, started)
        training = (root / "output" / "data" / "metrics.jsonl").is_file()
        return TrainingStatus(
            JobStatus.RUNNING if training else JobStatus.PROVISIONING,
            "Training" if training else "Starting",
            None,
            started,
        )

    def _failure_reason(self, root: Path, code: int) -> str:
        failure = root / "output" / "failure"
        if failure.is_file() and (text := failure.read_text(errors="replace").strip()):
            return text
        tail = " | ".join(self.read_logs(root.name, {"root": str(root)}, 5))
        return f"training exited with status {code}" + (f": {tail}" if tail else "")

    def stop_training(self, job_name: str, state: dict[str, Any]) -> None:
        root = self._root(job_name, state)
        if (root / EXIT_FILE).exists():
            return
        (root / STOP_FILE).touch()
        pid = int(state.get("pid", 0))
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)  # the runner forwards it; the engine checkpoints and exits 143

    # -- outputs ------------------------------------------------------------------------------
    def read_metrics(self, job_name: str, state: dict[str, Any], after_step: int) -> list[dict[str, float]]:
        path = self._root(job_name, state) / "output" / "data" / "metrics.jsonl"
        if not path.is_file():
            return []
        with path.open(encoding="utf-8", errors="replace") as fh:
            return parse_metric_records(fh, after_step)

    def read_logs(self, job_name: str, state: dict[str, Any], tail: int) -> list[str]:
        path = self._root(job_name, state) / LOG_FILE
        if not path.is_file():
            return []
        with path.open(encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=tail)]

    def fetch_model(self, job_name: str, state: dict[str, Any], dest: Path) -> None:
        model = self._root(job_name, state) / "model"
        if not (model / "adapter_config.json").is_file():
            raise BackendError(f"job {job_name} left no adapter in {model}")
        shutil.copytree(model, dest, dirs_exist_ok=True)

    def _root(self, job_name: str, state: dict[str, Any]) -> Path:
        return Path(state["root"]) if "root" in state else self.jobs_dir / job_name


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie or a recycled pid is not our runner.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"api.backends.local_runner" in cmdline


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
