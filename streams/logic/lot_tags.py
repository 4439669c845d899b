"""Lot changes derived from a process tag that carries the current lot id (e.g. an OPC-UA string
``caster1.current_heat``, or an Int32 "current heat number"), for plants without an MES feed.

Rules, per configured (plant, tag), applied to readings in the tag's event order:

* a usable value different from the lot running on the equipment at the reading's source time
  -> ``lot_end`` of that lot (if any) and ``lot_start`` of the new one, both at that time;
* the empty string (or a configured idle value such as ``"0"``) -> ``lot_end`` of the running lot;
* the same value as the running lot -> nothing;
* BAD quality -> ignored: a lost connection or one failed read says nothing about the material,
  so it must not cut a heat in two (the lot stays open until a usable reading says otherwise).
  UNCERTAIN values are used (a last-usable value is still the best knowledge);
* a value that is neither str nor an integer (bool, fractional float) -> ignored and counted;
* a reading older than the newest one used for that tag, or not newer than the latest lot
  change already known on the equipment, -> ignored (out of order or re-read; at one timestamp
  the first change wins).

State: the "current lot" is not kept here but read from the :class:`LotTracker` at the reading's
timestamp (exact equipment, no ancestors). The tracker is rebuilt from the context topic on every
worker start and the derived events are produced to that topic, so after a restart or partition
move the re-read readings are older than the known changes or find their lot already running and
derive nothing, or - if the events never got out before the crash (then the raw offsets were not
committed either; the context events of one equipment share a partition, so the delivered ones
are a prefix) - derive the very same events again. Events carry no clock or random content, so
duplicates are no-ops in :meth:`LotTracker.apply`. The per-tag high-water mark of source time is
saved in the partition checkpoint (:meth:`checkpoint`); it only matters for readings that arrive
out of order across the restart point, which in-order edges do not produce.

A consequence: the tag wins over other lot sources for its equipment. If an MES also sends lots
for the same equipment, the next differing reading of the tag ends the MES lot. Configure a lot
tag only for equipment whose lots come from nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from plantstream.contract import ContextEvent, ContextKind, Quality, Value
from plantstream.streams.logic.lots import LotTracker

# attrs key naming the tag a lot event was derived from (operators can tell MES lots from tag lots)
SOURCE_ATTR = "lot_tag"


@dataclass(frozen=True, slots=True)
class LotTagSpec:
    """One tag whose value is the current lot id of ``equipment`` (default: the reading's)."""

    plant: str
    tag: str
    lot_kind: str = ""
    equipment: str | None = None
    material: str = ""
    idle_values: frozenset[str] = field(default_factory=frozenset)


def lot_value(value: Value) -> str | None:
    """The lot id a reading's value names: stripped text, an integer as decimal digits ("" means
    no lot). None when the value cannot be a lot id (bool, fractional float)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


class LotTagTracker:
    """Turns readings of configured lot tags into lot_start / lot_end context events."""

    def __init__(self, specs: Iterable[LotTagSpec], lots: LotTracker) -> None:
        self.specs: dict[tuple[str, str], LotTagSpec] = {}
        for s in specs:
            if (s.plant, s.tag) in self.specs:
                raise ValueError(f"lot tag {s.plant}/{s.tag} configured twice")
            self.specs[(s.plant, s.tag)] = s
        self.lots = lots
        self._hwm: dict[tuple[str, str], int] = {}
        self.ignored_bad = 0
        self.ignored_type = 0
        self.ignored_old = 0

    def __bool__(self) -> bool:
        return bool(self.specs)

    def watches(self, plant: str, tag: str) -> bool:
        return (plant, tag) in self.specs

    def observe(
        self, plant: str, equipment: str, tag: str, ts_us: int, value: Value, quality: Quality | int
    ) -> list[ContextEvent]:
        """Feed one reading (of any tag; unwatched tags return []). The returned events are
        already applied to the lot tracker, so readings processed next are stamped with them;
        the caller publishes them. Never raises on input."""
        key = (plant, tag)
        spec = self.specs.get(key)
        if spec is None:
            return []
        if quality == Quality.BAD:
            self.ignored_bad += 1
            return []
        lot = lot_value(value)
        if lot is None:
            self.ignored_type += 1
            return []
        hwm = self._hwm.get(key)
        eq = spec.equipment or equipment
        changed = self.lots.last_change(plant, eq)
        if (hwm is not None and ts_us < hwm) or (changed is not None and ts_us <= changed):
            self.ignored_old += 1
            return []
        self._hwm[key] = ts_us
        running = self.lots.exact_at(plant, eq, ts_us)
        current = running.lot if running is not None else None
        new = None if lot == "" or lot in spec.idle_values else lot
        if new == current:
            return []
        attrs = {SOURCE_ATTR: tag}
        events: list[ContextEvent] = []
        if current is not None:
            # The ended lot's kind/material are left empty: apply() keeps what the lot already has.
            events.append(ContextEvent(ContextKind.LOT_END, plant, eq, ts_us, current, attrs=dict(attrs)))
        if new is not None:
            events.append(
                ContextEvent(
                    ContextKind.LOT_START,
                    plant,
                    eq,
                    ts_us,
                    new,
                    lot_kind=spec.lot_kind,
                    material=spec.material,
                    attrs=dict(attrs),
                )
            )
        for ev in events:
            self.lots.apply(ev)
        return events

    def checkpoint(self) -> list[list[str | int]]:
        """Per-tag high-water marks as JSON-able rows ``[plant, tag, ts_us]``."""
        return [[p, t, ts] for (p, t), ts in sorted(self._hwm.items())]

    def restore(self, rows: Iterable[Iterable[object]]) -> None:
        """Install marks from :meth:`checkpoint` (rows of unconfigured tags are dropped);
        ValueError/TypeError on malformed rows."""
        for row in rows:
            p, t, ts = row
            if not isinstance(p, str) or not isinstance(t, str) or type(ts) is not int:
                raise ValueError(f"bad lot-tag checkpoint row {row!r}")
            if (p, t) in self.specs:
                self._hwm[(p, t)] = max(ts, self._hwm.get((p, t), ts))
