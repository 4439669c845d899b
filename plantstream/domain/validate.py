"""Validation of readings against tag metadata, in canonical units.

Rules (``TagMeta`` -> :class:`TagRule`, compiled once when the metadata is registered):

* datatype: ``float`` accepts int and float (not bool; NaN/inf are BAD); ``int`` accepts int (not
  bool); ``bool`` accepts bool; ``str`` accepts str. A wrong type makes the reading BAD with a
  reason; its value is passed on untouched so nothing is lost.
* engineering range ``lo``/``hi`` (stated in the tag's unit, compared in canonical units): a value
  outside is kept, GOOD becomes UNCERTAIN, the reason names the range.
* rate of change ``roc_limit`` (tag unit per second): |dv/dt| against the previous non-BAD value
  of the tag (same partition) above the limit downgrades GOOD to UNCERTAIN with a reason.

NaN and ±inf are BAD with a reason for every tag, with or without metadata (also when the unit
cannot be normalized, and when a conversion overflows), so they never enter window statistics.

Quality is only ever downgraded, never upgraded. Unknown datatypes or units raise
:class:`RuleError` when the rule is compiled (configuration time), never per reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeGuard

from plantstream.contract import Quality, TagMeta, Value
from plantstream.domain.units import Converter, UnitError, compile_converter

GOOD, UNCERTAIN, BAD = int(Quality.GOOD), int(Quality.UNCERTAIN), int(Quality.BAD)
DATATYPES = ("float", "int", "bool", "str")


class RuleError(ValueError):
    """Tag metadata that cannot be turned into a rule (unknown unit or datatype)."""


@dataclass(frozen=True, slots=True)
class TagRule:
    meta: TagMeta
    converter: Converter
    lo: float | None  # canonical unit
    hi: float | None
    roc: float | None  # canonical unit per second

    @property
    def canonical(self) -> str:
        return str(self.converter.canonical)


def compile_rule(meta: TagMeta) -> TagRule:
    """Compile ``meta``; RuleError (naming plant/tag/field) when its unit or datatype is unusable."""
    if meta.datatype not in DATATYPES:
        raise RuleError(f"tag {meta.plant}/{meta.tag}: datatype {meta.datatype!r} is not one of {', '.join(DATATYPES)}")
    numeric = meta.datatype in ("float", "int")
    try:
        conv = compile_converter(meta.unit) if numeric else Converter(meta.unit, meta.unit)
    except UnitError as exc:
        raise RuleError(f"tag {meta.plant}/{meta.tag}: field 'unit': {exc}") from None
    lo = conv(meta.lo) if numeric and meta.lo is not None else None
    hi = conv(meta.hi) if numeric and meta.hi is not None else None
    if lo is not None and hi is not None and lo > hi:
        raise RuleError(f"tag {meta.plant}/{meta.tag}: lo {meta.lo} is above hi {meta.hi}")
    roc = abs(conv.delta(meta.roc_limit)) if numeric and meta.roc_limit is not None else None
    return TagRule(meta, conv, lo, hi, roc)


def _exact_number(value: Value) -> TypeGuard[float | int]:
    """True for plain float/int values only: bool (an int subclass) is its own datatype."""
    return type(value) is float or type(value) is int


def _join(reason: str | None, more: str) -> str:
    return more if not reason else f"{reason}; {more}"


class Validator:
    """Applies rules reading by reading; keeps the last value per tag for rate-of-change checks."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[int, float]] = {}

    def check(
        self,
        rule: TagRule | None,
        conv: Converter | None,
        plant: str,
        tag: str,
        value: Value,
        ts_us: int,
        quality: int,
        reason: str | None,
    ) -> tuple[Value, int, str | None]:
        """Return (canonical value, quality, reason) for one reading.

        ``conv`` converts the reading's own unit (None: the unit could not be normalized, the
        value passes unconverted and UNCERTAIN). ``rule`` is None for tags without metadata: only
        the unit is normalized then.
        """
        datatype = rule.meta.datatype if rule is not None else None
        tv = type(value)
        if datatype is None:
            if _exact_number(value):
                # Non-finite first: NaN/inf must never reach the windows as good or uncertain.
                if tv is float and not math.isfinite(value):
                    return value, BAD, _join(reason, f"value {value} is not finite")
                if conv is None:
                    return value, max(quality, UNCERTAIN), _join(reason, "unit not normalizable")
                if conv.identity:
                    return value, quality, reason
                v = value * conv.factor + conv.offset
                if not math.isfinite(v):
                    return value, BAD, _join(reason, f"value {value} is not finite in {conv.canonical}")
                return v, quality, reason
            return value, quality, reason
        if datatype == "float" or datatype == "int":
            if not _exact_number(value) or (datatype == "int" and tv is float):
                return value, BAD, _join(reason, f"type {tv.__name__} where {datatype} expected")
            if tv is float and not math.isfinite(value):
                return value, BAD, _join(reason, f"value {value} is not finite")
            if conv is None:
                return value, max(quality, UNCERTAIN), _join(reason, "unit not normalizable")
            assert rule is not None
            if conv.canonical != rule.converter.canonical:
                return value, BAD, _join(reason, f"unit {conv.source!r} does not match the tag's {rule.meta.unit!r}")
            v = value if conv.identity else value * conv.factor + conv.offset
            if not math.isfinite(v):  # a finite value can overflow in conversion (1e308 kPa -> Pa)
                return value, BAD, _join(reason, f"value {value} is not finite in {rule.canonical}")
            lo, hi = rule.lo, rule.hi
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                if quality == GOOD:
                    quality = UNCERTAIN
                reason = _join(reason, f"out of range [{_fmt(lo, '-inf')}, {_fmt(hi, 'inf')}] {rule.canonical}")
            if rule.roc is not None and quality != BAD:
                key = (plant, tag)
                prev = self._last.get(key)
                self._last[key] = (ts_us, v)
                if prev is not None and ts_us > prev[0]:
                    rate = abs(v - prev[1]) / ((ts_us - prev[0]) / 1e6)
                    if rate > rule.roc:
                        if quality == GOOD:
                            quality = UNCERTAIN
                        reason = _join(reason, f"rate of change {rate:.4g}/s above {rule.roc:.4g}/s")
            return v, quality, reason
        if datatype == "bool":
            if tv is not bool:
                return value, BAD, _join(reason, f"type {tv.__name__} where bool expected")
            return value, quality, reason
        if tv is not str:
            return value, BAD, _join(reason, f"type {tv.__name__} where str expected")
        return value, quality, reason

    def forget(self, plant: str, tag: str) -> None:
        self._last.pop((plant, tag), None)


def _fmt(x: float | None, unbounded: str) -> str:
    return unbounded if x is None else f"{x:.6g}"
