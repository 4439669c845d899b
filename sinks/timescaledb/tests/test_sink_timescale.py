"""TimescaleDB-only behaviour; skipped where the extension is not installed (plain PostgreSQL)."""

from __future__ import annotations

import psycopg
import pytest

from plantstream.contract import now_us
from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.testing.sinks import reading_records, readings, timescale_db

pytestmark = [pytest.mark.integration, pytest.mark.timescaledb]


@pytest.fixture
def ts_db(fresh_db: str) -> str:
    return timescale_db(fresh_db)


def test_hypertables_policies_and_cagg(ts_db: str) -> None:
    with psycopg.connect(ts_db) as conn:
        hts = {r[0] for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")}
        jobs = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"
            )
        }
        caggs = {r[0] for r in conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates")}
    assert {"readings", "aggregates_1s", "aggregates_1m"} <= hts
    assert ("policy_compression", "readings") in jobs and ("policy_retention", "readings") in jobs
    assert "aggregates_1h" in caggs


def test_late_data_into_compressed_chunk_no_duplicates(ts_db: str) -> None:
    rs = readings(2000, tags=4)
    sink = PostgresSink(ts_db)
    sink.connect()
    sink.write(reading_records(rs[:1000]))
    assert sink.flush() == []
    with psycopg.connect(ts_db, autocommit=True) as conn:
        conn.execute("SELECT compress_chunk(c) FROM show_chunks('readings') c")
    sink.write(reading_records(rs))  # half already present (compressed), half late
    assert sink.flush() == []
    sink.close()
    with psycopg.connect(ts_db) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT (tag_id, time)) FROM readings").fetchone() == (2000, 2000)


DAY_US = 86_400_000_000


def _job(conn: psycopg.Connection[tuple[object, ...]], proc: str, table: str) -> int:
    row = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = %s AND hypertable_name = %s",
        (proc, table),
    ).fetchone()
    assert row is not None, f"no {proc} job on {table}"
    return int(str(row[0]))


def test_retention_drops_whole_chunks_only(ts_db: str) -> None:
    """The retention policy (from the retention table) drops chunks entirely older than its
    horizon; the chunk holding the horizon keeps all its rows, older ones included."""
    with psycopg.connect(ts_db) as conn:
        keep = conn.execute("SELECT extract(epoch FROM keep)::bigint FROM retention WHERE table_name = 'readings'")
        row = keep.fetchone()
    assert row is not None
    now = now_us()
    cutoff = now - int(str(row[0])) * 1_000_000
    cutoff_chunk = cutoff // DAY_US * DAY_US  # daily chunks, aligned to UTC midnight
    expired = readings(100, tags=2, t0=cutoff_chunk - DAY_US + 3_600_000_000)  # a whole chunk before the horizon
    straddling = readings(100, tags=2, t0=cutoff_chunk)  # older than the horizon, in the chunk holding it
    recent = readings(100, tags=2, t0=now - DAY_US)
    assert all(r.ts_us < cutoff for r in straddling) or cutoff - cutoff_chunk < 100_000
    sink = PostgresSink(ts_db)
    sink.connect()
    sink.write(reading_records(expired + straddling + recent))
    assert sink.flush() == []
    sink.close()
    with psycopg.connect(ts_db, autocommit=True) as conn:
        chunks_before = conn.execute("SELECT count(*) FROM show_chunks('readings')").fetchone()
        assert chunks_before is not None and chunks_before[0] >= 3
        conn.execute("CALL run_job(%s)", (_job(conn, "policy_retention", "readings"),))
        chunks_after = conn.execute("SELECT count(*) FROM show_chunks('readings')").fetchone()
        left = conn.execute(
            "SELECT count(*) FILTER (WHERE time < to_timestamp(%s / 1e6)), count(*) FROM readings",
            (cutoff_chunk,),
        ).fetchone()
    assert chunks_after is not None and chunks_after[0] == chunks_before[0] - 1
    assert left == (0, 200)  # the expired chunk's 100 rows are gone, the rest all kept


def test_continuous_aggregate_refresh_picks_up_late_data(ts_db: str) -> None:
    """aggregates_1h (materialized only) is refreshed by its policy over the last 7 days, so 1 min
    windows written late into an hour already materialized change that hour's row."""
    hour_us = 3_600_000_000
    hour = (now_us() - 3 * hour_us) // hour_us * hour_us  # inside [now - 7 days, now - 1 hour]
    insert = (
        "INSERT INTO aggregates_1m (tag_id, start, count, bad_count, min, max, mean, last) "
        "VALUES (1, to_timestamp(%s / 1e6), %s, 0, %s, %s, %s, %s)"
    )
    with psycopg.connect(ts_db, autocommit=True) as conn:
        for minute in range(30):  # the first half hour: 60 readings a minute, mean 10
            conn.execute(insert, (hour + minute * 60_000_000, 60, 9.0, 11.0, 10.0, 10.0))
        job = _job(conn, "policy_refresh_continuous_aggregate", "aggregates_1h")
        conn.execute("CALL run_job(%s)", (job,))
        q = "SELECT count, mean, max FROM aggregates_1h WHERE tag_id = 1 AND start = to_timestamp(%s / 1e6)"
        assert conn.execute(q, (hour,)).fetchone() == (1800, 10.0, 11.0)
        for minute in range(30, 60):  # late: the second half hour, mean 20
            conn.execute(insert, (hour + minute * 60_000_000, 60, 19.0, 25.0, 20.0, 20.0))
        assert conn.execute(q, (hour,)).fetchone() == (1800, 10.0, 11.0)  # not yet refreshed
        conn.execute("CALL run_job(%s)", (job,))
        assert conn.execute(q, (hour,)).fetchone() == (3600, 15.0, 25.0)
