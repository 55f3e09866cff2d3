"""Worker process for :mod:`parallel`: scan one part of a file.

Run as ``python -m api.services.datasets.part_worker``: reads a pickled
:class:`~api.services.datasets.parallel.PartJob` on stdin and writes the pickled
:class:`~api.services.datasets.validate.ScanResult` on stdout. A plain subprocess (rather
than ``multiprocessing``) never re-imports the caller's ``__main__``, so ``process()`` is
safe to call from scripts, servers and tests alike.
"""

from __future__ import annotations

import pickle
import sys

from api.services.datasets.parallel import PartJob, scan_part


def main() -> None:
    job = pickle.load(sys.stdin.buffer)
    if not isinstance(job, PartJob):
        raise SystemExit("expected a pickled PartJob on stdin")
    result = scan_part(job)
    pickle.dump(result, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
