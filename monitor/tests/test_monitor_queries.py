from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from plantstream.contract import ContextEvent, ContextKind, Origin, Quality, Reading
from plantstream.monitor import queries as Q
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.testing.sinks import reading_records, records

pytestmark = pytest.mark.integration

LF = "acme/works/melt/lf/lf1"
CC = "acme/works/cast/cc1/strand1"
SEC = 1_000_000


@pytest.fixture
def loaded(fresh_db: str) -> Any:
    """20 tags x 3000 readings at 1 Hz on two units, plus lots; ANALYZEd like a real database."""
    migrate(fresh_db)
    t0 = (int(datetime.now(tz=UTC).timestamp()) - 4000) * SEC
    rs = [
        Reading(
            "steel",
            LF if k < 10 else CC,
            f"t{k}",
            t0 + i * SEC,
            float(i % 100) + k,
            "degC",
            Quality.BAD if i % 50 == 0 else Quality.GOOD,
            Origin.OPCUA,
            "s",
            i * 20 + k,
        )
        for i in range(3000)
        for k in range(20)
    ]
    ctx = [
        ContextEvent(ContextKind.LOT_START, "steel", LF, t0, "H1", "heat", "EN10025-2:S355J2"),
        ContextEvent(ContextKind.LOT_END, "steel", LF, t0 + 1000 * SEC, "H1"),
        ContextEvent(ContextKind.LOT_START, "steel", LF, t0 + 1000 * SEC, "H2", "heat"),
        ContextEvent(ContextKind.LOT_START, "steel", CC, t0 + 1500 * SEC, "H1-S1", "slab"),
    ]
    sink = PostgresSink(fresh_db)
    sink.connect()
    sink.write(reading_records(rs, per=2000) + records("context", ctx))
    assert sink.flush() == []
    sink.close()
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("ANALYZE")
    return fresh_db, t0, rs


def _ts(us: int) -> datetime:
    return datetime.fromtimestamp(us // SEC, tz=UTC) + timedelta(microseconds=us % SEC)


def test_latest_values_of_subtree(loaded: Any) -> None:
    dsn, _, rs = loaded
    with psycopg.connect(dsn) as conn:
        whole = Q.latest_values(conn, "steel", "acme/works")
        melt = Q.latest_values(conn, "steel", "acme/works/melt")
        none = Q.latest_values(conn, "steel", "acme/work")  # a prefix of a name is not a parent
        plan = Q.explain(conn, Q.LATEST_SQL, Q._subtree_args("steel", "acme/works/melt") | {"since": None})
    assert len(whole) == 20 and none == []
    assert {v.tag for v in melt} == {f"t{k}" for k in range(10)}
    last = {r.tag: r for r in rs[-20:]}
    for v in whole:
        assert v.value == last[v.tag].value and v.time == _ts(last[v.tag].ts_us)
    assert "Index Scan Backward" in plan and "_pkey" in plan, plan
    assert "Seq Scan on readings" not in plan, plan


def test_history_downsampled_on_server(loaded: Any) -> None:
    dsn, t0, rs = loaded
    start, end = _ts(t0 + 100 * SEC), _ts(t0 + 700 * SEC)
    with psycopg.connect(dsn) as conn:
        buckets = Q.history(conn, "steel", "t3", start, end, timedelta(minutes=1))
        plan = Q.explain(
            conn,
            Q.history_sql(Q.flavor(conn)),
            {
                "plant": "steel",
                "tag": "t3",
                "start": start,
                "end": end,
                "bucket": timedelta(minutes=1),
                "good_only": False,
            },
        )
    mine = [r for r in rs if r.tag == "t3" and t0 + 100 * SEC <= r.ts_us < t0 + 700 * SEC]
    expect: dict[int, list[Reading]] = {}
    for r in mine:
        expect.setdefault(r.ts_us // (60 * SEC), []).append(r)
    assert [b.start for b in buckets] == [_ts(k * 60 * SEC) for k in sorted(expect)]
    for b in buckets:
        grp = expect[int(b.start.timestamp()) // 60]
        vals = [float(r.value) for r in grp]
        assert b.count == len(grp) and b.min == min(vals) and b.max == max(vals)
        assert b.bad_count == sum(r.quality == Quality.BAD for r in grp)
        assert b.mean == pytest.approx(statistics.fmean(vals)) and b.last == vals[-1]
    assert "Index" in plan and "_pkey" in plan and "Seq Scan on readings" not in plan, plan


def test_lot_timeline(loaded: Any) -> None:
    dsn, t0, _ = loaded
    with psycopg.connect(dsn) as conn:
        segs = Q.lot_timeline(conn, "steel", "acme/works", _ts(t0 + 500 * SEC), _ts(t0 + 2000 * SEC))
        later = Q.lot_timeline(conn, "steel", "acme/works/melt", _ts(t0 + 1200 * SEC), _ts(t0 + 2000 * SEC))
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")  # tiny table: show the index serves the query at all
            plan = Q.explain(
                conn,
                Q.TIMELINE_SQL,
                Q._subtree_args("steel", "acme/works/melt") | {"start": _ts(t0), "end": _ts(t0 + SEC)},
            )
    assert [(s.lot, s.equipment, s.end is None) for s in segs] == [
        ("H1", LF, False),
        ("H2", LF, True),
        ("H1-S1", CC, True),
    ]
    assert segs[0].spec_id == "EN10025-2:S355J2" and segs[0].lot_kind == "heat"
    assert [s.lot for s in later] == ["H2"]
    assert "process_segments_equipment_time" in plan or "process_segments_lot_id" in plan, plan
