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
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.backends.base import TrainingSpec, TrainingStatus
from api.backends.hub_env import HF_TOKEN_SECRET_ENV
from api.backends.local_models import LocalModels
from api.backends.local_runner import DEFAULT_STOP_GRACE_S, EXIT_FILE, MAX_RUNTIME_FILE
from api.backends.processes import alive, reap, spawn_detached, tail_file
from api.domain.enums import JobStatus
from api.domain.errors import BackendError
from api.domain.metrics import parse_metric_records
from api.logging import get_logger
from api.storage.base import ObjectStore

log = get_logger("backend.local")

EXIT_INTERRUPTED = 143
EXIT_KILLED = 137
MAX_RUNTIME_SECONDARY = "MaxRuntimeExceeded"  # SageMaker's SecondaryStatus for the same stop
STOP_FILE = "stop_requested"
LAUNCH_FILE = "launch.json"
LOG_FILE = "logs.txt"

RUNNER_MARKER = b"api.backends.local_runner"


class LocalBackend:
    name = "local"

    def __init__(
        self,
        store: ObjectStore,
        jobs_dir: Path,
        *,
        python: str | None = None,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
        models: LocalModels | None = None,
        hf_token_secret: str | None = None,
    ) -> None:
        self.store = store
        self.jobs_dir = jobs_dir
        self.python = python or sys.executable
        self.stop_grace_s = stop_grace_s  # after max runtime: SIGTERM, then SIGKILL this much later
        # Hub ids the engine loads from this machine (pulled or cached) instead of the hub.
        self.models = models
        self.hf_token_secret = hf_token_secret  # the secret's name/ARN only; the engine reads it

    @property
    def model_access(self) -> str:
        """How this backend gets hub models: ``offline`` (only what is on this machine) or ``hub``."""
        return self.models.access if self.models is not None else "hub"

    # -- launch -------------------------------------------------------------------------------
    def start_training(self, spec: TrainingSpec) -> dict[str, Any]:
        root = self.jobs_dir / spec.job_name
        found = self.find_training(spec.job_name)
        if found is not None:  # idempotent: this job was launched already
            return found
        if root.exists():  # a launch that died half-way, before its runner started: start clean
            shutil.rmtree(root)
        _private_dir(self.jobs_dir)
        root.mkdir(mode=0o700)  # the job's data, model and logs: its owner's only
        config = root / "input" / "config"
        config.mkdir(parents=True)
        hyperparameters = dict(spec.hyperparameters)
        if self.models is not None and "base_model" in hyperparameters:  # the job still says the hub id
            hyperparameters["base_model"] = self.models.resolve(hyperparameters["base_model"])
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters, indent=2))
        (config / "resourceconfig.json").write_text(
            json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "lo"})
        )
        for channel, key in spec.channels.items():
            dest = root / "input" / "data" / channel / key.rsplit("/", 1)[-1]
            self.store.download_file(key, dest)
        for sub in ("model", "checkpoints", "output/data"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        limits = ["--max-runtime", str(spec.max_runtime_seconds), "--stop-grace", f"{self.stop_grace_s:g}"]
        runner = [self.python, "-m", "api.backends.local_runner", str(root), *limits]
        cmd = [*runner, "--", self.python, "-m", "scu.entry", "train"]
        env = dict(os.environ, OPT_ML_ROOT=str(root), PYTHONUNBUFFERED="1")
        if self.models is not None and self.models.offline:  # no network: fail fast, never wait on the hub
            env.setdefault("HF_HUB_OFFLINE", "1")
        if self.hf_token_secret:
            env[HF_TOKEN_SECRET_ENV] = self.hf_token_secret
        pid = spawn_detached(cmd, log_path=root / LOG_FILE, env=env, cwd=root)
        state = {"root": str(root), "pid": pid, "started_at": datetime.now(UTC).isoformat()}
        tmp = root / (LAUNCH_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(root / LAUNCH_FILE)
        log.info("local training started", extra={"job_name": spec.job_name, "pid": pid})
        return state

    def find_training(self, job_name: str) -> dict[str, Any] | None:
        """The state of the job launched under ``job_name``, from its work dir alone; None if none was.

        ``launch.json`` is written just after the runner starts; a caller killed in between leaves a
        runner (found by its command line, which names the work dir) or its exit file without it.
        Such a job is adopted: the state is rebuilt and ``launch.json`` written, so nothing is
        started twice under one name.
        """
        root = self.jobs_dir / job_name
        launch = root / LAUNCH_FILE
        if launch.is_file():
            state: dict[str, Any] = json.loads(launch.read_text())
            return state
        pid = _runner_pid(root)
        if pid is None and not (root / EXIT_FILE).is_file():
            return None
        hyper = root / "input" / "config" / "hyperparameters.json"
        started = datetime.fromtimestamp(hyper.stat().st_mtime, UTC) if hyper.is_file() else datetime.now(UTC)
        state = {"root": str(root), "pid": pid or 0, "started_at": started.isoformat()}
        tmp = root / (LAUNCH_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(launch)
        log.info("adopted a local training job launched without a record", extra={"job_name": job_name})
        return state

    # -- status -------------------------------------------------------------------------------
    def describe_training(self, job_name: str, state: dict[str, Any]) -> TrainingStatus:
        root = self._root(job_name, state)
        pid = int(state.get("pid", 0))
        started = _parse_time(state.get("started_at"))
        exit_file = root / EXIT_FILE
        # Ask whether the runner lives *before* looking for its exit file: it writes the file and then
        # exits, so a runner found gone has either written it already or really disappeared.
        running = alive(pid, RUNNER_MARKER)
        if exit_file.is_file():
            code = int(exit_file.read_text().strip() or 1)
            ended = datetime.fromtimestamp(exit_file.stat().st_mtime, UTC)
            reap(pid)
            billable = int((ended - started).total_seconds()) if started else None
            if code == 0:
                return TrainingStatus(JobStatus.COMPLETED, "Completed", None, started, ended, billable)
            if code == EXIT_INTERRUPTED and (root / STOP_FILE).exists():
                return TrainingStatus(JobStatus.CANCELLED, "Stopped", None, started, ended, billable)
            if (root / MAX_RUNTIME_FILE).exists():  # like SageMaker: a stopping condition is a failure
                return TrainingStatus(
                    JobStatus.FAILED,
                    MAX_RUNTIME_SECONDARY,
                    _max_runtime_reason(root, code),
                    started,
                    ended,
                    billable,
                )
            return TrainingStatus(
                JobStatus.FAILED, "Failed", self._failure_reason(root, code), started, ended, billable
            )
        if not running:
            if (root / STOP_FILE).exists():
                # stopped before the runner could record an exit (a SIGTERM that came before its
                # handler): the user asked for the stop, so the job is cancelled, not lost
                now = datetime.now(UTC)
                billable = int((now - started).total_seconds()) if started else None
                return TrainingStatus(JobStatus.CANCELLED, "Stopped", None, started, now, billable)
            return TrainingStatus(
                JobStatus.FAILED,
                "Failed",
                "the training process disappeared without an exit status (was the machine restarted?)",
                started,
                datetime.now(UTC),
            )
        if (root / STOP_FILE).exists():
            return TrainingStatus(JobStatus.CANCELLING, "Stopping", None, started)
        if (root / MAX_RUNTIME_FILE).exists():  # stopping at its limit: saving a checkpoint
            return TrainingStatus(JobStatus.RUNNING, MAX_RUNTIME_SECONDARY, None, started)
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
        if alive(pid, RUNNER_MARKER):
            os.kill(pid, signal.SIGTERM)  # the runner forwards it; the engine checkpoints and exits 143

    # -- outputs ------------------------------------------------------------------------------
    def read_metrics(self, job_name: str, state: dict[str, Any], after_step: int) -> list[dict[str, float]]:
        path = self._root(job_name, state) / "output" / "data" / "metrics.jsonl"
        if not path.is_file():
            return []
        with path.open(encoding="utf-8", errors="replace") as fh:
            return parse_metric_records(fh, after_step)

    def read_logs(self, job_name: str, state: dict[str, Any], tail: int) -> list[str]:
        return tail_file(self._root(job_name, state) / LOG_FILE, tail)

    def fetch_model(self, job_name: str, state: dict[str, Any], dest: Path) -> None:
        model = self._root(job_name, state) / "model"
        if model.is_symlink() or not (model / "adapter_config.json").is_file():
            raise BackendError(f"job {job_name} left no adapter in {model}")
        # Never follow a link out of the job's folder (an adapter must hold only its own files).
        unsafe = sorted(
            (Path(top) / name).relative_to(model).as_posix()
            for top, dirs, files in os.walk(model)
            for name in (*dirs, *files)
            if not stat.S_ISREG(m := (Path(top) / name).lstat().st_mode) and not stat.S_ISDIR(m)
        )
        if unsafe:
            raise BackendError(
                f"the adapter of job {job_name} holds symbolic links or special files: {unsafe}"
            )
        shutil.copytree(model, dest, symlinks=True, dirs_exist_ok=True)

    def _root(self, job_name: str, state: dict[str, Any]) -> Path:
        return Path(state["root"]) if "root" in state else self.jobs_dir / job_name


def _private_dir(path: Path) -> None:
    """``path`` (and a ``work`` folder above it that this makes) as a 0700 folder, whatever the umask."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.mkdir(exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)


def _runner_pid(root: Path) -> int | None:
    """The pid of a live ``local_runner`` supervising ``root`` (Linux ``/proc``), if any."""
    want = [b"-m", b"api.backends.local_runner", os.fsencode(root)]
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == want and alive(int(entry.name), RUNNER_MARKER):
            return int(entry.name)
    return None


def _max_runtime_reason(root: Path, code: int) -> str:
    limit = (root / MAX_RUNTIME_FILE).read_text(errors="replace").strip() or "?"
    reason = (
        f"max runtime: the job exceeded its maximum runtime (max_runtime_seconds = {limit} s) and was stopped"
    )
    try:
        status = json.loads((root / "output" / "data" / "status.json").read_text())
    except (OSError, ValueError):
        status = None
    if code == EXIT_INTERRUPTED and isinstance(status, dict) and status.get("status") == "interrupted":
        return (
            f"{reason} after saving a checkpoint at step {status.get('step')} of {status.get('total_steps')}"
        )
    if code == EXIT_KILLED:
        return f"{reason}; it did not stop within the grace period and was killed"
    return reason


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
