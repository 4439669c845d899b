"""Per-tag data-quality counts over the rows a pull writes (pure, streaming).

Rows arrive in increasing ``k`` (grid index), possibly with holes where rows were left out (other
lots): a hole ends a run, it is not part of one. Runs of rows with a property (no value, out of
the engineering range, outside the spec's process limit, unchanged) are counted by ``Runs``,
whatever batches the rows come in (tested against a naive count for every cut).

* a *gap*: a run of rows without a value after the gap rule (null in the file);
* *out of range*: a value outside the tag's engineering range ``[lo, hi]``;
* *outside spec*: a value outside the process limit of the row's lot's spec for the tag's
  ``spec_property``;
* *stuck*: at least ``stuck_rows`` consecutive rows with one value (float tags), the signature
  of a frozen sensor or a source that stopped updating while the edge kept repeating it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

STUCK_MIN_US = 300_000_000  # 5 min of one unchanged value
STUCK_MIN_ROWS = 10  # and at least this many rows


def stuck_rows(interval_us: int) -> int:
    return max(STUCK_MIN_ROWS, math.ceil(STUCK_MIN_US / interval_us))


@dataclass(slots=True)
class Runs:
    """Runs of True in a row mask, contiguous in ``k``; a run counts once it has ``min_len`` rows."""

    min_len: int = 1
    count: int = 0
    rows: int = 0  # rows in counted runs
    longest: int = 0  # of counted runs (including the open one once it is long enough)
    _open: int = 0
    _last_k: int | None = None

    def update(self, k: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> None:
        n = int(k.size)
        if not n:
            return
        follows = np.empty(n, np.bool_)
        follows[0] = bool(mask[0]) and self._open > 0 and self._last_k is not None and int(k[0]) == self._last_k + 1
        follows[1:] = (np.diff(k) == 1) & mask[:-1]
        if self._open and not follows[0]:
            self._close(self._open)
            self._open = 0
        starts = mask & ~follows
        run_id = np.cumsum(starts)  # 0: the run carried in from the last call
        lengths = np.bincount(run_id[mask], minlength=int(run_id[-1]) + 1)
        lengths[0] += self._open
        last_open = int(run_id[-1]) if mask[-1] else -1
        for i in np.flatnonzero(lengths):
            if int(i) != last_open:
                self._close(int(lengths[i]))
        self._open = int(lengths[last_open]) if last_open >= 0 else 0
        if self._open >= self.min_len:
            self.longest = max(self.longest, self._open)
        self._last_k = int(k[-1])

    def _close(self, length: int) -> None:
        if length >= self.min_len:
            self.count += 1
            self.rows += length
            self.longest = max(self.longest, length)

    def finish(self) -> None:
        if self._open:
            self._close(self._open)
            self._open = 0


@dataclass(slots=True)
class Moments:
    """Count, mean, standard deviation, min, max of a tag's values (a distribution summary)."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def update(self, v: npt.NDArray[np.float64]) -> None:
        v = v[np.isfinite(v)]
        if not v.size:
            return
        self.n += int(v.size)
        self.total += float(v.sum())
        self.total_sq += float(np.square(v).sum())
        self.lo = min(self.lo, float(v.min()))
        self.hi = max(self.hi, float(v.max()))

    def summary(self) -> dict[str, float | int | None]:
        if not self.n:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        mean = self.total / self.n
        var = max(0.0, self.total_sq / self.n - mean * mean)
        return {"count": self.n, "mean": mean, "std": math.sqrt(var), "min": self.lo, "max": self.hi}


@dataclass(slots=True)
class TagQuality:
    """What the quality report says about one tag, over the rows written."""

    rows: int = 0
    observed: int = 0
    valid: int = 0
    gap_runs: Runs = field(default_factory=Runs)
    out_of_range: Runs = field(default_factory=Runs)
    outside_spec: Runs = field(default_factory=Runs)
    stuck: Runs = field(default_factory=Runs)
    _prev: tuple[int, float] | None = None  # (k, value) of the last row with a value

    def update(
        self,
        k: npt.NDArray[np.int64],
        valid: npt.NDArray[np.bool_],
        observed: npt.NDArray[np.bool_],
        values: npt.NDArray[np.float64] | None = None,
        lo: float | None = None,
        hi: float | None = None,
        spec_lo: npt.NDArray[np.float64] | None = None,
        spec_hi: npt.NDArray[np.float64] | None = None,
    ) -> None:
        """``values`` for numeric tags (float64); ``spec_lo``/``spec_hi`` per row (NaN: no limit)."""
        n = int(k.size)
        if not n:
            return
        self.rows += n
        self.valid += int(np.count_nonzero(valid))
        self.observed += int(np.count_nonzero(observed))
        self.gap_runs.update(k, ~valid)
        if values is None:
            return
        with np.errstate(invalid="ignore"):
            out = np.zeros(n, np.bool_)
            if lo is not None:
                out |= values < lo
            if hi is not None:
                out |= values > hi
            self.out_of_range.update(k, valid & out)
            if spec_lo is not None and spec_hi is not None:
                self.outside_spec.update(k, valid & ((values < spec_lo) | (values > spec_hi)))
            # Unchanged: same value as the row before on the grid (both with a value).
            prev_v = np.empty(n, np.float64)
            prev_ok = np.empty(n, np.bool_)
            prev_v[1:], prev_ok[1:] = values[:-1], valid[:-1] & (np.diff(k) == 1)
            if self._prev is not None and int(k[0]) == self._prev[0] + 1:
                prev_v[0], prev_ok[0] = self._prev[1], True
            else:
                prev_v[0], prev_ok[0] = np.nan, False
            same = valid & prev_ok & (values == prev_v)
        # A stuck interval of m rows is m - 1 "same" rows after its first: min_len = stuck rows - 1.
        self.stuck.update(k, same)
        last = np.flatnonzero(valid)
        if last.size and int(last[-1]) == n - 1:
            self._prev = (int(k[-1]), float(values[-1]))
        else:
            self._prev = None

    def finish(self) -> None:
        for r in (self.gap_runs, self.out_of_range, self.outside_spec, self.stuck):
            r.finish()

    @property
    def gaps(self) -> int:
        return self.gap_runs.count

    @property
    def longest_gap_rows(self) -> int:
        return self.gap_runs.longest

    @property
    def completeness(self) -> float:
        return self.valid / self.rows if self.rows else 0.0

    @property
    def completeness_raw(self) -> float:
        return self.observed / self.rows if self.rows else 0.0
