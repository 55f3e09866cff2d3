"""kill -9 at each step of ``POST /v0/finetune`` on a real server (embedded default, local backend).

A server subprocess with ``FASTUNER_FAULT_AT=<point>`` SIGKILLs itself at that point of the job
start; a new one is started on the same home without the fault. Afterwards: the job ends in a
truthful terminal state (launched → adopted and completed with its adapter; not launched →
launched once and completed), exactly one backend job ran for it, a retry with the same
Idempotency-Key returns a launched job, and no training process is left that the database does
not know about.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.services.finetune.service import job_name_for
from tests.chaos.jobstart_support import Server, job_rows, kill_all, processes_of

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "uppercase.jsonl"
TRAIN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from scu.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    build_tiny_model(path)
    return path


@pytest.fixture
def home(tmp_path: Path, tiny_model: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    shutil.copytree(tiny_model, home / "models" / "tiny-llama")  # under the home's model root
    yield home
    kill_all(processes_of(home))  # whatever a failed test left running


# (point, what the crash leaves in the database, the training process is running untracked)
POINTS = [
    ("finetune.before_launch", "launching", False),
    ("finetune.after_backend_call", "launching", True),
    ("finetune.after_db_write", "provisioning", True),
]


@pytest.mark.parametrize(("point", "left", "running"), POINTS, ids=[p[0].split(".")[1] for p in POINTS])
def test_kill_during_job_start_ends_truthfully(
    home: Path, tmp_path: Path, point: str, left: str, running: bool
) -> None:
    log = tmp_path / "server.log"
    first = Server(home, log, FASTUNER_FAULT_AT=point)
    ds = first.upload(SAMPLE)
    body = {
        "dataset_id": ds["id"],
        "base_model": str(home / "models" / "tiny-llama"),
        "max_steps": 2,  # seconds of training: the time goes to process start-up
        "hyperparameters": {"log_every": 1, "batch_size": 2, "grad_accum": 1, "block_size": 32},
    }
    key = {"Idempotency-Key": f"chaos-{point}"}
    with pytest.raises(httpx.TransportError):  # the server dies before it answers
        first.client.post("/v0/finetune", json=body, headers=key)
    assert first.wait_killed() == -9

    [row] = job_rows(home)
    assert row["status"] == left and row["backend_job_name"] == job_name_for(row["id"])
    assert row["launch"]["channels"]  # the spec can be rebuilt from the row
    assert bool(row["backend_state"]) == (left == "provisioning")
    assert bool(processes_of(home)) == running  # a launched job kept running without its server

    second = Server(home, log)
    try:
        again = second.client.post("/v0/finetune", json=body, headers=key)
        assert again.status_code == 201, again.text
        assert again.json()["id"] == row["id"] and again.json()["status"] != "launching"
        [stored] = job_rows(home)
        assert stored["backend_state"], "the replay returned a job that was never launched"
        for pid, cmd in processes_of(home, exclude={second.proc.pid}).items():  # all tracked
            assert stored["backend_job_name"] in cmd or "scu.entry" in cmd, (pid, cmd)

        done = second.wait_job(row["id"], {"completed", "failed", "cancelled"}, TRAIN_TIMEOUT_S)
        assert done["status"] == "completed", done
        adapter = second.client.get(f"/v0/adapters/{done['adapter_id']}")
        assert adapter.status_code == 200 and adapter.json()["job_id"] == row["id"]
        messages = second.messages(row["id"])
        relaunched = "launch lost (its launcher is gone); launching again" in messages
        assert relaunched == (point == "finetune.before_launch")  # launched once, never twice
        assert messages.count("launching → provisioning") == 1
        jobs_dir = home / "work" / "jobs"
        assert [p.name for p in jobs_dir.iterdir()] == [row["backend_job_name"]]
        assert (jobs_dir / row["backend_job_name"] / "logs.txt").read_text().count("[scu-eval]") <= 1
        assert processes_of(home, exclude={second.proc.pid}) == {}  # nothing runs untracked
    finally:
        second.stop()


def test_a_runner_started_but_not_recorded_is_adopted_not_started_again(tmp_path: Path) -> None:
    """The local backend's own window: killed after spawning the runner, before ``launch.json``."""
    from api.backends.base import TrainingSpec
    from api.backends.local import LocalBackend
    from api.backends.processes import spawn_detached
    from api.storage.local import LocalStore

    backend = LocalBackend(LocalStore(tmp_path / "store"), tmp_path / "jobs")
    name = job_name_for("ft_x")
    root = tmp_path / "jobs" / name
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text("{}")
    cmd = [sys.executable, "-m", "api.backends.local_runner", str(root), "--", "sleep", "30"]
    pid = spawn_detached(cmd, log_path=root / "logs.txt", env=dict(os.environ), cwd=root)
    try:
        deadline = time.monotonic() + 20
        while (
            b"local_runner" not in Path(f"/proc/{pid}/cmdline").read_bytes() and time.monotonic() < deadline
        ):
            time.sleep(0.05)  # until the runner has exec'd
        state = backend.find_training(name)
        assert state is not None and state["pid"] == pid and (root / "launch.json").is_file()
        spec = TrainingSpec(
            job_id="ft_x",
            tenant_id="t",
            job_name=name,
            hyperparameters={},
            channels={},
            output_prefix="o",
            checkpoint_prefix="c",
            instance_type="local",
        )
        assert backend.start_training(spec) == state  # adopted: no second runner
        assert [p for p, cmd in processes_of(tmp_path).items() if "local_runner" in cmd] == [pid]
        assert backend.find_training("fastuner-ft-never") is None
    finally:
        os.killpg(pid, signal.SIGKILL)  # the runner and its child
