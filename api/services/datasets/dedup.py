"""Exact dedup over the 16-byte row digests collected by the scan (first occurrence wins)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from api.services.datasets.records import DIGEST_BYTES


def first_occurrences(digests: bytes | bytearray) -> npt.NDArray[np.bool_]:
    """Mask over rows: True for the first row with each digest, in file order.

    A stable lexicographic sort groups equal digests with the earliest row first; memory is
    a few arrays of 8 bytes a row (no hash set of Python objects).
    """
    if DIGEST_BYTES != 16:  # pragma: no cover - guarded constant
        raise AssertionError("dedup expects 16-byte digests")
    keys = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
    n = keys.shape[0]
    first = np.ones(n, dtype=np.bool_)
    if n < 2:
        return first
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    ordered = keys[order]
    same = (ordered[1:, 0] == ordered[:-1, 0]) & (ordered[1:, 1] == ordered[:-1, 1])
    first[order[1:][same]] = False
    return first
