"""What the benchmarks share: servers run as subprocesses on loopback, and their CPU time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

SERVER_PIDS: dict[str, int] = {}  # name -> pid of a running server subprocess


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process(name: str, cmd: list[str], work: Path, env: dict[str, str], ready: str) -> Iterator[int]:
    """Run ``cmd`` (logging to ``work/{name}.log``) until the block ends; wait until GET ``ready``
    answers 2xx first. Its pid is in :data:`SERVER_PIDS` meanwhile."""
    logfile = work / f"{name}.log"
    with logfile.open("ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(ready, timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = logfile.read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name} did not start:\n{tail}")
            time.sleep(0.05)
        SERVER_PIDS[name] = proc.pid
        yield proc.pid
    finally:
        SERVER_PIDS.pop(name, None)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat from field 3 on (after the parenthesised command name)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14, 15
