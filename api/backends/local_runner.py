"""Supervisor for one local training job: ``python -m api.backends.local_runner ROOT -- CMD…``.

Runs CMD (the training entrypoint) with ``OPT_ML_ROOT=ROOT``, forwards SIGTERM/SIGINT to it, and
records its exit status in ``ROOT/exit_code`` (atomically), so whoever looks later — this control
plane or one restarted after a crash — learns how the job ended without being its parent.
Standard library only: it must start fast and outlive the API process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

EXIT_FILE = "exit_code"


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m api.backends.local_runner ROOT -- CMD...", file=sys.stderr)
        return 2
    root = Path(argv[0])
    env = dict(os.environ, OPT_ML_ROOT=str(root), PYTHONUNBUFFERED="1")
    child = subprocess.Popen(argv[2:], env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    if code < 0:  # killed by a signal: report it the shell's way (143 for SIGTERM)
        code = 128 - code
    tmp = root / (EXIT_FILE + ".tmp")
    tmp.write_text(f"{code}\n")
    tmp.replace(root / EXIT_FILE)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
