"""The platform's pure logic: search filters over harvested entries, quota arithmetic and the alert
rules. No I/O here, so every rule is tested without services."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from plantstream.access import READABLE, Tier
from plantstream.contract import Grade
from plantstream.domain.catalog import Access, MaterialField, ProductEntry, SemVer

from .config import Alerts, Quotas

MAX_TEXT = 200  # characters of one search parameter


class FilterError(ValueError):
    """A search parameter that cannot be used; ``param`` names it (the HTTP answer is a 400)."""

    def __init__(self, param: str, why: str) -> None:
        super().__init__(f"parameter {param!r}: {why}")
        self.param = param


def parse_instant(text: str, param: str) -> datetime:
    """ISO-8601, naive = UTC."""
    if len(text) > 64:
        raise FilterError(param, "is longer than 64 characters")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(param, f"{text!r} is not an ISO-8601 time") from None
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise FilterError(param, f"{text!r} is out of range in UTC") from None


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """What ``GET /api/search`` and ``plantstream platform search`` filter by (all optional, AND)."""

    material_field: MaterialField | None = None
    spec: str | None = None
    grade: Grade | None = None
    standard_property: str | None = None
    start: datetime | None = None  # products whose time range overlaps [start, end]
    end: datetime | None = None
    access: Access | None = None
    text: str | None = None  # in name, title, description, plant, spec (case-insensitive)
    node: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> SearchFilter:
        """From query parameters; FilterError names the one that is wrong (unknown ones too)."""
        known = {"material_field", "spec", "grade", "property", "start", "end", "access", "q", "node"}
        for k, v in params.items():
            if k not in known:
                raise FilterError(k, f"is not a search parameter (known: {', '.join(sorted(known))})")
            if len(v) > MAX_TEXT:
                raise FilterError(k, f"is longer than {MAX_TEXT} characters")
            if "\x00" in v:
                raise FilterError(k, "contains a NUL character")

        def get(k: str) -> str | None:
            v = params.get(k)
            return v.strip() if v and v.strip() else None

        def enum_of(k: str, kind: type[MaterialField] | type[Grade] | type[Access]) -> str | None:
            v = get(k)
            if v is None:
                return None
            allowed = [e.value for e in kind]
            if v not in allowed:
                raise FilterError(k, f"{v!r} is not one of {', '.join(allowed)}")
            return v

        mf, gr, ac = enum_of("material_field", MaterialField), enum_of("grade", Grade), enum_of("access", Access)
        start = parse_instant(s, "start") if (s := get("start")) else None
        end = parse_instant(e, "end") if (e := get("end")) else None
        if start and end and end < start:
            raise FilterError("end", "is before 'start'")
        return cls(
            material_field=MaterialField(mf) if mf else None,
            spec=get("spec"),
            grade=Grade(gr) if gr else None,
            standard_property=get("property"),
            start=start,
            end=end,
            access=Access(ac) if ac else None,
            text=get("q"),
            node=get("node"),
        )


def _range(entry: ProductEntry) -> tuple[datetime, datetime] | None:
    try:
        return parse_instant(entry.temporal_start, "temporal_start"), parse_instant(entry.temporal_end, "temporal_end")
    except FilterError:
        return None


def matches(node: str, entry: ProductEntry, f: SearchFilter) -> bool:
    if f.node is not None and node != f.node:
        return False
    if f.material_field is not None and entry.material_field != f.material_field:
        return False
    if f.spec is not None and (entry.spec or "").lower() != f.spec.lower():
        return False
    if f.grade is not None and entry.grade != f.grade:
        return False
    if f.access is not None and entry.access != f.access:
        return False
    if f.standard_property is not None and f.standard_property not in entry.standard_properties:
        return False
    if f.start is not None or f.end is not None:
        rng = _range(entry)
        if rng is None:
            return False  # an entry whose range cannot be read does not match a range filter
        lo, hi = rng
        if f.start is not None and hi < f.start:
            return False
        if f.end is not None and lo > f.end:
            return False
    if f.text is not None:
        needle = f.text.lower()
        hay = " ".join([entry.name, entry.title, entry.description, entry.plant, entry.spec or ""]).lower()
        if needle not in hay:
            return False
    return True


def search(entries: Iterable[tuple[str, ProductEntry]], f: SearchFilter) -> list[tuple[str, ProductEntry]]:
    """Matching ``(node, entry)`` pairs, by node and name, newest version first."""
    hits = [(n, e) for n, e in entries if matches(n, e, f)]
    hits.sort(key=lambda ne: SemVer.parse(ne[1].version), reverse=True)
    hits.sort(key=lambda ne: (ne[0], ne[1].name))  # stable: versions stay newest first
    return hits


# --- grades ------------------------------------------------------------------------------------


def tier_may_read(tier: Tier, grade: str) -> bool:
    """Fail closed: an unknown grade counts as core, which no platform tier reads."""
    try:
        g = Grade(grade)
    except ValueError:
        g = Grade.CORE
    return tier is not Tier.OWNER and g in READABLE[tier]


def product_cells(entry: ProductEntry) -> int:
    """Cells a product counts for: rows x columns when the node says (``cells``), else its rows."""
    cells = getattr(entry, "cells", None)
    return int(cells) if isinstance(cells, int) else entry.rows


# --- quotas ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One member's usage of one UTC day, over all products (free and paid together)."""

    products: frozenset[str] = field(default_factory=frozenset)  # "<node>/<name>@<version>" downloaded from
    cells: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class QuotaExceeded:
    limit: str  # the quota key, e.g. bytes_per_day
    value: int  # the configured limit
    detail: str

    def __str__(self) -> str:
        return self.detail


