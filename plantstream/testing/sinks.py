"""Test and benchmark data builders for the sink (readings, records, table checksums)."""

from __future__ import annotations

from typing import Any

import psycopg

from plantstream.contract import Deviation, Origin, Quality, Reading, now_us
from plantstream.producers import codec
from plantstream.sinks.base import Record, RecordOrigin

EQ = "acme/works/melt/lf/lf1"


def readings(
    n: int,
    tags: int = 5,
    t0: int | None = None,
    step_us: int = 1000,
    plant: str = "steel",
    equipment: str = EQ,
    lot: str | None = None,
) -> list[Reading]:
    t0 = now_us() - n * step_us if t0 is None else t0
    return [
        Reading(
            plant,
            equipment,
            f"tag{i % tags}",
            t0 + i * step_us,
            float(i) * 0.5,
            "degC",
            Quality.GOOD,
            Origin.OPCUA,
            "src",
            i,
            lot=lot,
        )
        for i in range(n)
    ]


def messages(rs: list[Reading], per: int = 500) -> list[bytes]:
    """Encode in batches of ``per`` readings, one batch per plant/equipment/source (order kept)."""
    groups: dict[tuple[str, str, str], list[Reading]] = {}
    for r in rs:
        groups.setdefault((r.plant, r.equipment, r.source), []).append(r)
    return [codec.encode_readings(g[i : i + per]) for g in groups.values() for i in range(0, len(g), per)]


def records(kind: str, payloads: list[Any], raw: list[bytes] | None = None, topic: str = "t") -> list[Record]:
    """Sink records as the decoder would hand them over; deviation maps become the contract's Deviation."""
    if kind == "deviations":
        payloads = [Deviation.from_map(p) if isinstance(p, dict) else p for p in payloads]
    return [Record(RecordOrigin(topic, 0, i), kind, p, raw[i] if raw else b"", None) for i, p in enumerate(payloads)]


def reading_records(rs: list[Reading], per: int = 500) -> list[Record]:
    raw = messages(rs, per)
    return records("readings", [codec.decode_readings(m) for m in raw], raw)


TABLES = (
    "equipment",
    "tags",
    "readings",
    "aggregates_1s",
    "aggregates_1m",
    "lots",
    "lot_genealogy",
    "process_segments",
    "lot_test_results",
    "deviations",
    "material_specs",
    "spec_property_limits",
)


def checksums(dsn: str) -> dict[str, tuple[int, str]]:
    """(row count, md5 of all rows in key order) per table."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(dsn) as conn:
        for t in TABLES:
            row = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"
            ).fetchone()
            assert row is not None
            out[t] = (int(row[0]), str(row[1]))
    return out


def timescale_db(dsn: str) -> str:
    """``dsn`` migrated with the TimescaleDB flavor; skips the calling test (with the reason) where
    the extension is missing or not preloaded, since the plain path is tested instead."""
    import pytest

    from plantstream.sinks.timescaledb.migrate import available_flavor, migrate
    from plantstream.testing.plugin import timescaledb_required

    # In the TimescaleDB CI run (PLANTSTREAM_REQUIRE_TIMESCALEDB=1) a missing extension fails the test.
    missing = pytest.fail if timescaledb_required() else pytest.skip
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is None:
            missing("TimescaleDB is not installed on this PostgreSQL server (plain path tested instead)")
        if available_flavor(conn) != "timescale":
            missing("TimescaleDB is installed but not in shared_preload_libraries (plain path tested instead)")
    migrate(dsn, flavor="timescale")
    return dsn
