"""Train/validation/test split by lot: every row of a lot lands in the same split.

Rows of one lot are correlated (same heat, same batch), so a split by row would leak the lot's
label into validation and test. The assignment is a pure function of (lots, proportions, seed).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

SPLITS = ("train", "validation", "test")


class SplitError(ValueError):
    """The split cannot be made as asked; ``field`` names the request field to fix."""

    def __init__(self, message: str, field: str = "split") -> None:
        super().__init__(message)
        self.field = field


def lot_counts(n_lots: int, proportions: Mapping[str, float]) -> dict[str, int]:
    """Lots per split by largest remainder; each split with a positive proportion gets >= 1 lot.

    SplitError when the proportions are not in [0, 1] summing to 1, name an unknown split, or when
    there are fewer lots than splits with a positive proportion (no lot may be in two splits).
    """
    unknown = sorted(set(proportions) - set(SPLITS))
    if unknown:
        raise SplitError(f"unknown split(s) {unknown}; use {list(SPLITS)}")
    if any(not 0.0 <= p <= 1.0 or math.isnan(p) for p in proportions.values()):
        raise SplitError("split proportions must be between 0 and 1")
    total = sum(proportions.values())
    if abs(total - 1.0) > 1e-6:
        raise SplitError(f"split proportions must sum to 1, not {total:g}")
    wanted = [s for s in SPLITS if proportions.get(s, 0.0) > 0.0]
    if n_lots < len(wanted):
        raise SplitError(
            f"{n_lots} lot(s) in the selection cannot fill {len(wanted)} splits {wanted} "
            "without putting a lot in two splits; select more lots or fewer splits"
        )
    exact = {s: proportions.get(s, 0.0) * n_lots for s in wanted}
    counts = {s: max(1, math.floor(exact[s])) for s in wanted}
    # Largest remainder, but never taking the guaranteed lot away from a small split.
    while sum(counts.values()) > n_lots:
        s = max((s for s in wanted if counts[s] > 1), key=lambda s: (counts[s] - exact[s], SPLITS.index(s)))
        counts[s] -= 1
    while sum(counts.values()) < n_lots:
        s = max(wanted, key=lambda s: (exact[s] - counts[s], -SPLITS.index(s)))
        counts[s] += 1
    return {s: counts.get(s, 0) for s in SPLITS}


def assign_splits(lots: Sequence[str], proportions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Lot -> split. Deterministic in (set of lots, proportions, seed): input order does not matter."""
    ordered = sorted(set(lots))
    counts = lot_counts(len(ordered), proportions)
    random.Random(seed).shuffle(ordered)
    out: dict[str, str] = {}
    i = 0
    for s in SPLITS:
        for lot in ordered[i : i + counts[s]]:
            out[lot] = s
        i += counts[s]
    return out
