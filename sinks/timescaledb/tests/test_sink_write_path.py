"""The sink core against the real database, without Kafka."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from plantstream.contract import (
    Aggregate,
    ContextEvent,
    ContextKind,
    Grade,
    Origin,
    Quality,
    Reading,
    TagMeta,
    Value,
    now_us,
)
from plantstream.producers import codec
from plantstream.sinks.base import DeadLetter, RecordOrigin, decode
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.testing.sinks import EQ, checksums, reading_records, readings, records

pytestmark = pytest.mark.integration


@pytest.fixture
def sink(fresh_db: str) -> Any:
    migrate(fresh_db)
    s = PostgresSink(fresh_db)
    s.connect()
    yield s
    s.close()


def _us(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))


def _one(dsn: str, q: str, *args: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(q, args).fetchone()
        assert row is not None
        return row[0] if len(row) == 1 else row


def test_values_kept_exact(sink: PostgresSink, fresh_db: str) -> None:
    t0 = now_us() + 123  # odd microseconds must survive
    big = 2**62 + 1  # not representable as float64
    rs = [
        Reading(
            "steel",
            EQ,
            "temp",
            t0,
            1545.123456789012,
            "degC",
            Quality.GOOD,
            Origin.OPCUA,
            "s",
            1,
            status_code=0,
            server_ts_us=t0 + 7,
            lot="H1",
        ),
        Reading("steel", EQ, "count", t0, big, "1", Quality.UNCERTAIN, Origin.OPCUA, "s", 2, status_code=0x40920000),
        Reading("steel", EQ, "running", t0, True, "", Quality.GOOD, Origin.OPCUA, "s", 3, server_ts_us=t0),
        Reading("steel", EQ, "mode", t0, "AUTO", "", Quality.BAD, Origin.OPCUA, "s", 4, status_code=0x80000000),
    ]
    sink.write(reading_records(rs))
    assert sink.flush() == []
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute(
            "SELECT t.tag, t.datatype, r.time, r.v_float, r.v_int, r.v_bool, r.v_text, r.quality, r.status_code, "
            "r.server_time, l.lot, r.seq FROM readings r JOIN tags t ON t.id = r.tag_id "
            "LEFT JOIN lots l ON l.id = r.lot_id ORDER BY r.seq"
        ).fetchall()
    assert [r[0] for r in rows] == ["temp", "count", "running", "mode"]
    assert all(_us(r[2]) == t0 for r in rows)
    assert rows[0][3] == 1545.123456789012 and rows[0][1] == "float" and rows[0][10] == "H1"
    assert _us(rows[0][9]) == t0 + 7
    assert rows[1][4] == big and rows[1][1] == "int" and rows[1][8] == 0x40920000 and rows[1][7] == 1
    assert rows[2][5] is True and rows[2][9] is None  # server time equal to source time is not stored
    assert rows[3][6] == "AUTO" and rows[3][7] == 2 and rows[3][8] == 0x80000000
    path = _one(fresh_db, "SELECT string_agg(level || ':' || path, ',' ORDER BY path) FROM equipment")
    assert path == (
        "enterprise:acme,site:acme/works,area:acme/works/melt,line:acme/works/melt/lf,unit:acme/works/melt/lf/lf1"
    )


def test_replay_leaves_tables_unchanged(sink: PostgresSink, fresh_db: str) -> None:
    rs = readings(5000, tags=7, lot="H7")
    t0 = rs[0].ts_us
    aggs = [
        Aggregate(
            "steel",
            EQ,
            "tag1",
            w,
            t0 - t0 % 1_000_000 + k * 1_000_000,
            10,
            1,
            0.0,
            2.0,
            1.0,
            1.5,
            0.3,
            1.1,
            "degC",
            "H7",
        )
        for k in range(20)
        for w in ("1s", "1m")
    ]
    ctx = [
        ContextEvent(ContextKind.LOT_START, "steel", EQ, t0, "H7", "heat", "EN10025-2:S355J2"),
        ContextEvent(ContextKind.LAB_RESULT, "steel", EQ, t0 + 5, "H7", results={"C": (0.17, "percent")}),
        ContextEvent(ContextKind.LOT_END, "steel", EQ, t0 + 10_000_000, "H7"),
        ContextEvent(
            ContextKind.GENEALOGY,
            "steel",
            "acme/works/cast/cc1",
            t0 + 11_000_000,
            "S7-1",
            "slab",
            parents=("H7",),
            relation="transform",
        ),
    ]
    devs = [
        {
            "id": "d1",
            "kind": "process",
            "plant": "steel",
            "equipment": EQ,
            "tag": "tag1",
            "lot": "H7",
            "property": "casting_speed",
            "start_us": t0,
            "end_us": t0 + 1000,
            "peak": 2.3,
            "limit": 2.0,
            "status": "closed",
            "note": "x",
        }
    ]
    batch = reading_records(rs) + records("aggregates", [aggs]) + records("context", ctx) + records("deviations", devs)
    sink.write(batch)
    assert sink.flush() == []
    first = checksums(fresh_db)
    assert first["readings"][0] == 5000 and first["aggregates_1s"][0] == 20 and first["deviations"][0] == 1
    assert first["process_segments"][0] == 1 and first["lot_genealogy"][0] == 1
    sink.write(batch)
    assert sink.flush() == []
    assert checksums(fresh_db) == first
    # Also through a fresh sink (empty caches), as after a restart.
    other = PostgresSink(fresh_db)
    other.connect()
    other.write(batch)
    assert other.flush() == []
    other.close()
    assert checksums(fresh_db) == first
    seg = _one(fresh_db, "SELECT end_time - start_time FROM process_segments")
    assert seg.total_seconds() == 10


def test_aggregates_reemission_overwrites(sink: PostgresSink, fresh_db: str) -> None:
    start = now_us() // 60_000_000 * 60_000_000

    def agg(mean: float) -> Aggregate:
        return Aggregate("steel", EQ, "t", "1m", start, 60, 0, 0.0, 9.0, mean, 5.0, 1.0, mean, "bar", None)

    sink.write(records("aggregates", [[agg(1.0)]]))
    sink.flush()
    xmin = _one(fresh_db, "SELECT xmin::text FROM aggregates_1m")
    sink.write(records("aggregates", [[agg(1.0)]]))  # identical: row not rewritten
    sink.flush()
    assert _one(fresh_db, "SELECT xmin::text FROM aggregates_1m") == xmin
    sink.write(records("aggregates", [[agg(2.0), agg(3.0)]]))  # duplicate key in one batch: the last wins
    sink.flush()
    assert _one(fresh_db, "SELECT count(*), max(mean) FROM aggregates_1m") == (1, 3.0)


def test_tag_meta_describes_tag(sink: PostgresSink, fresh_db: str) -> None:
    sink.write(reading_records(readings(3, tags=1)))
    sink.flush()
    assert _one(fresh_db, "SELECT registered_by FROM tags WHERE tag = 'tag0'") == "reading"
    meta = TagMeta(
        "steel",
        "tag0",
        EQ,
        "degC",
        "float",
        0.0,
        1700.0,
        grade=Grade.CORE,
        description="bath temp",
        source_address="ns=2;s=lf1.temp",
        spec_property="tapping_temperature",
    )
    sink.write(records("tags", [meta]))
    sink.flush()
    row = _one(fresh_db, "SELECT registered_by, grade, hi, source_address, spec_property FROM tags WHERE tag = 'tag0'")
    assert row == ("meta", "core", 1700.0, "ns=2;s=lf1.temp", "tapping_temperature")
    assert _one(fresh_db, "SELECT count(*) FROM tags") == 1


def test_rejected_records_dead_lettered_rest_written(sink: PostgresSink, fresh_db: str) -> None:
    rs = readings(1000, tags=4)
    bad_rows: dict[int, Value] = {137: "nul\x00byte", 612: 2**63 + 5}  # text PostgreSQL refuses; uint64 beyond bigint
    rs = [dataclasses.replace(r, value=bad_rows.get(i, r.value)) for i, r in enumerate(rs)]
    recs = reading_records(rs, per=250)
    garbage = decode("readings", b"PS\x01\x01not msgpack", RecordOrigin("t", 0, 99))
    bad_agg = Aggregate("steel", EQ, "x", "5m", now_us(), 1, 0, 1, 1, 1, 1, 0, 1, "", None)
    bad_dev = {"id": "d2", "kind": "weird", "plant": "steel", "start_us": now_us()}
    sink.write([*recs, garbage, *records("aggregates", [[bad_agg]]), *records("deviations", [bad_dev])])
    dead = sink.flush()
    assert isinstance(garbage, DeadLetter)
    assert len(dead) == 5
    reasons = " | ".join(d.reason for d in dead)
    assert "undecodable" in reasons and "5m" in reasons and "deviations_kind_check" in reasons
    assert "0x00" in reasons or "null character" in reasons.lower() or "nul" in reasons.lower()
    # Readings dead letters hold exactly the rejected row, re-encoded, with its origin.
    rejected = [
        codec.decode_readings(d.value)
        for d in dead
        if d.origin and d.value.startswith(b"PS\x01\x01") and d.reason.startswith("rejected")
    ]
    assert sorted(b.seq[0] for b in rejected) == sorted(rs[i].seq for i in bad_rows)
    assert all(len(b) == 1 for b in rejected)
    assert _one(fresh_db, "SELECT count(*) FROM readings") == 998
    assert _one(fresh_db, "SELECT count(*) FROM deviations") == 0


def test_out_of_window_rows_land_in_default_partition(fresh_db: str) -> None:
    # Native partitioning path, also on a TimescaleDB server (TimescaleDB creates chunks for any time).
    migrate(fresh_db, flavor="plain")
    sink = PostgresSink(fresh_db)
    sink.connect()
    old = readings(10, t0=now_us() - 400 * 86_400_000_000)  # beyond the 90-day retention
    new = readings(10, tags=2)
    try:
        sink.write(reading_records(old + new))
        assert sink.flush() == []
    finally:
        sink.close()
    with psycopg.connect(fresh_db) as conn:
        parts: dict[str, int] = dict(
            conn.execute("SELECT tableoid::regclass::text, count(*) FROM readings GROUP BY 1").fetchall()
        )
    assert parts.pop("readings_default") == 10
    assert list(parts.values()) == [10] and next(iter(parts)).startswith("readings_p")


def test_tag_registry_keeps_the_canonical_unit_and_range(sink: PostgresSink, fresh_db: str) -> None:
    """Readings arrive normalized by streams; the registry must label them with that unit."""
    from plantstream.sinks.timescaledb.ids import canonical_meta

    legacy = TagMeta("chemical", "condenser.cw_outlet_temperature", "acme/antwerp/pta/train1/condenser", "degF",
                     lo=32.0, hi=212.0, roc_limit=9.0)  # fmt: skip
    odd = TagMeta("chemical", "x.odd", "acme/antwerp/pta/train1/x", "furlongs per nothing")
    assert canonical_meta(odd) == odd  # streams cannot normalize it either: kept as the source says
    sink.write(records("tags", [legacy, odd]))
    sink.flush()
    with psycopg.connect(fresh_db) as conn:
        rows = dict(
            (tag, (unit, lo, hi, roc))
            for tag, unit, lo, hi, roc in conn.execute("SELECT tag, unit, lo, hi, roc_limit FROM tags").fetchall()
        )
    unit, lo, hi, roc = rows["condenser.cw_outlet_temperature"]
    assert unit == "degC"
    assert abs(lo - 0.0) < 1e-9 and abs(hi - 100.0) < 1e-9 and abs(roc - 5.0) < 1e-9
    assert rows["x.odd"][0] == "furlongs per nothing"


def test_an_isolated_duplicate_costs_one_flush_on_the_staging_path(sink: PostgresSink, fresh_db: str) -> None:
    """Direct COPY fails as a whole on a key already present; the sink then takes the staging path
    (INSERT ... ON CONFLICT) and probes direct COPY again after 1 flush, doubling the wait only
    while conflicts repeat (a replay), so one late re-send does not slow the next twenty flushes."""
    t0 = now_us() - 3_600_000_000
    chunks = [readings(50, tags=5, t0=t0 + k * 1_000_000) for k in range(12)]
    sink.write(reading_records(chunks[0]))
    assert sink.flush() == [] and sink.direct_conflicts == 0
    # One late duplicate inside new rows: this flush falls back, the next one is direct again.
    sink.write(reading_records([chunks[0][7], *chunks[1]]))
    assert sink.flush() == [] and sink.direct_conflicts == 1
    sink.write(reading_records(chunks[2]))  # on the staging path (the one flush after a conflict)
    assert sink.flush() == [] and sink.direct_conflicts == 1
    sink.write(reading_records(chunks[3]))  # direct again, succeeds: backoff back to 1
    assert sink.flush() == [] and sink.direct_conflicts == 1
    # A replay: every probe conflicts, and the probes spread out (after 1, then 2, then 4 flushes).
    conflicts_at = []
    for k in range(4, 12):
        sink.write(reading_records([chunks[k - 4][0], *chunks[k]]))
        before = sink.direct_conflicts
        assert sink.flush() == []
        if sink.direct_conflicts > before:
            conflicts_at.append(k)
    assert conflicts_at == [4, 6, 9]
    total = sum(len(c) for c in chunks)
    assert _one(fresh_db, "SELECT count(*) FROM readings") == total


def test_the_standard_property_is_stored_and_reaches_the_dataset_view(sink: PostgresSink, fresh_db: str) -> None:
    """Issue 18: the tag-meta message's std_property lands in tags.std_property (migration 0013),
    follows a change, and ds_tags (what pulls read, under a tier role) carries it."""
    melt = TagMeta("fiber", "poy1.melt_temperature", "acme/nantong/spinning/poy1/extruder", "degC", grade=Grade.GENERAL,
                   spec_property="melt_temperature", std_property="ps:temperature.melt")  # fmt: skip
    bare = TagMeta("fiber", "poy1.note", "acme/nantong/spinning/poy1", "", "str", grade=Grade.GENERAL)
    legacy = TagMeta("steel", "caster1.cooling_water_pressure", EQ, "psi", grade=Grade.GENERAL,
                     std_property="ps:pressure.gauge")  # fmt: skip
    sink.write(records("tags", [melt, bare, legacy]))
    sink.flush()
    with psycopg.connect(fresh_db) as conn:
        rows: dict[str, tuple[str, str]] = dict(conn.execute("SELECT tag, (std_property, unit) FROM tags").fetchall())
    assert rows["poy1.melt_temperature"] == ("ps:temperature.melt", "degC")
    assert rows["poy1.note"] == ("", "")  # no property: the column default, never NULL
    # Stored in the canonical unit, which is the property's unit.
    assert rows["caster1.cooling_water_pressure"] == ("ps:pressure.gauge", "kPa")
    sink.write(records("tags", [dataclasses.replace(melt, std_property="ps:temperature")]))
    sink.flush()
    assert _one(fresh_db, "SELECT std_property FROM tags WHERE tag = 'poy1.melt_temperature'") == "ps:temperature"
    with psycopg.connect(fresh_db) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE plantstream_public")
        seen: dict[str, str] = dict(conn.execute("SELECT tag, std_property FROM ds_tags").fetchall())
    assert seen == {"poy1.melt_temperature": "ps:temperature", "poy1.note": "", "caster1.cooling_water_pressure":
                    "ps:pressure.gauge"}  # fmt: skip


def test_two_plants_tags_line_up_by_standard_property_in_the_database(sink: PostgresSink, fresh_db: str) -> None:
    """The simulated steel and fiber plants' edge configs, through the real sink: one query by
    property finds both plants' tags, under different names, in the same unit."""
    from plantstream.sim.edgeconfig import config_for_sim

    metas = [
        m
        for plant, port in (("steel", 4841), ("fiber", 4843))
        for m in config_for_sim(plant, f"opc.tcp://127.0.0.1:{port}/x", "mqtt://127.0.0.1:11883").tag_metas()
    ]
    sink.write(records("tags", metas))
    sink.flush()
    with psycopg.connect(fresh_db) as conn:
        melt = conn.execute(
            "SELECT plant, tag, unit FROM tags WHERE std_property = 'ps:temperature.melt' ORDER BY plant, tag"
        ).fetchall()
        speed = conn.execute(
            "SELECT plant, tag, unit FROM tags WHERE std_property = 'ps:linear-speed.material' ORDER BY plant, tag"
        ).fetchall()
        temps = conn.execute(
            "SELECT DISTINCT plant, unit FROM tags WHERE std_property = 'ps:temperature' OR std_property LIKE 'ps:temperature.%' ORDER BY plant"
        ).fetchall()
    assert melt == [
        ("fiber", "poy1.melt_temperature", "degC"),
        ("steel", "caster1.tundish_temperature", "degC"),
        ("steel", "lf1.bath_temperature", "degC"),
    ]
    # hsm1.strip_speed is sent in m/s; the registry keeps the canonical unit, the property's.
    assert {u for _, _, u in speed} == {"m/min"} and {p for p, _, _ in speed} == {"steel", "fiber"}
    assert ("steel", "hsm1.strip_speed", "m/min") in speed and ("fiber", "poy1.winding_speed", "m/min") in speed
    assert temps == [("fiber", "degC"), ("steel", "degC")]
