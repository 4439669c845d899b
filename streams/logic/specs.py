"""Spec checks: live process tags against the active lot's material spec, and lab results.

* Process: a tag whose ``TagMeta.spec_property`` names a property with a ``basis="process"``
  limit in the active lot's material spec is checked on every non-BAD reading. Leaving the
  limits opens an excursion (a :class:`~plantstream.contract.Deviation` with status open);
  coming back, a change of lot, or :meth:`SpecChecker.close_all` closes it (same ``id``, status
  closed, with end, duration and peak). A live page can upsert by ``id``.

Records are the contract's ``Deviation`` (one per message on the deviations topic; the sink
stores it in ``deviations``): ``id`` is deterministic, ``peak`` the value furthest outside,
``limit`` the bound it crossed, ``limit_min``/``limit_max``/``unit`` the window in the tag's
canonical unit; details carry ``duration_s`` and, for lab records, ``condition`` and ``test_method``.
* Lab: a ``lab_result`` context event is checked against the ``basis="lab"`` limits of the lot's
  material; each result outside becomes a lot-level deviation (closed at once).

Limits are converted into the tag's canonical unit once per (spec, property, unit). Conditioned
limits (``"thickness_mm<=16"``) apply when the lot's attributes satisfy them; a lone limit
whose condition names something the lot does not carry (a test condition such as
``test_temperature=-20degC``) applies as is. Specs come from a :class:`SpecRegistry`;
:class:`MaterialsRegistry` reads ``plantstream.domain.materials.MATERIALS`` (the database can
implement the same protocol later).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from plantstream.contract import ContextEvent, ContextKind, Deviation, DeviationKind, DeviationStatus
from plantstream.domain.materials import MaterialSpec, PropertyLimit
from plantstream.domain.units import UnitError, convert_to
from plantstream.streams.logic.lots import LotTracker

log = logging.getLogger(__name__)


class SpecRegistry(Protocol):
    def get(self, spec_id: str) -> MaterialSpec | None: ...


class MaterialsRegistry:
    """Specs from a mapping (default: the core catalogue ``domain.materials.MATERIALS``, read live)."""

    def __init__(self, specs: Mapping[str, MaterialSpec] | None = None) -> None:
        if specs is None:
            from plantstream.domain.materials import MATERIALS

            specs = MATERIALS
        self._specs = specs

    def get(self, spec_id: str) -> MaterialSpec | None:
        return self._specs.get(spec_id)


_CMP = re.compile(r"\s*(<=|>=|==|=|<|>)\s*")
_OPS = {
    "<=": float.__le__,
    ">=": float.__ge__,
    "<": float.__lt__,
    ">": float.__gt__,
    "=": float.__eq__,
    "==": float.__eq__,
}


def condition_holds(condition: str, attrs: Mapping[str, Any]) -> bool | None:
    """Evaluate ``"16<thickness_mm<=40"``-style chains against ``attrs``.

    True/False when decidable; None when the condition names an attribute ``attrs`` lacks or is
    not a numeric comparison (then it describes the test, not which lots it selects)."""
    if not condition.strip():
        return True
    parts = _CMP.split(condition.strip())
    if len(parts) < 3 or len(parts) % 2 == 0:
        return None
    values: list[float] = []
    for i in range(0, len(parts), 2):
        token = parts[i].strip()
        try:
            values.append(float(token))
        except ValueError:
            if token not in attrs:
                return None
            try:
                values.append(float(attrs[token]))
            except (TypeError, ValueError):
                return None
    return all(_OPS[parts[i]](values[i // 2], values[i // 2 + 1]) for i in range(1, len(parts), 2))


def select_limit(limits: list[PropertyLimit], attrs: Mapping[str, Any]) -> PropertyLimit | None:
    """The limit that applies to a lot with ``attrs`` (see module doc)."""
    if len(limits) == 1:
        return limits[0] if condition_holds(limits[0].condition, attrs) is not False else None
    for lim in limits:
        if condition_holds(lim.condition, attrs) is True:
            return lim
    return None


@dataclass(frozen=True, slots=True)
class ProcessLimit:
    spec_id: str
    property: str
    lo: float | None  # canonical unit of the tag
    hi: float | None
    unit: str

    def outside(self, v: float) -> bool:
        return (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi)

    def violated(self, v: float) -> float | None:
        """The bound ``v`` lies beyond (the deviation record's ``limit``); None when inside."""
        if self.lo is not None and v < self.lo:
            return self.lo
        if self.hi is not None and v > self.hi:
            return self.hi
        return None

    def excess(self, v: float) -> float:
        if self.lo is not None and v < self.lo:
            return self.lo - v
        if self.hi is not None and v > self.hi:
            return v - self.hi
        return 0.0


def deviation_id(*parts: object) -> str:
    """Deterministic id: re-processing the same input yields the same id (sinks upsert by it)."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:20]


@dataclass(slots=True)
class _Excursion:
    record: Deviation
    limit: ProcessLimit
    peak: float
    peak_excess: float
    last_ts: int


class SpecChecker:
    def __init__(self, lots: LotTracker, registry: SpecRegistry | None = None) -> None:
        self.lots = lots
        self.registry: SpecRegistry = registry or MaterialsRegistry()
        self._limits: dict[tuple[str, str, str, str], ProcessLimit | None] = {}
        self._open: dict[tuple[str, str], _Excursion] = {}
        self.errors = 0

    # --- process tags --------------------------------------------------------------------------

    def process_limit(self, plant: str, lot: str, prop: str, unit: str) -> ProcessLimit | None:
        material = self.lots.material(plant, lot)
        if not material:
            return None
        info = self.lots.info(plant, lot)
        key = (material, prop, unit, lot if info is not None and info.attrs else "")
        if key in self._limits:
            return self._limits[key]
        result: ProcessLimit | None = None
        spec = self.registry.get(material)
        if spec is not None:
            cands = [lim for lim in spec.limits if lim.basis == "process" and lim.property == prop]
            lim = select_limit(cands, info.attrs if info is not None else {})
            if lim is not None:
                try:
                    lo = convert_to(lim.min, lim.unit, unit) if lim.min is not None else None
                    hi = convert_to(lim.max, lim.unit, unit) if lim.max is not None else None
                    result = ProcessLimit(spec.spec_id, prop, lo, hi, unit)
                except UnitError as exc:
                    self.errors += 1
                    log.warning(
                        "spec limit unusable", extra={"kv": {"spec": spec.spec_id, "property": prop, "error": str(exc)}}
                    )
        if len(self._limits) > 100_000:
            self._limits.clear()
        self._limits[key] = result
        return result

    def check(
        self, plant: str, equipment: str, tag: str, prop: str, unit: str, ts: int, value: float, lot: str | None
    ) -> list[Deviation]:
        """Check one reading of a spec-tied tag; returns deviation records to publish (0..2)."""
        out: list[Deviation] = []
        key = (plant, tag)
        exc = self._open.get(key)
        if exc is not None and exc.record.lot != lot:
            out.append(self._close(key, exc, exc.last_ts))
            exc = None
        limit = self.process_limit(plant, lot, prop, unit) if lot else None
        if limit is None:
            return out
        if limit.outside(value):
            excess = limit.excess(value)
            if exc is None:
                rec = Deviation(
                    id=deviation_id("process", plant, tag, lot, limit.spec_id, prop, ts),
                    kind=DeviationKind.PROCESS,
                    status=DeviationStatus.OPEN,
                    plant=plant,
                    equipment=equipment,
                    start_us=ts,
                    lot=lot,
                    spec=limit.spec_id,
                    property=prop,
                    tag=tag,
                    peak=value,
                    limit=limit.violated(value),
                    unit=unit,
                    limit_min=limit.lo,
                    limit_max=limit.hi,
                    details={"duration_s": None},
                )
                self._open[key] = _Excursion(rec, limit, value, excess, ts)
                out.append(rec)
            else:
                exc.last_ts = ts
                if excess > exc.peak_excess:
                    exc.peak, exc.peak_excess = value, excess
        elif exc is not None:
            out.append(self._close(key, exc, ts))
        return out

    def _close(self, key: tuple[str, str], exc: _Excursion, end: int) -> Deviation:
        del self._open[key]
        rec = exc.record
        # An excursion's readings may arrive out of order: it never ends before it started.
        end = max(end, rec.start_us)
        return rec.replace(
            status=DeviationStatus.CLOSED,
            end_us=end,
            peak=exc.peak,
            limit=exc.limit.violated(exc.peak),
            details={**rec.details, "duration_s": (end - rec.start_us) / 1e6},
        )

    def close_all(self) -> list[Deviation]:
        """Close every open excursion at its last out-of-spec sample (shutdown of a bounded run)."""
        return [self._close(k, e, e.last_ts) for k, e in sorted(self._open.items())]

    def open_count(self) -> int:
        return len(self._open)

    # --- lab results ---------------------------------------------------------------------------

    def lab_result(self, ev: ContextEvent) -> list[Deviation]:
        """Deviations for every result of ``ev`` outside its lab limits (lot-level, closed)."""
        if ev.kind is not ContextKind.LAB_RESULT:
            return []
        material = ev.material or self.lots.material(ev.plant, ev.lot)
        spec = self.registry.get(material) if material else None
        if spec is None:
            return []
        info = self.lots.info(ev.plant, ev.lot)
        attrs = {**(info.attrs if info is not None else {}), **ev.attrs}
        out: list[Deviation] = []
        for prop, (value, unit) in sorted(ev.results.items()):
            lim = select_limit([x for x in spec.limits if x.basis == "lab" and x.property == prop], attrs)
            if lim is None:
                continue
            try:
                v = convert_to(value, unit, lim.unit) if unit != lim.unit else value
            except UnitError as exc:
                self.errors += 1
                log.warning(
                    "lab result unit unusable", extra={"kv": {"lot": ev.lot, "property": prop, "error": str(exc)}}
                )
                continue
            if not math.isfinite(v):
                # NaN compares as inside any limits: never let it pass as an in-spec result.
                self.errors += 1
                log.warning(
                    "lab result not finite; not checked",
                    extra={"kv": {"lot": ev.lot, "property": prop, "value": str(v)}},
                )
                continue
            if (lim.min is not None and v < lim.min) or (lim.max is not None and v > lim.max):
                out.append(
                    Deviation(
                        id=deviation_id("lab", ev.plant, ev.lot, spec.spec_id, prop, ev.ts_us),
                        kind=DeviationKind.LAB,
                        status=DeviationStatus.CLOSED,
                        plant=ev.plant,
                        equipment=ev.equipment,
                        start_us=ev.ts_us,
                        end_us=ev.ts_us,
                        lot=ev.lot,
                        spec=spec.spec_id,
                        property=prop,
                        peak=v,
                        limit=lim.min if lim.min is not None and v < lim.min else lim.max,
                        unit=lim.unit,
                        limit_min=lim.min,
                        limit_max=lim.max,
                        details={"duration_s": 0.0, "condition": lim.condition, "test_method": lim.test_method},
                    )
                )
        return out
