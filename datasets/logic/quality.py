"""Per-tag data-quality counts over the rows a pull writes (pure, streaming).

Rows arrive in increasing ``k`` (grid index), possibly with holes where rows were left out (other
lots): a hole ends a gap, it is not one. A *gap* is a run of consecutive rows without a value
after the gap rule (null in the file); ``observed`` counts rows whose bucket held a reading
(before gap filling), ``valid`` rows with a value (after).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(slots=True)
class TagQuality:
    rows: int = 0
    observed: int = 0
    valid: int = 0
    gaps: int = 0
    longest_gap_rows: int = 0
    _run: int = 0  # length of the gap run open at the last row seen
    _last_k: int | None = None

    def update(self, k: npt.NDArray[np.int64], valid: npt.NDArray[np.bool_], observed: npt.NDArray[np.bool_]) -> None:
        n = int(k.size)
        if not n:
            return
        self.rows += n
        self.valid += int(np.count_nonzero(valid))
        self.observed += int(np.count_nonzero(observed))
        missing = ~valid
        # A gap run continues from row i-1 to i only if both are missing and i follows i-1 on the grid.
        follows = np.empty(n, np.bool_)
        follows[0] = self._last_k is not None and int(k[0]) == self._last_k + 1 and self._run > 0
        follows[1:] = (np.diff(k) == 1) & missing[:-1]
        starts = missing & ~follows
        self.gaps += int(np.count_nonzero(starts))
        run_id = np.cumsum(starts) - 1  # which run each missing row belongs to (-1: the carried one)
        lengths = np.bincount(run_id[missing] + 1, minlength=1) if missing.any() else np.zeros(1, np.int64)
        lengths[0] += self._run if follows[0] else 0
        self.longest_gap_rows = max(self.longest_gap_rows, int(lengths.max()))
        # The run open at the end (the last row missing) carries over to the next call.
        self._run = int(lengths[run_id[-1] + 1]) if missing[-1] else 0
        self._last_k = int(k[-1])

    @property
    def completeness(self) -> float:
        return self.valid / self.rows if self.rows else 0.0

    @property
    def completeness_raw(self) -> float:
        return self.observed / self.rows if self.rows else 0.0
