"""Seeded, reproducible train/validation/test assignment with exact counts.

* Counts: largest-remainder rounding of ``n * ratio`` (ties go to the earlier split); train
  always gets at least one row; then a split with ratio > 0 and no rows takes one row from
  the largest split that can spare one (train keeps at least one), when there are enough.
* ``classification``: stratified by label. Each label's rows are divided in proportion, with
  the per-label counts rounded so that every label's counts sum to its size and every split's
  counts sum to the exact totals above (controlled rounding, largest remainders first).
* Within each group (one label, or all rows) a seeded NumPy permutation picks which rows go
  where; rows keep file order inside a split (the writer streams in file order).
Same rows + seed + ratios give the same assignment (NumPy's PCG64 ``default_rng`` stream).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from api.domain.datasets import SplitRatios

Counts = tuple[int, int, int]


def _largest_remainder(total: int, quotas: list[float]) -> list[int]:
    base = [math.floor(q) for q in quotas]
    left = total - sum(base)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - base[i]), i))
    for i in order[: max(0, left)]:
        base[i] += 1
    return base


def split_counts(n: int, ratios: SplitRatios) -> Counts:
    """Exact per-split row counts for ``n`` rows (they sum to ``n``)."""
    r = ratios.as_tuple()
    counts = _largest_remainder(n, [n * x for x in r])
    if n and counts[0] == 0:  # train always gets a row
        donor = max((1, 2), key=lambda j: (counts[j], -j))
        counts[donor] -= 1
        counts[0] += 1
    for i in (1, 2):
        if r[i] > 0 and counts[i] == 0:
            donors = [j for j in range(3) if j != i and counts[j] >= 2]
            if donors:
                donor = max(donors, key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts[0], counts[1], counts[2]


def stratified_counts(sizes: list[int], totals: Counts) -> list[Counts]:
    """Per-group counts: row sums equal ``sizes``, column sums equal ``totals``."""
    n = sum(sizes)
    if n == 0:
        return [(0, 0, 0) for _ in sizes]
    cells = [[size * t / n for t in totals] for size in sizes]
    counts = [[math.floor(q) for q in row] for row in cells]
    row_left = [size - sum(c) for size, c in zip(sizes, counts, strict=True)]
    col_left = [t - sum(c[s] for c in counts) for s, t in enumerate(totals)]
    order = sorted(
        ((g, s) for g in range(len(sizes)) for s in range(3)),
        key=lambda gs: (-(cells[gs[0]][gs[1]] - counts[gs[0]][gs[1]]), gs[0], gs[1]),
    )
    for g, s in order:
        if row_left[g] > 0 and col_left[s] > 0 and cells[g][s] > counts[g][s]:
            counts[g][s] += 1
            row_left[g] -= 1
            col_left[s] -= 1
    # Whatever greedy rounding could not place (rare ties): any cell with room in both margins.
    for g in range(len(sizes)):
        for s in range(3):
            take = min(row_left[g], col_left[s])
            if take > 0:
                counts[g][s] += take
                row_left[g] -= take
                col_left[s] -= take
    return [(c[0], c[1], c[2]) for c in counts]


def assign_splits(
    n: int,
    ratios: SplitRatios,
    seed: int,
    groups: npt.NDArray[np.intp] | None = None,
) -> tuple[npt.NDArray[np.uint8], Counts]:
    """Split code (0 train, 1 validation, 2 test) for each of ``n`` rows, and the totals.

    ``groups``: a group index per row (0..k-1) to stratify by, or None for a random split.
    """
    totals = split_counts(n, ratios)
    codes = np.empty(n, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.arange(n)]
        per_group = [totals]
    else:
        k = int(groups.max()) + 1 if n else 0
        sizes = np.bincount(groups, minlength=k)
        by_group = np.argsort(groups, kind="stable")
        members = np.split(by_group, np.cumsum(sizes)[:-1])
        per_group = stratified_counts([int(s) for s in sizes], totals)
    pattern = np.arange(3, dtype=np.uint8)
    for rows, counts in zip(members, per_group, strict=True):
        if rows.size == 0:
            continue
        codes[rows[rng.permutation(rows.size)]] = np.repeat(pattern, counts)
    return codes, totals
