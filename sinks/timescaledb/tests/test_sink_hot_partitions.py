"""Day partitions are not vacuumed for their inserts while they are written; maintenance hands
finished days back to autovacuum (plain path; see migration 0006)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink

pytestmark = pytest.mark.integration

DEFERRED = "autovacuum_vacuum_insert_threshold=-1"


def _options(conn: psycopg.Connection[tuple[object, ...]], name: str) -> list[str] | None:
    row = conn.execute("SELECT reloptions FROM pg_class WHERE relname = %s", (name,)).fetchone()
    assert row is not None, f"no partition {name}"
    return row[0]  # type: ignore[return-value]


def test_written_days_defer_insert_vacuum_and_finished_days_get_it_back(fresh_db: str) -> None:
    # The plain path even on a TimescaleDB server (TimescaleDB manages its own chunks).
    migrate(fresh_db, flavor="plain")
    sink = PostgresSink(fresh_db)
    sink.connect()
    try:
        sink.maintain()  # creates today .. +3 days
    finally:
        sink.close()
    today = datetime.now(UTC)
    # Noon, so old .. old + 1 h stays inside one day whatever the hour the test runs at (near
    # midnight it used to reach into the next day and make two partitions).
    old = (today - timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=0)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for table in ("readings", "aggregates_1s"):
            assert DEFERRED in (_options(conn, f"{table}_p{today:%Y%m%d}") or [])
            assert DEFERRED in (_options(conn, f"{table}_p{today + timedelta(days=2):%Y%m%d}") or [])
        # Monthly partitions take few rows: left to autovacuum's defaults.
        assert _options(conn, f"aggregates_1m_p{today:%Y%m}") is None
        # A day that is over (late data made its partition): settled by the next maintenance.
        conn.execute("SELECT ps_ensure_partitions('readings', %s, %s)", (old, old + timedelta(hours=1)))
        assert DEFERRED in (_options(conn, f"readings_p{old:%Y%m%d}") or [])
        assert conn.execute("SELECT ps_settle_partitions('readings')").fetchone() == (1,)
        assert _options(conn, f"readings_p{old:%Y%m%d}") is None
        assert DEFERRED in (_options(conn, f"readings_p{today:%Y%m%d}") or [])
        assert conn.execute("SELECT ps_settle_partitions('readings')").fetchone() == (0,)
        assert conn.execute("SELECT ps_settle_partitions('aggregates_1m')").fetchone() == (0,)
        # Still an ordinary partition for writes and reads.
        conn.execute(
            "INSERT INTO readings (time, tag_id, v_float, quality, seq) VALUES (%s, 1, 2.5, 0, 1), (%s, 1, 3.5, 0, 2)",
            (old, today),
        )
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM readings_default").fetchone() == (0,)


def test_migration_defers_the_days_that_existed_before_it(fresh_db: str) -> None:
    """The migration's last block marks partitions made before it (by an older ps_ensure_partitions)."""
    from plantstream.sinks.timescaledb.migrate import MIGRATIONS_DIR

    migrate(fresh_db, flavor="plain")
    text = (MIGRATIONS_DIR / "0006_hot_partitions.plain.sql").read_text()
    block = text[text.rindex("DO $$") :]
    today = datetime.now(UTC)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("SELECT ps_ensure_partitions('readings', %s, %s)", (today - timedelta(days=2), today))
        for day in (today, today - timedelta(days=2)):
            conn.execute(f"ALTER TABLE readings_p{day:%Y%m%d} RESET (autovacuum_vacuum_insert_threshold)")
        conn.execute(block)
        assert DEFERRED in (_options(conn, f"readings_p{today:%Y%m%d}") or [])
        assert _options(conn, f"readings_p{today - timedelta(days=2):%Y%m%d}") is None  # its day is over
