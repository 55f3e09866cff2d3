"""Who is launching a job: a token naming this process (host, pid, start time) and, read back
from a row, whether that process is this one, another live one on this host, dead, or unknown."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, Linux): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def launcher_token() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{_start_ticks(os.getpid()) or ''}"


def launcher_state(token: str | None) -> str:
    """``self``, ``alive`` (another process on this host), ``dead``, or ``unknown`` (elsewhere)."""
    if not token or token.count("/") != 2:
        return "unknown"
    host, pid_text, ticks = token.split("/")
    if host != socket.gethostname() or not pid_text.isdigit() or not ticks:
        return "unknown"
    pid = int(pid_text)
    current = _start_ticks(pid)
    if current != ticks:
        return "dead"  # gone, or the pid now belongs to another process
    return "self" if pid == os.getpid() else "alive"
