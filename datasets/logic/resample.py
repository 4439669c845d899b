"""Incremental resampling of raw readings onto a fixed time grid, with per-tag gap rules.

Grid: row ``k`` covers the bucket ``[start + k*interval, start + (k+1)*interval)`` and is stamped
with the bucket start. A tag's value in a row is its LAST reading in the bucket (the "last"
aggregate of a historian). Buckets without a reading follow the tag's gap rule:

* ``none``:   null.
* ``locf``:   the last observed value, if ``t_k - t_obs <= max_gap`` (``t_obs`` the time of that
              reading, ``t_k`` the bucket start); else null.
* ``linear``: linear in time between the previous observation ``(t_p, v_p)`` and the next
              ``(t_n, v_n)``, evaluated at ``t_k``, if ``t_n - t_p <= max_gap``; else null.
              Float tags only.

The lot of a row is the lot stamped on the latest reading in the bucket over all tags (ties: the
first tag in plan order); an empty bucket carries the previous row's lot forward within
``lot_max_gap``.

Streaming contract: the caller feeds readings window by window, in increasing time, each window
``[k_lo, k_hi)`` contiguous with the previous one, covering ``[first_k, last_k)`` (see
``Resampler.first_k`` / ``last_k``: the lookback and lookahead the gap rules need). ``feed``
returns the rows it can finalize; rows whose linear interpolation may still depend on a later
reading are held back (at most ``max_gap / interval + 1`` rows). ``finish`` returns the rest.
The output does not depend on how the time range is cut into windows (tested), so memory is
bounded by the window size the caller picks. Only rows with ``0 <= k < n_rows`` are returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Kind = Literal["float", "int", "bool", "str"]
Rule = Literal["none", "locf", "linear"]
NO_LOT = -1

_DTYPES: dict[str, Any] = {"float": np.float64, "int": np.int64, "bool": np.bool_, "str": object}


@dataclass(frozen=True, slots=True)
class TagPlan:
    column: str
    kind: Kind
    rule: Rule = "none"
    max_gap_us: int = 0

    def __post_init__(self) -> None:
        if self.rule == "linear" and self.kind != "float":
            raise ValueError(f"tag {self.column!r}: linear interpolation needs a float tag, not {self.kind}")
        if self.rule != "none" and self.max_gap_us <= 0:
            raise ValueError(f"tag {self.column!r}: gap rule {self.rule} needs a positive max_gap")


@dataclass(slots=True)
class Chunk:
    """Raw readings of one window (any order). ``tag`` indexes the plan. Values are carried by
    type so they stay exact: ``value`` (float64) for float tags, ``ivalue`` (int64) for int and
    bool tags (defaults to ``value`` cast), ``text`` (object) for str tags. ``by_tag``: the
    producer guarantees (tag, time) order, so consumers skip their sort."""

    tag: npt.NDArray[np.int32]
    t_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    lot: npt.NDArray[np.int32]
    ivalue: npt.NDArray[np.int64] | None = None
    text: npt.NDArray[Any] | None = None
    by_tag: bool = False

    @staticmethod
    def empty() -> Chunk:
        return Chunk(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int32))

    def ints(self) -> npt.NDArray[np.int64]:
        return self.ivalue if self.ivalue is not None else self.value.astype(np.int64)

    def texts(self) -> npt.NDArray[Any]:
        if self.text is not None:
            return self.text
        out = np.empty(self.value.size, dtype=object)
        out[:] = None
        return out

    @staticmethod
    def concat(chunks: Sequence[Chunk]) -> Chunk:
        if not chunks:
            return Chunk.empty()
        if len(chunks) == 1:
            return chunks[0]
        return Chunk(
            np.concatenate([c.tag for c in chunks]),
            np.concatenate([c.t_us for c in chunks]),
            np.concatenate([c.value for c in chunks]),
            np.concatenate([c.lot for c in chunks]),
            np.concatenate([c.ints() for c in chunks]) if any(c.ivalue is not None for c in chunks) else None,
            np.concatenate([c.texts() for c in chunks]) if any(c.text is not None for c in chunks) else None,
        )


@dataclass(slots=True)
class Rows:
    """Finalized grid rows: ``k`` (row index), per tag (values, valid mask), lot id (NO_LOT = none),
    and per tag ``observed``: the bucket held a reading (valid but not observed: gap-filled)."""

    k: npt.NDArray[np.int64]
    values: list[npt.NDArray[Any]]
    valid: list[npt.NDArray[np.bool_]]
    lot: npt.NDArray[np.int32]
    observed: list[npt.NDArray[np.bool_]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.k.size)

    def take(self, idx: npt.NDArray[Any]) -> Rows:
        return Rows(
            self.k[idx],
            [v[idx] for v in self.values],
            [m[idx] for m in self.valid],
            self.lot[idx],
            [o[idx] for o in self.observed],
        )


@dataclass(slots=True)
class _Obs:
    """Per-tag observations of the pending rows: bucket-last value, its time, its lot."""

    has: npt.NDArray[np.bool_]
    val: npt.NDArray[Any]
    t: npt.NDArray[np.int64]
    lot: npt.NDArray[np.int32]


@dataclass(slots=True)
class _Prev:
    t: int | None = None
    v: Any = None


@dataclass
class Resampler:
    start_us: int
    interval_us: int
    n_rows: int
    tags: Sequence[TagPlan]
    lot_max_gap_us: int = 0
    _base: int = field(init=False)  # absolute k of the first pending row
    _obs: list[_Obs] = field(init=False)
    _prev: list[_Prev] = field(init=False)
    _prev_lot: tuple[int, int] | None = field(init=False, default=None)  # (time of its reading, lot)
    _next_k: int = field(init=False)

    def __post_init__(self) -> None:
        if self.interval_us <= 0:
            raise ValueError("interval must be positive")
        self._base = self.first_k
        self._next_k = self.first_k
        self._obs = [self._empty_obs(p.kind, 0) for p in self.tags]
        self._prev = [_Prev() for _ in self.tags]

    # -- what the caller must feed ----------------------------------------------------------------

    @property
    def lookback_us(self) -> int:
        gaps = [p.max_gap_us for p in self.tags if p.rule != "none"] + [self.lot_max_gap_us]
        return max(gaps)

    @property
    def lookahead_us(self) -> int:
        gaps = [p.max_gap_us for p in self.tags if p.rule == "linear"]
        return max(gaps) + self.interval_us if gaps else 0

    @property
    def first_k(self) -> int:
        return -math.ceil(self.lookback_us / self.interval_us)

    @property
    def last_k(self) -> int:
        return self.n_rows + math.ceil(self.lookahead_us / self.interval_us)

    @property
    def holdback(self) -> int:
        la = self.lookahead_us
        return math.ceil(la / self.interval_us) + 1 if la else 0

    def t_of(self, k: int) -> int:
        return self.start_us + k * self.interval_us

    # -- streaming --------------------------------------------------------------------------------

    def feed(self, k_lo: int, k_hi: int, chunk: Chunk) -> Rows:
        """Add the readings of rows ``[k_lo, k_hi)``; return the rows now final."""
        if k_lo != self._next_k:
            raise ValueError(f"windows must be contiguous: expected k_lo={self._next_k}, got {k_lo}")
        if k_hi < k_lo:
            raise ValueError("k_hi < k_lo")
        self._next_k = k_hi
        self._append(k_lo, k_hi, chunk)
        return self._finalize(k_hi - self.holdback)

    def finish(self) -> Rows:
        return self._finalize(self._next_k)

    # -- internals --------------------------------------------------------------------------------

    @staticmethod
    def _empty_obs(kind: str, n: int) -> _Obs:
        return _Obs(
            np.zeros(n, np.bool_),
            np.zeros(n, _DTYPES[kind]) if kind != "str" else np.full(n, None, object),
            np.zeros(n, np.int64),
            np.full(n, NO_LOT, np.int32),
        )

    def _append(self, k_lo: int, k_hi: int, chunk: Chunk) -> None:
        n = k_hi - k_lo
        new = [self._empty_obs(p.kind, n) for p in self.tags]
        if chunk.t_us.size:
            k = (chunk.t_us - self.start_us) // self.interval_us
            if k.min() < k_lo or k.max() >= k_hi:
                raise ValueError("a reading lies outside its window")
            # Sort by (tag, time): time is unique per tag (primary key), so the order is total.
            if chunk.by_tag:
                tag, kk = chunk.tag, k
                order = None
            else:
                order = np.lexsort((chunk.t_us, chunk.tag))
                tag, kk = chunk.tag[order], k[order]
            last = np.ones(tag.size, np.bool_)
            last[:-1] = (tag[1:] != tag[:-1]) | (kk[1:] != kk[:-1])
            pos = np.flatnonzero(last) if order is None else order[last]
            # pos is grouped by tag: one binary search per tag instead of a pass over pos per tag.
            bounds = np.searchsorted(tag[last], np.arange(len(self.tags) + 1))
            for i, p in enumerate(self.tags):
                sel = pos[bounds[i] : bounds[i + 1]]
                if not sel.size:
                    continue
                rows = k[sel] - k_lo
                o = new[i]
                o.has[rows] = True
                o.val[rows] = _pick(chunk, sel, p.kind)
                o.t[rows] = chunk.t_us[sel]
                o.lot[rows] = chunk.lot[sel]
            del tag, kk
        for i in range(len(self.tags)):
            a, b = self._obs[i], new[i]
            self._obs[i] = _Obs(
                np.concatenate([a.has, b.has]),
                np.concatenate([a.val, b.val]),
                np.concatenate([a.t, b.t]),
                np.concatenate([a.lot, b.lot]),
            )
        if not self.tags:
            self._pending_len = getattr(self, "_pending_len", 0) + n

    def _pending(self) -> int:
        return int(self._obs[0].has.size) if self.tags else int(getattr(self, "_pending_len", 0))

    def _finalize(self, upto_k: int) -> Rows:
        """Finalize pending rows with absolute k < upto_k."""
        n_pend = self._pending()
        cut = max(0, min(n_pend, upto_k - self._base))
        ks = np.arange(self._base, self._base + n_pend, dtype=np.int64)
        tk = self.start_us + ks * self.interval_us
        values: list[npt.NDArray[Any]] = []
        valid: list[npt.NDArray[np.bool_]] = []
        observed: list[npt.NDArray[np.bool_]] = []
        for i, p in enumerate(self.tags):
            v, m = self._fill(self._obs[i], self._prev[i], p, tk)
            values.append(v[:cut])
            valid.append(m[:cut])
            observed.append(self._obs[i].has[:cut].copy())
        lot = self._lots(tk)[:cut]
        # Carry state past the finalized rows, then drop them.
        if cut:
            self._update_prev_lot(cut)
        for i in range(len(self.tags)):
            o = self._obs[i]
            seen = np.flatnonzero(o.has[:cut])
            if seen.size:
                j = int(seen[-1])
                self._prev[i] = _Prev(int(o.t[j]), o.val[j])
            self._obs[i] = _Obs(o.has[cut:], o.val[cut:], o.t[cut:], o.lot[cut:])
        if not self.tags:
            self._pending_len = n_pend - cut
        out_k = ks[:cut]
        self._base += cut
        keep = (out_k >= 0) & (out_k < self.n_rows)
        return Rows(out_k, values, valid, lot, observed).take(np.flatnonzero(keep))

    def _fill(
        self, o: _Obs, prev: _Prev, p: TagPlan, tk: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
        n = o.has.size
        val = o.val.copy()
        ok = o.has.copy()
        if p.rule == "none" or n == 0:
            return val, ok
        idx = np.arange(n)
        last = np.maximum.accumulate(np.where(o.has, idx, -1))
        has_prev = last >= 0
        pt = np.where(has_prev, o.t[np.maximum(last, 0)], prev.t if prev.t is not None else 0)
        has_prev = has_prev | (prev.t is not None)
        if p.rule == "locf":
            pv = o.val[np.maximum(last, 0)]
            if prev.t is not None:
                pv = np.where(last >= 0, pv, np.array(prev.v, dtype=val.dtype) if p.kind != "str" else prev.v)
            fill = ~o.has & has_prev & (tk - pt <= p.max_gap_us)
            val[fill] = pv[fill]
            ok |= fill
            return val, ok
        # linear
        nxt = np.minimum.accumulate(np.where(o.has, idx, n)[::-1])[::-1]
        has_next = nxt < n
        nt = o.t[np.minimum(nxt, n - 1)]
        nv = o.val[np.minimum(nxt, n - 1)].astype(np.float64)
        pv = o.val[np.maximum(last, 0)].astype(np.float64)
        if prev.t is not None:
            pv = np.where(last >= 0, pv, float(prev.v))
        fill = ~o.has & has_prev & has_next & (nt - pt <= p.max_gap_us)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = (tk - pt).astype(np.float64) / np.where(fill, nt - pt, 1).astype(np.float64)
            interp = pv + (nv - pv) * frac
        val[fill] = interp[fill]
        ok |= fill
        return val, ok

    def _lots(self, tk: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        n = tk.size
        if not self.tags or n == 0:
            return np.full(n, NO_LOT, np.int32)
        times = np.stack([np.where(o.has, o.t, np.iinfo(np.int64).min) for o in self._obs])
        lots = np.stack([o.lot for o in self._obs])
        best = np.argmax(times, axis=0)  # first maximum: ties go to the earlier tag in plan order
        cols = np.arange(n)
        row_has = times[best, cols] != np.iinfo(np.int64).min
        row_t = times[best, cols]
        row_lot = np.where(row_has, lots[best, cols], NO_LOT).astype(np.int32)
        # Carry forward over empty buckets within lot_max_gap.
        idx = np.arange(n)
        last = np.maximum.accumulate(np.where(row_has, idx, -1))
        src_t = np.where(last >= 0, row_t[np.maximum(last, 0)], 0)
        src_lot = np.where(last >= 0, row_lot[np.maximum(last, 0)], NO_LOT)
        if self._prev_lot is not None:
            src_t = np.where(last >= 0, src_t, self._prev_lot[0])
            src_lot = np.where(last >= 0, src_lot, self._prev_lot[1])
        has_src = (last >= 0) | (self._prev_lot is not None)
        fill = ~row_has & has_src & (tk - src_t <= self.lot_max_gap_us)
        return np.where(row_has, row_lot, np.where(fill, src_lot, NO_LOT)).astype(np.int32)

    def _update_prev_lot(self, cut: int) -> None:
        if not self.tags:
            return
        best_t: int | None = None
        best_lot = NO_LOT
        for o in self._obs:
            seen = np.flatnonzero(o.has[:cut])
            if seen.size:
                j = int(seen[-1])
                t = int(o.t[j])
                if best_t is None or t > best_t:
                    best_t, best_lot = t, int(o.lot[j])
        if best_t is not None:
            self._prev_lot = (best_t, best_lot)


def _pick(c: Chunk, sel: npt.NDArray[Any], kind: str) -> npt.NDArray[Any]:
    out: npt.NDArray[Any]
    if kind == "float":
        out = c.value[sel]
    elif kind == "int":
        out = c.ints()[sel]
    elif kind == "bool":
        out = c.ints()[sel] != 0
    else:
        out = c.texts()[sel]
    return out
