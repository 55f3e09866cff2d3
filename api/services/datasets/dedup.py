"""Exact dedup over the 16-byte row digests collected by the scan (first occurrence wins)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from api.services.datasets.records import DIGEST_BYTES


def first_occurrences(digests: bytes | bytearray) -> npt.NDArray[np.bool_]:
    """Mask over rows: True for the first row with each digest, in file order.

    Sorts the first 64-bit word of each digest and takes the smallest row index of every run
    of equal keys; runs whose second words differ (a 64-bit prefix collision, ~n^2/2^65)
    send the whole set to an exact 128-bit lexicographic sort. Memory: a few 8-byte arrays
    per row, no hash set of Python objects.
    """
    if DIGEST_BYTES != 16:  # pragma: no cover - guarded constant
        raise AssertionError("dedup expects 16-byte digests")
    keys = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
    n = keys.shape[0]
    first = np.ones(n, dtype=np.bool_)
    if n < 2:
        return first
    hi = keys[:, 0]
    order = np.argsort(hi)
    ordered_hi = hi[order]
    new_run = np.empty(n, dtype=np.bool_)
    new_run[0] = True
    np.not_equal(ordered_hi[1:], ordered_hi[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)
    if starts.size == n:
        return first
    ordered_lo = keys[:, 1][order]
    run_id = np.cumsum(new_run) - 1
    if bool((ordered_lo != ordered_lo[starts][run_id]).any()):
        return _first_occurrences_exact(keys)
    first[:] = False
    first[np.minimum.reduceat(order, starts)] = True
    return first


def _first_occurrences_exact(keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    n = keys.shape[0]
    first = np.ones(n, dtype=np.bool_)
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # stable: the earliest row leads each run
    ordered = keys[order]
    same = (ordered[1:, 0] == ordered[:-1, 0]) & (ordered[1:, 1] == ordered[:-1, 1])
    first[order[1:][same]] = False
    return first
