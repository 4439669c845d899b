"""Lot context: which lot is on which equipment when, plus genealogy.

Built from context events: ``lot_start`` opens an interval for a lot on an equipment path (and
closes the interval still open there at that moment), ``lot_end`` closes it, ``genealogy``
records parents and relation. Intervals are kept per equipment (the last ``history`` of them),
so readings stamped slightly before a late-arriving context event, or looked up for an
aggregate window that closes later, still find the lot that was active at *their* timestamp.

Hierarchy: a lot on ``acme/duisburg/steelmaking/caster1`` applies to every descendant path
(``.../caster1/mould``); the most specific equipment with an active lot wins.

Applying the same event twice is a no-op, so the tracker can be rebuilt by re-reading the
context topic from the beginning and fed the same events from several paths.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from plantstream.contract import ContextEvent, ContextKind


@dataclass(slots=True)
class LotInterval:
    lot: str
    start_us: int
    end_us: int | None = None  # None: still running


@dataclass(slots=True)
class LotInfo:
    lot: str
    plant: str
    lot_kind: str = ""
    material: str = ""
    equipment: str = ""
    start_us: int | None = None
    end_us: int | None = None
    parents: tuple[str, ...] = ()
    relation: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


class LotTracker:
    def __init__(self, history: int = 256, max_lots: int = 200_000) -> None:
        self.history = history
        self.max_lots = max_lots
        self._iv: dict[tuple[str, str], list[LotInterval]] = {}
        self._starts: dict[tuple[str, str], list[int]] = {}
        self._info: dict[tuple[str, str], LotInfo] = {}
        self._prefixes: dict[str, tuple[str, ...]] = {}
        self.version = 0  # bumps on every change (callers cache lookups per version)

    # --- input ---------------------------------------------------------------------------------

    def apply(self, ev: ContextEvent) -> bool:
        """Apply one context event; returns True when it changed anything. Lab results only
        contribute lot attributes (material) here; their checks live in specs."""
        info = self._lot(ev.plant, ev.lot)
        if ev.lot_kind:
            info.lot_kind = ev.lot_kind
        if ev.material:
            info.material = ev.material
        if ev.attrs:
            info.attrs.update(ev.attrs)
        if ev.kind is ContextKind.LOT_START:
            info.equipment, info.start_us = ev.equipment, ev.ts_us
            changed = self._start(ev.plant, ev.equipment, ev.lot, ev.ts_us)
        elif ev.kind is ContextKind.LOT_END:
            info.end_us = ev.ts_us
            changed = self._end(ev.plant, ev.equipment, ev.lot, ev.ts_us)
        elif ev.kind is ContextKind.GENEALOGY:
            changed = (info.parents, info.relation) != (tuple(ev.parents), ev.relation)
            info.parents, info.relation = tuple(ev.parents), ev.relation
        else:
            changed = False
        if changed:
            self.version += 1
        return changed

    def _lot(self, plant: str, lot: str) -> LotInfo:
        key = (plant, lot)
        info = self._info.get(key)
        if info is None:
            info = self._info[key] = LotInfo(lot, plant)
            if len(self._info) > self.max_lots:
                del self._info[next(iter(self._info))]
        return info

    def _start(self, plant: str, equipment: str, lot: str, ts: int) -> bool:
        key = (plant, equipment)
        ivs = self._iv.setdefault(key, [])
        starts = self._starts.setdefault(key, [])
        i = bisect.bisect_right(starts, ts)
        if any(iv.lot == lot and iv.start_us == ts for iv in ivs[max(0, i - 2) : i + 1]):
            return False  # replayed event
        nxt = ivs[i] if i < len(ivs) else None
        if i > 0:
            prev = ivs[i - 1]
            if prev.end_us is None or prev.end_us > ts:
                prev.end_us = ts  # one lot at a time per equipment: the new start ends the previous
        ivs.insert(i, LotInterval(lot, ts, nxt.start_us if nxt is not None else None))
        starts.insert(i, ts)
        if len(ivs) > self.history:
            del ivs[0]
            del starts[0]
        return True

    def _end(self, plant: str, equipment: str, lot: str, ts: int) -> bool:
        ivs = self._iv.get((plant, equipment), [])
        for iv in reversed(ivs):
            if iv.lot == lot and iv.start_us <= ts:
                if iv.end_us is not None and iv.end_us <= ts:
                    return False
                iv.end_us = ts
                return True
        return False

    # --- lookups -------------------------------------------------------------------------------

    def prefixes(self, equipment: str) -> tuple[str, ...]:
        """``a/b/c`` -> ``("a/b/c", "a/b", "a")`` (memoized)."""
        p = self._prefixes.get(equipment)
        if p is None:
            parts = equipment.split("/")
            p = tuple("/".join(parts[:n]) for n in range(len(parts), 0, -1))
            if len(self._prefixes) < 100_000:
                self._prefixes[equipment] = p
        return p

    def _at(self, key: tuple[str, str], ts: int) -> LotInterval | None:
        starts = self._starts.get(key)
        if not starts:
            return None
        i = bisect.bisect_right(starts, ts) - 1
        if i < 0:
            return None
        iv = self._iv[key][i]
        return iv if iv.end_us is None or ts < iv.end_us else None

    def exact_at(self, plant: str, equipment: str, ts: int) -> LotInterval | None:
        """The interval active at ``ts`` on exactly ``equipment`` (ancestors not consulted)."""
        return self._at((plant, equipment), ts)

    def last_change(self, plant: str, equipment: str) -> int | None:
        """Time of the latest lot start or end known on exactly ``equipment`` (None: none known)."""
        ivs = self._iv.get((plant, equipment))
        if not ivs:
            return None
        last = ivs[-1]
        return last.start_us if last.end_us is None else max(last.start_us, last.end_us)

    def interval_at(self, plant: str, equipment: str, ts: int) -> LotInterval | None:
        """The interval active at ``ts`` on ``equipment`` or its nearest ancestor."""
        for prefix in self.prefixes(equipment):
            iv = self._at((plant, prefix), ts)
            if iv is not None:
                return iv
        return None

    def lot_at(self, plant: str, equipment: str, ts: int) -> str | None:
        iv = self.interval_at(plant, equipment, ts)
        return iv.lot if iv is not None else None

    def uniform(self, plant: str, equipment: str, lo: int, hi: int) -> tuple[bool, str | None]:
        """(True, lot) when one lot (or none) covers all of ``[lo, hi]`` on ``equipment`` - the
        per-batch fast path; (False, None) when a lot boundary lies inside the range."""
        for prefix in self.prefixes(equipment):
            key = (plant, prefix)
            starts = self._starts.get(key)
            if not starts:
                continue
            j = bisect.bisect_right(starts, hi) - 1
            if j < 0:
                continue
            iv = self._iv[key][j]
            if iv.start_us > lo or (iv.end_us is not None and lo < iv.end_us <= hi):
                return False, None
        return True, self.lot_at(plant, equipment, lo)

    def info(self, plant: str, lot: str) -> LotInfo | None:
        return self._info.get((plant, lot))

    def material(self, plant: str, lot: str) -> str:
        """The lot's material, inherited from the nearest ancestor that has one ("" if none)."""
        for name in self.lineage(plant, lot):
            info = self._info.get((plant, name))
            if info is not None and info.material:
                return info.material
        return ""

    def lineage(self, plant: str, lot: str) -> Iterator[str]:
        """The lot, then its ancestors breadth-first (each once)."""
        seen = {lot}
        queue = [lot]
        while queue:
            name = queue.pop(0)
            yield name
            info = self._info.get((plant, name))
            for parent in info.parents if info is not None else ():
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)

    def intervals(self, plant: str, equipment: str) -> list[LotInterval]:
        return list(self._iv.get((plant, equipment), []))
