"""A real ``fastuner`` API server in a subprocess (embedded default: SQLite, local store and
backend), killed by its own fault points and started again; plus what the tests need to look at
from outside: the job rows as stored, and the processes running for its home."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.http import ok_json
from tests.support.servers import free_port, stop, wait_until_healthy

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0


class Server:
    """``python -m uvicorn api.app:create_app --factory`` with its own ``FASTUNER_HOME``."""

    def __init__(self, home: Path, log: Path, **env: str) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FASTUNER_")}
        environ.update(
            FASTUNER_HOME=str(home),
            FASTUNER_LOG_JSON="false",
            FASTUNER_RECONCILE_INTERVAL_SECONDS="0.5",
            PYTHONUNBUFFERED="1",
            **env,
        )
        cmd = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        self._log = log.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=self._log, stderr=subprocess.STDOUT)
        wait_until_healthy(self.proc, f"{self.url}/healthz", log, START_TIMEOUT_S)
        key = (home / "api_key").read_text().strip()
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def wait_killed(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        self.close()
        return code

    def stop(self) -> None:
        stop(self.proc)
        self.close()

    def close(self) -> None:
        self.client.close()
        self._log.close()

    # -- API --------------------------------------------------------------------------------
    def upload(self, path: Path) -> dict[str, Any]:
        with path.open("rb") as fh:
            resp = self.client.post(
                "/v0/datasets",
                data={"name": "upper"},
                files={"file": (path.name, fh, "application/x-ndjson")},
            )
        ds: dict[str, Any] = ok_json(resp, 201)
        return ds

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = ok_json(self.client.get(f"/v0/finetune/{job_id}"))
        return job

    def wait_job(self, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["status"] not in statuses and time.monotonic() < deadline:
            time.sleep(0.5)
            job = self.job(job_id)
        if job["status"] not in statuses:
            logs = self.client.get(f"/v0/finetune/{job_id}/logs", params={"tail": 30}).json()
            raise AssertionError(f"job never reached {statuses}: {job}\n" + "\n".join(map(str, logs)))
        return job

    def messages(self, job_id: str) -> list[str]:
        return [e["message"] for e in self.client.get(f"/v0/finetune/{job_id}/events").json()]


def job_rows(home: Path) -> list[dict[str, Any]]:
    """The fine-tune rows as stored (what a crash left behind), read straight from SQLite."""
    con = sqlite3.connect(home / "fastuner.db")
    try:
        con.row_factory = sqlite3.Row
        rows = con.execute("SELECT id, status, backend_job_name, backend_state, launch FROM finetune_jobs")
        return [
            {
                **dict(r),
                "backend_state": json.loads(r["backend_state"] or "{}"),
                "launch": json.loads(r["launch"] or "null"),
            }
            for r in rows
        ]
    finally:
        con.close()


def processes_of(home: Path, exclude: set[int] = frozenset()) -> dict[int, str]:  # type: ignore[assignment]
    """pid → command line of every process (but ``exclude``) whose command line or environment
    names ``home``: the local backend's runners and trainers started for that home."""
    needle = os.fsencode(home)
    found: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid in exclude or pid == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if cmdline and (needle in cmdline or needle in environ):
            found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def kill_all(pids: dict[int, str]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
