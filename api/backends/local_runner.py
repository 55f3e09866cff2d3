"""Supervisor for one local training job:
``python -m api.backends.local_runner ROOT [--max-runtime S] [--stop-grace S] -- CMD…``.

Runs CMD (the training entrypoint) with ``OPT_ML_ROOT=ROOT``, forwards SIGTERM/SIGINT to it, and
records its exit status in ``ROOT/exit_code`` (atomically), so whoever looks later — this control
plane or one restarted after a crash — learns how the job ended without being its parent.

``--max-runtime`` is SageMaker's ``StoppingCondition.MaxRuntimeInSeconds`` for the local backend:
when the job has run that long the runner writes ``ROOT/max_runtime_exceeded``, sends the trainer
SIGTERM (it saves a checkpoint at the next step boundary and exits 143, as on SageMaker), and if it
is still running ``--stop-grace`` seconds later (default 120, the container contract's limit) kills
the whole process group, torchrun workers included. Standard library only: it must start fast and
outlive the API process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

EXIT_FILE = "exit_code"
MAX_RUNTIME_FILE = "max_runtime_exceeded"
DEFAULT_STOP_GRACE_S = 120.0
EXIT_KILLED = 137

USAGE = "usage: python -m api.backends.local_runner ROOT [--max-runtime S] [--stop-grace S] -- CMD..."


def _parse(argv: list[str]) -> tuple[Path, float | None, float, list[str]] | None:
    if not argv or argv[0].startswith("-"):
        return None
    root, rest = Path(argv[0]), argv[1:]
    max_runtime: float | None = None
    grace = DEFAULT_STOP_GRACE_S
    while rest and rest[0] != "--":
        if len(rest) < 2 or rest[0] not in ("--max-runtime", "--stop-grace"):
            return None
        try:
            value = float(rest[1])
        except ValueError:
            return None
        if rest[0] == "--max-runtime":
            max_runtime = value if value > 0 else None
        else:
            grace = max(value, 0.0)
        rest = rest[2:]
    if len(rest) < 2:
        return None
    return root, max_runtime, grace, rest[1:]


def _write_exit(root: Path, code: int) -> None:
    tmp = root / (EXIT_FILE + ".tmp")
    tmp.write_text(f"{code}\n")
    tmp.replace(root / EXIT_FILE)


def _wait(child: subprocess.Popen[bytes], timeout: float | None) -> int | None:
    try:
        return child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def main(argv: list[str]) -> int:
    parsed = _parse(argv)
    if parsed is None:
        print(USAGE, file=sys.stderr)
        return 2
    root, max_runtime, grace, cmd = parsed
    started = time.monotonic()
    env = dict(os.environ, OPT_ML_ROOT=str(root), PYTHONUNBUFFERED="1")
    child = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = _wait(child, None if max_runtime is None else max(max_runtime - (time.monotonic() - started), 0))
    if code is None:  # the job reached its maximum runtime
        assert max_runtime is not None
        (root / MAX_RUNTIME_FILE).write_text(f"{max_runtime:g}\n")
        print(
            f"[fastuner] max runtime of {max_runtime:g} s reached: stopping the job (SIGTERM; it saves "
            f"a checkpoint), killing it after {grace:g} s",
            file=sys.stderr,
            flush=True,
        )
        forward(signal.SIGTERM, None)
        code = _wait(child, grace)
        if code is None:
            print("[fastuner] the job did not stop in time: killed", file=sys.stderr, flush=True)
            _write_exit(root, EXIT_KILLED)
            if os.getpgrp() == os.getpid():  # our own process group (spawned detached): workers too
                os.killpg(os.getpid(), signal.SIGKILL)  # ends this runner as well
            child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
            return EXIT_KILLED
    if code < 0:  # killed by a signal: report it the shell's way (143 for SIGTERM)
        code = 128 - code
    _write_exit(root, code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
