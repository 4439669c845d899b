"""The bench's TimescaleDB stages (issue 14) at small sizes: compression, history over the hourly
continuous aggregate, the dataset pull over compressed chunks; the engine the report records;
and what they do on plain PostgreSQL. TimescaleDB-only tests skip (with the reason) where the
server cannot load it, through ``timescale_db``."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import psycopg
import pytest

from plantstream.bench import timescale as bt
from plantstream.bench.copyload import T0
from plantstream.monitor.queries import flavor
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.testing.sinks import timescale_db

pytestmark = [pytest.mark.integration]


def test_engine_is_what_migrate_picks(fresh_db: str) -> None:
    eng = bt.engine(fresh_db)
    migrate(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        fl = flavor(conn)
    assert eng.timescale == (fl == "timescale")
    assert eng.postgres[:2].isdigit()
    if eng.timescale:
        assert eng.reason == "" and eng.text.startswith("TimescaleDB ") and eng.version[:1].isdigit()
    else:
        assert eng.reason and eng.text.startswith("plain PostgreSQL ") and eng.reason in eng.text
        # The stages refuse a plain database instead of measuring something else.
        with pytest.raises(RuntimeError, match="plain flavor"):
            bt.compression(fresh_db, floats=2, ints=0, bools=0, seconds=60)


def test_demo_day_loads_every_kind_time_major(fresh_db: str) -> None:
    migrate(fresh_db)
    res = bt.load_demo_day(fresh_db, floats=4, ints=2, bools=1, seconds=900)
    assert res["readings"] == 7 * 900
    with psycopg.connect(fresh_db) as conn:
        row = conn.execute(
            "SELECT count(*), count(v_float), count(v_int), count(v_bool), count(DISTINCT tag_id),"
            " count(DISTINCT v_float), min(time), max(time) FROM readings"
        ).fetchone()
        assert row is not None
        n, nf, ni, nb, tags, distinct_f, t_min, t_max = row
        assert (n, nf, ni, nb, tags) == (6300, 3600, 1800, 900, 7)
        assert distinct_f > 400  # noisy at 2 decimals like the simulators, not a constant or a short cycle
        assert t_min == T0 and t_max == T0 + timedelta(seconds=899)


def test_hourly_history_matches_the_minute_rows(fresh_db: str) -> None:
    """Both flavors: aggregates_1h (continuous aggregate or plain view) answers hourly buckets
    whose counts and means agree with the minute rows they summarize."""
    migrate(fresh_db)
    loaded = bt.load_minute_aggregates(fresh_db, tags=3, days=2)
    assert loaded["minute_rows"] == 3 * 2 * 24 * 60
    names = ["tag0001", "tag0002", "tag0003", "nosuchtag"]
    start, end = T0 - timedelta(days=2), T0
    with psycopg.connect(fresh_db) as conn:
        res = bt.history_from_hourly(conn, "bench", names, start, end)
        s = res["tag0002"]
        minute = conn.execute(
            "SELECT avg(mean), sum(count), min(min), max(max) FROM aggregates_1m a JOIN tags t ON t.id = a.tag_id"
            " WHERE t.tag = 'tag0002' AND a.start >= %s AND a.start < %s",
            (start, start + timedelta(hours=1)),
        ).fetchone()
        src, _ = bt.served_from(conn, {"plant": "bench", "tags": names, "start": start, "end": end})
    assert set(res) == {"tag0001", "tag0002", "tag0003"}
    assert len(s) == 48 and not s.raw
    assert bool(np.all(s.count == 3600)) and bool(np.all(np.diff(s.time_us) == 3_600_000_000))
    assert minute is not None
    assert s.mean[0] == pytest.approx(minute[0]) and s.count[0] == minute[1]
    assert (s.min[0], s.max[0]) == pytest.approx((minute[2], minute[3]))
    assert (
        src.startswith("aggregates_1h materialization")
        if flavor_of(fresh_db) == "timescale"
        else src == "aggregates_1m"
    )


def flavor_of(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return flavor(conn)


@pytest.mark.timescaledb
def test_compression_shrinks_a_demo_day(fresh_db: str) -> None:
    dsn = timescale_db(fresh_db)
    res = bt.compression(dsn, floats=5, ints=1, bools=1, seconds=7200)
    assert res["rows_after"] == res["readings"] == 7 * 7200  # compression keeps every reading
    assert res["compressed_chunks"] >= 1 and res["policy"]["chunks"]
    assert 0 < res["after_bytes"] < res["before_bytes"] and res["ratio"] > 1
    assert res["chunk_stats_ratio"] is not None and res["chunk_stats_ratio"] > 1


@pytest.mark.timescaledb
def test_cagg_history_is_served_from_the_materialization(fresh_db: str) -> None:
    dsn = timescale_db(fresh_db)
    res = bt.cagg_history(dsn, tags=5, days=30, repeats=1)
    assert res["served_from"].startswith("aggregates_1h materialization")
    assert res["tags_answered"] == 5 and res["points"] == res["expected_points"] == 5 * 30 * 24
    assert res["counts_match"] and res["median_ms"] > 0


@pytest.mark.timescaledb
def test_dataset_pull_over_compressed_chunks_gives_the_same_output(fresh_db: str) -> None:
    from plantstream.bench.pull import compressed, run

    dsn = timescale_db(fresh_db)
    first = run(dsn, quick=True)
    res = compressed(dsn, first, quick=True)
    assert res["compressed_chunks"] == res["chunks"] >= 1
    assert res["same_rows_and_cells"] and res["compressed_cells_per_s"] > 0
    assert res["ratio"] == pytest.approx(res["compressed_cells_per_s"] / first["cells_per_s"], rel=1e-2)
