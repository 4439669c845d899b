"""Tumbling 1 s and 1 min windows per tag, in event time, with deterministic emission.

Statistics per window (good and uncertain samples; BAD samples are excluded from the statistics
but counted in ``bad_count``): count, min, max, mean, last (value at the greatest timestamp),
population standard deviation (ddof=0), and the time-weighted mean ``twa``.

Time-weighted mean (step / sample-and-hold interpolation): each sample's value holds from its
timestamp until the next sample; the last sample of a window holds until the window end. The
value *before* the window start is carried in only from inside the same minute: a 1 s window
starts its integral at the window start when the tag had a sample earlier in the same minute,
otherwise at its first sample; a 1 min window always starts at its first sample. Minutes are
thereby self-contained, which is what makes re-processing after a crash reproduce them exactly
(see "Replay" below). Values between samples in different 1 s windows of one minute are held.

Event time is *per tag*: a tag's watermark is the greatest timestamp seen for it, so an edge
replaying a 30 s outage in order advances its own tags' watermarks and is not late. A 1 s window
``[s, s+1s)`` closes when the tag's watermark reaches ``s + 1s + allowed_lateness``; a minute
closes when the watermark reaches its end + lateness (its seconds have all closed by then). A tag
silent for ``idle_timeout`` (processing time given by the caller) has all its windows closed.
1 min windows are merged from the closed 1 s partials (count, mean and M2 with Chan's formula,
min, max, first/last sample, held integral), so memory holds raw samples for at most
1 s + lateness per tag.

Late data (a sample whose 1 s window already closed, or whose minute was closed by the idle
timeout) is never merged: :meth:`WindowEngine.add` returns :data:`LATE` and the caller routes it.

Replay: :meth:`safe_offset` is the oldest source offset still contributing to an open window
(commit no further); :meth:`checkpoint` gives per tag the end of its last closed minute. After a
restart, :meth:`restore` with that checkpoint makes samples before it :data:`REPLAYED` (already
aggregated, skipped) while everything after rebuilds exactly, because every open minute's samples
lie at or after the committed offset. Emission order and content depend only on input order
(plus the idle timeout, which is processing-time driven by nature).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from plantstream.contract import Aggregate

SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US

ACCEPTED, LATE, REPLAYED = 0, 1, 2

LotLookup = Callable[[str, str, int], str | None]


@dataclass(slots=True)
class Partial:
    """Mergeable statistics of the good samples of one window, in time order."""

    start_us: int
    first_offset: int
    count: int = 0
    bad_count: int = 0
    min: float = 0.0
    max: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    first_ts: int = 0
    first_v: float = 0.0
    last_ts: int = 0
    last_v: float = 0.0
    inner: float = 0.0  # integral (value x microseconds) from first_ts to last_ts, held values

    def merge(self, b: Partial) -> None:
        """Append ``b`` (strictly later in time) to this partial."""
        self.bad_count += b.bad_count
        if b.count == 0:
            return
        if self.count == 0:
            self.count, self.min, self.max, self.mean, self.m2 = b.count, b.min, b.max, b.mean, b.m2
            self.first_ts, self.first_v, self.last_ts, self.last_v, self.inner = (
                b.first_ts,
                b.first_v,
                b.last_ts,
                b.last_v,
                b.inner,
            )
            return
        n = self.count + b.count
        delta = b.mean - self.mean
        self.mean += delta * b.count / n
        self.m2 += b.m2 + delta * delta * self.count * b.count / n
        self.count = n
        if b.min < self.min:
            self.min = b.min
        if b.max > self.max:
            self.max = b.max
        self.inner += self.last_v * (b.first_ts - self.last_ts) + b.inner
        self.last_ts, self.last_v = b.last_ts, b.last_v


@dataclass(slots=True)
class _Open:
    """Samples of an open 1 s window (kept raw: appending is the cheapest per-sample work)."""

    first_offset: int
    ts: list[int] = field(default_factory=list)
    vs: list[float] = field(default_factory=list)
    bad: int = 0
    ordered: bool = True


@dataclass(slots=True)
class _TagState:
    plant: str
    tag: str
    equipment: str
    unit: str
    watermark: int = -(2**62)
    closed_upto: int = -(2**62)  # no sample below this may enter a window (1 s granularity)
    minute_horizon: int = -(2**62)  # end of the last closed minute
    restored_horizon: int = -(2**62)  # minute horizon from a checkpoint: older samples are replays
    last_seen: int = 0  # processing time of the last sample (idle timeout)
    carry_ts: int = -(2**62)  # last good sample of the closed seconds (for the 1 s twa)
    carry_v: float = 0.0
    seconds: dict[int, _Open] = field(default_factory=dict)
    minutes: dict[int, Partial] = field(default_factory=dict)


@dataclass(slots=True)
class WindowStats:
    late: int = 0
    replayed: int = 0
    emitted_1s: int = 0
    emitted_1m: int = 0
    idle_closed: int = 0


class WindowEngine:
    """Per-tag windows for one partition. Not thread-safe; one engine per partition."""

    def __init__(
        self,
        allowed_lateness_us: int = 2 * SECOND_US,
        idle_timeout_us: int = 90 * SECOND_US,
        lot_of: LotLookup | None = None,
    ) -> None:
        if allowed_lateness_us < 0 or idle_timeout_us <= 0:
            raise ValueError("allowed lateness must be >= 0 and the idle timeout > 0")
        self.lateness = allowed_lateness_us
        self.idle = idle_timeout_us
        self.lot_of: LotLookup = lot_of or (lambda plant, equipment, ts: None)
        self._tags: dict[tuple[str, str], _TagState] = {}
        self._touched: set[tuple[str, str]] = set()
        self.stats = WindowStats()

    # --- input ---------------------------------------------------------------------------------

    def state(self, plant: str, tag: str, equipment: str, unit: str) -> _TagState:
        """The state of one tag (created on first use); callers on a hot path keep it per batch."""
        key = (plant, tag)
        st = self._tags.get(key)
        if st is None:
            st = self._tags[key] = _TagState(plant, tag, equipment, unit)
        else:
            st.equipment, st.unit = equipment, unit
        return st

    def add(self, st: _TagState, ts: int, value: float | None, offset: int, now_us: int) -> int:
        """Add one sample (``value`` None: a BAD sample, counted only). Returns ACCEPTED, LATE or
        REPLAYED; only ACCEPTED samples enter a window."""
        if ts < st.closed_upto:
            if ts < st.restored_horizon:
                self.stats.replayed += 1
                return REPLAYED
            self.stats.late += 1
            return LATE
        start = ts - ts % SECOND_US
        if start + SECOND_US + self.lateness <= st.watermark:
            self.stats.late += 1  # its window would have closed already (never opened: a gap)
            return LATE
        w = st.seconds.get(start)
        if w is None:
            w = st.seconds[start] = _Open(offset)
        if value is None:
            w.bad += 1
        else:
            if w.ts and ts <= w.ts[-1]:
                # The database keeps one reading per (tag, time): a second sample at a time this
                # window already holds (an OPC-UA value reported again with its old source time,
                # under a new seq) is the same reading, so it is not counted twice. Only checked
                # when not after the last sample, so in-order input pays nothing.
                if ts == w.ts[-1] or ts in w.ts:
                    self.stats.replayed += 1
                    return REPLAYED
                w.ordered = False
            w.ts.append(ts)
            w.vs.append(value)
        if ts > st.watermark:
            st.watermark = ts
        st.last_seen = now_us
        self._touched.add((st.plant, st.tag))
        return ACCEPTED

    def restore(self, horizons: dict[tuple[str, str], int]) -> None:
        """Apply a checkpoint: per (plant, tag), the end of the last minute already emitted."""
        for (plant, tag), horizon in horizons.items():
            st = self._tags.get((plant, tag))
            if st is None:
                st = self._tags[(plant, tag)] = _TagState(plant, tag, "", "")
            st.minute_horizon = max(st.minute_horizon, horizon)
            st.restored_horizon = max(st.restored_horizon, horizon)
            st.closed_upto = max(st.closed_upto, horizon)

    # --- output --------------------------------------------------------------------------------

    def collect(self) -> list[Aggregate]:
        """Close the windows whose tag watermark passed end + lateness (call after each batch)."""
        out: list[Aggregate] = []
        touched, self._touched = self._touched, set()
        for key in sorted(touched):  # sorted: emission order independent of set iteration order
            st = self._tags[key]
            self._close(st, st.watermark - self.lateness, out)
        return out

    def tick(self, now_us: int) -> list[Aggregate]:
        """Close every window of tags silent for the idle timeout (processing time ``now_us``)."""
        out: list[Aggregate] = []
        for key in sorted(
            k for k, st in self._tags.items() if (st.seconds or st.minutes) and now_us - st.last_seen >= self.idle
        ):
            st = self._tags[key]
            self.stats.idle_closed += 1
            self._close(st, None, out)
        return out

    def flush(self) -> list[Aggregate]:
        """Close everything (shutdown of a bounded run, tests)."""
        out: list[Aggregate] = []
        for key in sorted(self._tags):
            self._close(self._tags[key], None, out)
        return out

    def safe_offset(self) -> int | None:
        """Oldest source offset contributing to an open window (None: nothing open)."""
        best: int | None = None
        for st in self._tags.values():
            for w in st.seconds.values():
                if best is None or w.first_offset < best:
                    best = w.first_offset
            for p in st.minutes.values():
                if best is None or p.first_offset < best:
                    best = p.first_offset
        return best

    def checkpoint(self) -> dict[tuple[str, str], int]:
        return {k: st.minute_horizon for k, st in self._tags.items() if st.minute_horizon > -(2**62)}

    def open_windows(self) -> int:
        return sum(len(st.seconds) + len(st.minutes) for st in self._tags.values())

    def tags(self) -> Iterable[tuple[str, str]]:
        return self._tags.keys()

    # --- closing -------------------------------------------------------------------------------

    def _close(self, st: _TagState, limit: int | None, out: list[Aggregate]) -> None:
        """Close seconds ending at or before ``limit`` (None: all) and then the minutes likewise."""
        if st.seconds:
            starts = sorted(st.seconds)
            for s in starts:
                if limit is not None and s + SECOND_US > limit:
                    break
                self._close_second(st, s, st.seconds.pop(s), out)
        if st.minutes:
            for m in sorted(st.minutes):
                if limit is not None and m + MINUTE_US > limit:
                    break
                p = st.minutes.pop(m)
                out.append(self._aggregate(st, "1m", p, m + MINUTE_US, carry=False))
                self.stats.emitted_1m += 1
                st.minute_horizon = m + MINUTE_US
                if limit is None and st.closed_upto < m + MINUTE_US:
                    # Idle close: the rest of this minute is gone, later samples in it are late.
                    st.closed_upto = m + MINUTE_US

    def _close_second(self, st: _TagState, s: int, w: _Open, out: list[Aggregate]) -> None:
        p = Partial(s, w.first_offset, bad_count=w.bad)
        ts, vs = w.ts, w.vs
        n = len(ts)
        if n:
            if not w.ordered:
                order = sorted(range(n), key=ts.__getitem__)  # stable: ties keep arrival order
                ts = [ts[i] for i in order]
                vs = [vs[i] for i in order]
            mean = sum(vs) / n
            inner = 0.0
            for i in range(n - 1):
                inner += vs[i] * (ts[i + 1] - ts[i])
            p.count, p.min, p.max, p.mean = n, min(vs), max(vs), mean
            p.m2 = sum((x - mean) * (x - mean) for x in vs)
            p.first_ts, p.first_v, p.last_ts, p.last_v, p.inner = ts[0], vs[0], ts[-1], vs[-1], inner
        carry = st.carry_ts >= s - s % MINUTE_US  # a sample earlier in the same minute
        out.append(self._aggregate(st, "1s", p, s + SECOND_US, carry=carry))
        self.stats.emitted_1s += 1
        if st.closed_upto < s + SECOND_US:
            st.closed_upto = s + SECOND_US
        if n:
            st.carry_ts, st.carry_v = p.last_ts, p.last_v
        m = s - s % MINUTE_US
        mp = st.minutes.get(m)
        if mp is None:
            mp = st.minutes[m] = Partial(m, w.first_offset)
        elif w.first_offset < mp.first_offset:
            # Out-of-order arrival: a later second can hold an earlier record than the minute's
            # first second did; the replay must start at the minute's earliest record.
            mp.first_offset = w.first_offset
        mp.merge(p)

    def _aggregate(self, st: _TagState, window: str, p: Partial, end: int, carry: bool) -> Aggregate:
        lot = self.lot_of(st.plant, st.equipment, p.start_us)
        if p.count == 0:
            return Aggregate(
                st.plant,
                st.equipment,
                st.tag,
                window,
                p.start_us,
                0,
                p.bad_count,
                None,
                None,
                None,
                None,
                None,
                None,
                st.unit,
                lot,
            )
        integral = p.inner + p.last_v * (end - p.last_ts)
        begin = p.first_ts
        if carry:
            integral += st.carry_v * (p.first_ts - p.start_us)
            begin = p.start_us
        twa = integral / (end - begin)
        std = (p.m2 / p.count) ** 0.5 if p.m2 > 0 else 0.0
        return Aggregate(
            st.plant,
            st.equipment,
            st.tag,
            window,
            p.start_us,
            p.count,
            p.bad_count,
            p.min,
            p.max,
            p.mean,
            p.last_v,
            std,
            twa,
            st.unit,
            lot,
        )
