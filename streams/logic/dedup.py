"""Deduplication of replayed readings.

The contract makes ``seq`` strictly increasing per edge source across restarts, and an edge
re-sends after a crash or outage *in order*. Kafka keeps order per key (plant/equipment), so per
stream ``(plant, equipment, source)`` a reading is new exactly when its ``seq`` is above the
highest ``seq`` seen (the high-water mark). A reading's identity ``(tag, ts, seq)`` is therefore
decided by ``seq`` alone; ``ts`` is used for one extra safety rule: a reading whose ``ts`` is newer
than anything seen on the stream cannot be a re-send, so a source whose counter went backwards
(state lost, against the contract) is accepted and the stream re-based instead of silently dropped.

Memory is bounded: one (seq, ts) pair per stream, at most ``max_streams`` streams (the least
recently active is forgotten first; a forgotten stream accepts its next batch as new).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class DedupStats:
    duplicates: int = 0
    resets: int = 0
    evicted: int = 0


class Deduplicator:
    __slots__ = ("_hwm", "max_streams", "stats")

    def __init__(self, max_streams: int = 200_000) -> None:
        self.max_streams = max_streams
        self._hwm: dict[tuple[str, str, str], tuple[int, int]] = {}  # stream -> (max seq, max ts)
        self.stats = DedupStats()

    def __len__(self) -> int:
        return len(self._hwm)

    def filter(
        self, plant: str, equipment: str, source: str, seqs: Sequence[int], ts: Sequence[int]
    ) -> list[int] | None:
        """Indices of the rows to keep, or None when every row is new (the common, fast case)."""
        key = (plant, equipment, source)
        state = self._hwm.pop(key, None)  # re-inserted below: dict order doubles as LRU order
        n = len(seqs)
        if n == 0:
            if state is not None:
                self._hwm[key] = state
            return None
        increasing = all(a < b for a, b in itertools.pairwise(seqs))
        if increasing and (state is None or seqs[0] > state[0]):
            self._store(key, (seqs[-1], max(max(ts), state[1]) if state is not None else max(ts)))
            return None
        hwm, max_ts = state if state is not None else (-(2**63), -(2**63))
        keep: list[int] = []
        for i in range(n):
            s, t = seqs[i], ts[i]
            if s > hwm:
                hwm = s
            elif t > max_ts:
                # Newer than anything seen yet numbered at or below the mark: a counter reset.
                self.stats.resets += 1
                hwm = s
            else:
                self.stats.duplicates += 1
                continue
            if t > max_ts:
                max_ts = t
            keep.append(i)
        self._store(key, (hwm, max_ts))
        return keep

    def _store(self, key: tuple[str, str, str], state: tuple[int, int]) -> None:
        self._hwm[key] = state
        if len(self._hwm) > self.max_streams:
            del self._hwm[next(iter(self._hwm))]
            self.stats.evicted += 1
