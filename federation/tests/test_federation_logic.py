"""The platform's pure logic without services: search filters, quota arithmetic, alert rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from plantstream.access import Tier
from plantstream.domain.catalog import ProductEntry
from plantstream.federation import logic
from plantstream.federation.config import Alerts, Quotas
from plantstream.federation.harvest import retry_delay
from plantstream.federation.logic import DayUsage, FilterError, SearchFilter

SHA = "ab" * 32


def entry(name: str, **kw: Any) -> ProductEntry:
    base: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "title": f"{name} title",
        "description": "one hour of 1 s process data",
        "material_field": "advanced-steel",
        "grade": "general",
        "access": "free",
        "license": "CC-BY-4.0",
        "plant": "steel",
        "spec": "EN10025-2:S355J2",
        "standard_properties": ["casting_speed", "mould_level"],
        "temporal_start": "2026-01-01T00:00:00Z",
        "temporal_end": "2026-01-01T01:00:00Z",
        "rows": 3600,
        "bytes": 1000,
        "snapshot": "0123456789abcdef",
        "published_at": "2026-01-02T00:00:00Z",
        "files": [{"path": "data/part-0.parquet", "bytes": 1000, "sha256": SHA, "media_type": "application/x"}],
    }
    base.update(kw)
    return ProductEntry.model_validate(base)


CATALOG = [
    ("steel", entry("caster-heats")),
    ("steel", entry("caster-heats", version="1.1.0", grade="important", access="member")),
    (
        "steel",
        entry("strip-mill", temporal_start="2026-03-01T00:00:00Z", temporal_end="2026-03-02T00:00:00Z", spec=None),
    ),
    (
        "fiber",
        entry(
            "poy-spinning",
            material_field="fibers-composites",
            plant="fiber",
            spec="PET:POY-288-288",
            standard_properties=["quench_air_temperature"],
            access="paid",
            description="PET melt spinning, quench air",
        ),
    ),
]


def names(f: SearchFilter) -> list[str]:
    return [f"{n}/{e.name}@{e.version}" for n, e in logic.search(CATALOG, f)]


def test_search_filters_each_field() -> None:
    everything = names(SearchFilter())
    # by node and name, newest version first
    assert everything == [
        "fiber/poy-spinning@1.0.0",
        "steel/caster-heats@1.1.0",
        "steel/caster-heats@1.0.0",
        "steel/strip-mill@1.0.0",
    ]
    p = SearchFilter.parse
    assert names(p({"material_field": "fibers-composites"})) == ["fiber/poy-spinning@1.0.0"]
    assert names(p({"spec": "en10025-2:s355j2"})) == ["steel/caster-heats@1.1.0", "steel/caster-heats@1.0.0"]
    assert names(p({"grade": "important"})) == ["steel/caster-heats@1.1.0"]
    assert names(p({"property": "quench_air_temperature"})) == ["fiber/poy-spinning@1.0.0"]
    assert names(p({"access": "paid"})) == ["fiber/poy-spinning@1.0.0"]
    assert names(p({"q": "MELT spinning"})) == ["fiber/poy-spinning@1.0.0"]
    assert names(p({"node": "steel", "grade": "general"})) == ["steel/caster-heats@1.0.0", "steel/strip-mill@1.0.0"]


def test_search_time_range_overlap() -> None:
    p = SearchFilter.parse
    # A range touching only March finds the strip-mill product only.
    assert names(p({"start": "2026-02-15T00:00:00Z", "end": "2026-03-01T12:00:00"})) == ["steel/strip-mill@1.0.0"]
    # Overlap, not containment: a range starting inside January's hour finds the January products.
    jan = names(p({"start": "2026-01-01T00:30:00Z", "end": "2026-01-01T00:31:00Z"}))
    assert "steel/strip-mill@1.0.0" not in jan and len(jan) == 3
    # Open ends.
    assert names(p({"start": "2026-02-01"})) == ["steel/strip-mill@1.0.0"]
    assert "steel/strip-mill@1.0.0" not in names(p({"end": "2026-02-01"}))


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"grade": "secret"}, "grade"),
        ({"material_field": "wood"}, "material_field"),
        ({"access": "cheap"}, "access"),
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-02-01", "end": "2026-01-01"}, "end"),
        ({"colour": "red"}, "colour"),
        ({"q": "x" * 201}, "q"),
        ({"spec": "a\x00b"}, "spec"),
    ],
)
def test_bad_search_parameters_name_the_parameter(params: dict[str, str], param: str) -> None:
    with pytest.raises(FilterError) as exc:
        SearchFilter.parse(params)
    assert exc.value.param == param and repr(param) in str(exc.value)


Q = Quotas(products_per_day=2, cells_per_day=10_000, bytes_per_day=1_000_000, concurrent_pulls=1)


def test_quota_arithmetic() -> None:
    empty = DayUsage()
    assert logic.check_quota(Q, empty, "steel/a@1.0.0", 5000, 400_000, 0) is None
    used = DayUsage(frozenset({"steel/a@1.0.0"}), cells=5000, bytes=400_000)
    # The same product again: products and cells count once; bytes add.
    assert logic.check_quota(Q, used, "steel/a@1.0.0", 5000, 600_000, 0) is None
    over = logic.check_quota(Q, used, "steel/a@1.0.0", 5000, 600_001, 0)
    assert over is not None and over.limit == "bytes_per_day" and str(over).startswith("bytes_per_day 1000000 exceeded")
    # A second product fits products_per_day=2 but its cells do not.
    over = logic.check_quota(Q, used, "steel/b@1.0.0", 5001, 1, 0)
    assert over is not None and over.limit == "cells_per_day" and "cells_per_day 10000 exceeded" in str(over)
    assert logic.check_quota(Q, used, "steel/b@1.0.0", 5000, 1, 0) is None
    two = DayUsage(frozenset({"steel/a@1.0.0", "steel/b@1.0.0"}), cells=6000, bytes=2)
    over = logic.check_quota(Q, two, "fiber/c@1.0.0", 1, 1, 0)
    assert over is not None and over.limit == "products_per_day" and "products_per_day 2 exceeded" in str(over)
    over = logic.check_quota(Q, empty, "steel/a@1.0.0", 1, 1, inflight=1)
    assert over is not None and over.limit == "concurrent_pulls" and str(over) == "concurrent_pulls 1 exceeded"


def test_retry_after_until_utc_midnight_and_harvest_backoff() -> None:
    assert logic.seconds_to_midnight(datetime(2026, 1, 1, 23, 59, 30, tzinfo=UTC)) == 30
    assert logic.seconds_to_midnight(datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)) == 86400
    assert [retry_delay(n, 300) for n in range(0, 8)] == [300, 5, 10, 20, 40, 80, 160, 300]
    assert retry_delay(10_000, 60) == 60


A = Alerts(volume_factor=10, volume_min_bytes=1000, denied_count=5, denied_window_s=600)


def test_volume_alert_rule() -> None:
    # Far above the member's own median day, and above the minimum.
    a = logic.volume_alert("mia", 10_001, [900, 1000, 1100], A)
    assert a is not None and a.rule == "volume" and a.values["median_bytes"] == 1000
    assert a.values["threshold_bytes"] == 10_000 and "mia" in a.detail
    assert logic.volume_alert("mia", 10_000, [900, 1000, 1100], A) is None  # exactly 10x: not above
    # A small member's spike stays under the minimum: no alert.
    assert logic.volume_alert("pat", 900, [1, 2, 3], A) is None
    # No history: the minimum is the threshold.
    assert logic.volume_alert("new", 999, [], A) is None
    assert logic.volume_alert("new", 1001, [], A) is not None


def test_denied_alert_rule() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    four = [now - timedelta(seconds=s) for s in (1, 100, 200, 599)]
    assert logic.denied_alert("sam", four, now, A) is None
    a = logic.denied_alert("sam", [*four, now], now, A)
    assert a is not None and a.rule == "denied" and a.values["denied"] == 5
    # Old refusals fall out of the window.
    assert logic.denied_alert("sam", [*four, now - timedelta(seconds=601)], now, A) is None


def test_grades_fail_closed() -> None:
    assert logic.tier_may_read(Tier.MEMBER, "important") and logic.tier_may_read(Tier.PUBLIC, "general")
    assert not logic.tier_may_read(Tier.PUBLIC, "important")
    assert not logic.tier_may_read(Tier.MEMBER, "core")
    assert not logic.tier_may_read(Tier.MEMBER, "unheard-of")  # unknown = core
    assert not logic.tier_may_read(Tier.OWNER, "general")  # no platform member is the owner


def test_product_cells_default_to_rows() -> None:
    assert logic.product_cells(entry("x", rows=77)) == 77
