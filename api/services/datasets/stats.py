"""Length statistics for the report, from the per-row length arrays of the unique rows."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from api.domain.datasets import LengthStats


def length_stats(values: npt.NDArray[np.uint32] | npt.NDArray[np.uint64]) -> LengthStats | None:
    """min/max/mean and nearest-rank p50/p95 (exact: computed over every row's length)."""
    n = int(values.shape[0])
    if n == 0:
        return None
    ranks = [max(0, int(np.ceil(q * n)) - 1) for q in (0.5, 0.95)]
    part = np.partition(values, ranks)
    return LengthStats(
        min=int(values.min()),
        max=int(values.max()),
        mean=round(float(values.mean(dtype=np.float64)), 3),
        p50=int(part[ranks[0]]),
        p95=int(part[ranks[1]]),
    )
