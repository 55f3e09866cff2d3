"""Detached child processes for the local backends: spawn, liveness (pid-reuse safe), terminate."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path

from api.domain.errors import BackendError

# Popen handles of children started by this process, so finished ones are reaped (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn_detached(cmd: list[str], *, log_path: Path, env: dict[str, str], cwd: Path) -> int:
    """Start ``cmd`` in its own session (it outlives this process), output appended to ``log_path``."""
    with log_path.open("ab") as logf:
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        except OSError as exc:
            raise BackendError(f"could not start {cmd[0]}: {exc}") from exc
    _children[proc.pid] = proc
    return proc.pid


def alive(pid: int, marker: bytes) -> bool:
    """True while ``pid`` runs and its command line contains ``marker`` (so a recycled pid is not ours)."""
    if pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    if not cmdline:  # a zombie has an empty command line
        return False
    return marker in cmdline


def reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def terminate(pid: int, marker: bytes, *, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``."""
    if not alive(pid, marker):
        return
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not alive(pid, marker):
            return
        time.sleep(0.1)
    signal_group(pid, signal.SIGKILL)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(timeout=5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail_file(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a (log) file; none if it does not exist."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as fh:
        return [line.rstrip("\n") for line in deque(fh, maxlen=n)]
