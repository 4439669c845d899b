"""Deduplication of re-sent readings.

Identity: a reading is ``(stream, seq)``, stream = ``(plant, equipment, source)``. ``seq`` is
strictly increasing per edge source across agent restarts, and a lost buffer starts a new epoch
above every earlier one (``edge/buffer.py``: a new buffer's counter starts at the clock in µs).

A reading is dropped only when its ``seq`` lies in a seq span this stream has already processed,
whatever the order of arrival. Each processed raw batch is remembered as the span [first seq,
last seq] of its accepted rows (adjacent spans merged). A source numbers all its equipment from
one counter, so a span also holds seqs of other streams of that source, but none of those ever
arrives on this stream: the edge cuts a stream's readings into consecutive batches, so no batch
of a stream has a seq inside another batch's span of the same stream. A batch the forwarder
re-sends after later ones succeeded falls into the hole between spans and is accepted; a second
copy of it falls into its own span and is dropped.

Memory is bounded: at most ``max_spans`` spans per stream (its lowest are forgotten first), at
most ``max_spans_total`` over all streams and ``max_streams`` streams (least recently active first).
A seq in no remembered span is accepted: forgetting can let a very old re-send through (a
duplicate in ``clean``, which sinks upsert, and late for the windows), never drop a new reading.

Not checkpointed (as before): a restarted worker re-reads from the committed offset and rebuilds
the spans of everything after it; a checkpointed (newer) state would drop those re-read records.

Counter reset without a new epoch (a producer that lost its counter, e.g. an older edge): a seq
inside a seen span whose ``ts`` is newer than every ``ts`` seen on the stream cannot be a re-send.
It is accepted and the stream's spans are cleared (a new epoch). Timestamps above ``ts_limit``
(clock abuse, flagged BAD by the processor) never count as the newest.
"""

from __future__ import annotations

import itertools
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

_MIN = -(2**63)


@dataclass(slots=True)
class DedupStats:
    duplicates: int = 0
    resets: int = 0
    evicted: int = 0  # streams forgotten
    forgotten_spans: int = 0  # spans forgotten by the per-stream or total bounds


@dataclass(slots=True)
class _Stream:
    los: array[int]  # sorted span starts
    his: array[int]  # span ends (inclusive), his[i] < los[i + 1] - 1
    max_ts: int = _MIN


def _insert(st: _Stream, lo: int, hi: int) -> None:
    """Add [lo, hi], merging it with overlapping or adjacent spans (no seq is added by merging)."""
    los, his = st.los, st.his
    n = len(los)
    if n == 0 or lo > his[-1] + 1:
        los.append(lo)
        his.append(hi)
        return
    j = bisect_right(los, lo)
    if j > 0 and his[j - 1] >= lo - 1:
        j -= 1
        lo = los[j]
        hi = max(hi, his[j])
        del los[j]
        del his[j]
    while j < len(los) and los[j] <= hi + 1:
        hi = max(hi, his[j])
        del los[j]
        del his[j]
    los.insert(j, lo)
    his.insert(j, hi)


class Deduplicator:
    __slots__ = ("_streams", "_total", "max_spans", "max_spans_total", "max_streams", "stats")

    def __init__(self, max_streams: int = 200_000, max_spans: int = 8192, max_spans_total: int = 2_000_000) -> None:
        if max_spans < 1 or max_spans_total < max_spans:
            raise ValueError("need 1 <= max_spans <= max_spans_total")
        self.max_streams = max_streams
        self.max_spans = max_spans
        self.max_spans_total = max_spans_total
        self._streams: dict[tuple[str, str, str], _Stream] = {}  # dict order doubles as LRU order
        self._total = 0  # spans over all streams
        self.stats = DedupStats()

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def spans(self) -> int:
        return self._total

    def filter(
        self,
        plant: str,
        equipment: str,
        source: str,
        seqs: Sequence[int],
        ts: Sequence[int],
        ts_limit: int | None = None,
    ) -> list[int] | None:
        """Indices of the rows to keep, or None when every row is new (the common, fast case)."""
        key = (plant, equipment, source)
        st = self._streams.pop(key, None)  # re-inserted below: most recently active last
        n = len(seqs)
        if n == 0:
            if st is not None:
                self._streams[key] = st
            return None
        if st is None:
            st = _Stream(array("q"), array("q"))
        else:
            self._total -= len(st.los)
        batch_max_ts = max(ts)
        if ts_limit is not None and batch_max_ts > ts_limit:
            batch_max_ts = max((t for t in ts if t <= ts_limit), default=_MIN)
        his = st.his
        if (not his or seqs[0] > his[-1]) and all(a < b for a, b in itertools.pairwise(seqs)):
            _insert(st, seqs[0], seqs[-1])
            if batch_max_ts > st.max_ts:
                st.max_ts = batch_max_ts
            self._store(key, st)
            return None
        keep: list[int] = []
        accepted: list[int] = []  # seqs accepted, in arrival order (become spans below)
        taken: set[int] = set()  # also catches a seq twice within this batch
        max_ts = st.max_ts
        limit = ts_limit if ts_limit is not None else 2**63 - 1
        for i in range(n):
            s, t = seqs[i], ts[i]
            if s in taken:
                self.stats.duplicates += 1
                continue
            los = st.los
            j = bisect_right(los, s) - 1
            if j >= 0 and s <= st.his[j]:
                if max_ts < t <= limit:
                    # Inside a processed span yet newer than anything seen: the counter went
                    # back (no new epoch). The old epoch's spans no longer describe this source.
                    self.stats.resets += 1
                    st.los, st.his = array("q"), array("q")
                    accepted = []
                else:
                    self.stats.duplicates += 1
                    continue
            if max_ts < t <= limit:
                max_ts = t
            keep.append(i)
            accepted.append(s)
            taken.add(s)
        st.max_ts = max_ts
        self._add_spans(st, accepted)
        self._store(key, st)
        return keep

    def _add_spans(self, st: _Stream, accepted: list[int]) -> None:
        """Record accepted seqs as spans: runs that increase and stay within one hole between the
        known spans (a span across a known one would claim seqs of another batch)."""
        i, n = 0, len(accepted)
        while i < n:
            lo = hi = accepted[i]
            slot = bisect_right(st.los, lo)
            i += 1
            while i < n and accepted[i] > hi and bisect_right(st.los, accepted[i]) == slot:
                hi = accepted[i]
                i += 1
            _insert(st, lo, hi)

    def _store(self, key: tuple[str, str, str], st: _Stream) -> None:
        excess = len(st.los) - self.max_spans
        if excess > 0:
            del st.los[:excess]
            del st.his[:excess]
            self.stats.forgotten_spans += excess
        self._streams[key] = st
        self._total += len(st.los)
        while len(self._streams) > self.max_streams or self._total > self.max_spans_total:
            old_key = next(iter(self._streams))
            if old_key == key:
                break  # only this stream left; it is within max_spans <= max_spans_total
            old = self._streams.pop(old_key)
            self._total -= len(old.los)
            self.stats.forgotten_spans += len(old.los)
            self.stats.evicted += 1
