"""Durations as people write them: ``500ms``, ``1s``, ``1.5min``, ``2h``, ``1d`` -> integer microseconds."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)\s*$")


def parse_duration_us(text: str) -> int:
    """``'1.5min'`` -> 90_000_000. ValueError (with the accepted forms) for anything else,
    for zero, and for fractions of a microsecond."""
    m = _RE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 500ms, 1s, 5min, 2h, 1d")
    try:
        us = Decimal(m.group(1)) * _UNITS_US[m.group(2)]
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a duration") from None
    if us != us.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of microseconds")
    if us <= 0:
        raise ValueError(f"{text!r} must be positive")
    return int(us)


def format_duration_us(us: int) -> str:
    """The shortest exact form: 90_000_000 -> '90s', 3_600_000_000 -> '1h'."""
    for unit in ("d", "h", "min", "s", "ms"):
        if us % _UNITS_US[unit] == 0:
            return f"{us // _UNITS_US[unit]}{unit}"
    return f"{us}us"
