"""Lots on equipment over time, from process segments (pure).

A *line* is an equipment path that lots run on (the equipment of a process segment). A tag
belongs to the line that is its equipment or its nearest ancestor among the lines, the rule the
stream processor stamps readings' lots by, so a creel under a carbon-fibre line belongs to the
creel's own lots (precursors), the line's other tags to the spools. On one line, lot ``i`` runs
``[start_i, min(end_i, start_{i+1}))``: a lot without an end, or ending after the next lot
started, ends when the next one starts (one lot at a time on a line).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NO_LOT = -1
_OPEN = np.iinfo(np.int64).max


def line_of(equipment: str, lines: Iterable[str]) -> str | None:
    """The nearest ancestor-or-self of ``equipment`` among ``lines`` (None if none)."""
    best: str | None = None
    for line in lines:
        if (equipment == line or equipment.startswith(line + "/")) and (best is None or len(line) > len(best)):
            best = line
    return best


@dataclass(frozen=True, slots=True)
class LineLots:
    """The lots of one line in time order, with effective ends (see module doc)."""

    line: str
    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]
    lots: npt.NDArray[np.int32]

    @staticmethod
    def build(line: str, segments: Sequence[tuple[int, int, int | None]]) -> LineLots:
        """``segments``: (lot id, start us, end us or None) of this line, any order."""
        segs = sorted(segments, key=lambda s: (s[1], s[0]))
        starts = np.array([s[1] for s in segs], np.int64)
        ends = np.array([_OPEN if s[2] is None else s[2] for s in segs], np.int64)
        if starts.size > 1:
            ends[:-1] = np.minimum(ends[:-1], starts[1:])
        return LineLots(line, starts, ends, np.array([s[0] for s in segs], np.int32))

    def lot_at(self, t_us: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """The lot running at each time (NO_LOT where none)."""
        if not self.starts.size:
            return np.full(t_us.size, NO_LOT, np.int32)
        i = np.searchsorted(self.starts, t_us, side="right") - 1
        j = np.maximum(i, 0)
        ok = (i >= 0) & (t_us < self.ends[j])
        return np.where(ok, self.lots[j], NO_LOT).astype(np.int32)

    def overlapping(self, lo_us: int, hi_us: int) -> set[int]:
        """Lots that run for some time in ``[lo, hi)``."""
        ok = (self.starts < hi_us) & (self.ends > lo_us) & (self.ends > self.starts)
        return {int(x) for x in self.lots[ok]}

    def digest(self) -> bytes:
        """What the row lots depend on (folded into the data watermark)."""
        h = hashlib.sha256(self.line.encode())
        for a in (self.starts, self.ends, self.lots.astype(np.int64)):
            h.update(a.astype("<i8").tobytes())
        return h.digest()
