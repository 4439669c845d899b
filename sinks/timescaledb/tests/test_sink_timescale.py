"""TimescaleDB-only behaviour; skipped where the extension is not installed (plain PostgreSQL)."""

from __future__ import annotations

import psycopg
import pytest

from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.sinks.timescaledb.testdata import reading_records, readings, timescale_db

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