def check_quota(
    q: Quotas, used: DayUsage, product: str, cells: int, file_bytes: int, inflight: int
) -> QuotaExceeded | None:
    """Would this download exceed a quota? Checked before the node is asked. A product already
    pulled from today counts once for products and cells; bytes count every file."""
    if inflight >= q.concurrent_pulls:
        return QuotaExceeded("concurrent_pulls", q.concurrent_pulls, f"concurrent_pulls {q.concurrent_pulls} exceeded")
    new = product not in used.products
    if new and len(used.products) + 1 > q.products_per_day:
        return QuotaExceeded(
            "products_per_day",
            q.products_per_day,
            f"products_per_day {q.products_per_day} exceeded ({len(used.products)} products today)",
        )
    if new and used.cells + cells > q.cells_per_day:
        return QuotaExceeded(
            "cells_per_day",
            q.cells_per_day,
            f"cells_per_day {q.cells_per_day} exceeded ({used.cells} used today, this product has {cells})",
        )
    if used.bytes + file_bytes > q.bytes_per_day:
        return QuotaExceeded(
            "bytes_per_day",
            q.bytes_per_day,
            f"bytes_per_day {q.bytes_per_day} exceeded ({used.bytes} used today, this file has {file_bytes})",
        )
    return None


def seconds_to_midnight(now: datetime) -> int:
    """Retry-After for a daily quota: until the UTC day turns."""
    nxt = (now.astimezone(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((nxt - now).total_seconds()))


# --- alert rules -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str  # volume | denied
    member: str
    detail: str
    values: dict[str, float]


def volume_alert(member: str, today_bytes: int, earlier_days: Sequence[int], a: Alerts) -> Alert | None:
    """Today's volume far above the member's own history: above ``volume_factor`` x the median of
    its earlier days (days without use count as 0 when the caller passes them) and above
    ``volume_min_bytes``, so a member going from 1 kB to 20 kB raises nothing."""
    median = float(statistics.median(earlier_days)) if earlier_days else 0.0
    threshold = max(float(a.volume_min_bytes), a.volume_factor * median)
    if today_bytes <= threshold:
        return None
    return Alert(
        "volume",
        member,
        f"member {member} moved {today_bytes} bytes today, above {threshold:.0f} "
        f"({a.volume_factor:g} x median {median:.0f} of {len(earlier_days)} earlier days, minimum {a.volume_min_bytes})",
        {"today_bytes": float(today_bytes), "median_bytes": median, "threshold_bytes": threshold},
    )


def denied_alert(member: str, denied_at: Sequence[datetime], now: datetime, a: Alerts) -> Alert | None:
    """``denied_count`` refused requests within ``denied_window_s`` up to ``now``."""
    since = now - timedelta(seconds=a.denied_window_s)
    n = sum(1 for t in denied_at if since <= t <= now)
    if n < a.denied_count:
        return None
    return Alert(
        "denied",
        member,
        f"member {member} was refused {n} times in the last {a.denied_window_s:g} s (threshold {a.denied_count})",
        {"denied": float(n), "window_s": a.denied_window_s},
    )
