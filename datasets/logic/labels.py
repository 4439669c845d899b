"""Spec limits and in-spec labels for lots (pure).

A spec may hold several limits for one property, stepped by a condition such as
``thickness_mm<=16`` (EN 10025 yield steps). The database does not record lot attributes like
thickness, so the strictest step (smallest bound) governs; an unconditional limit or a test
condition (``test_temperature=-20degC``) always applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    property: str
    unit: str
    min: float | None
    max: float | None
    condition: str = ""


def governing_limits(limits: Iterable[Limit]) -> dict[str, Limit]:
    """Property -> the limit that governs it when lot attributes are unknown (see module doc)."""
    chosen: dict[str, tuple[float, Limit]] = {}
    for lim in limits:
        rank = float("inf")
        if "<=" in lim.condition:
            try:
                rank = float(lim.condition.partition("<=")[2])
            except ValueError:
                rank = float("inf")
        cur = chosen.get(lim.property)
        if cur is None or rank < cur[0]:
            chosen[lim.property] = (rank, lim)
    return {p: lim for p, (_, lim) in sorted(chosen.items())}


def in_spec(value: float | None, lim: Limit | None) -> bool | None:
    """True/False when both a measurement and a limit exist, else None (unknown, not 'in spec')."""
    if value is None or lim is None:
        return None
    if lim.min is not None and value < lim.min:
        return False
    return not (lim.max is not None and value > lim.max)
