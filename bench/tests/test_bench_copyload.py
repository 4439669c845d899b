"""The benchmarks' one COPY loader (bench.copyload): what it writes is what PostgreSQL reads back,
in the sink's column layout, and a column the sink does not COPY is refused by name."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import psycopg
import pytest

from plantstream.bench import copyload
from plantstream.sinks.timescaledb.copybin import DIRECT_COLUMNS
from plantstream.sinks.timescaledb.migrate import migrate


def test_row_and_statement_follow_the_sinks_columns() -> None:
    assert copyload.COLUMNS == DIRECT_COLUMNS
    r = copyload.row(seq=3, tag_id=1, quality=0)
    assert len(r) == len(DIRECT_COLUMNS) and r[DIRECT_COLUMNS.index("seq")] == 3
    assert r[DIRECT_COLUMNS.index("v_float")] is None
    # Statement columns in COPY order whatever the mapping's order.
    assert (
        copyload.statement(["seq", "time", "tag_id"]) == "COPY readings (tag_id, time, seq) FROM STDIN (FORMAT BINARY)"
    )
    with pytest.raises(KeyError, match="v_double"):
        copyload.row(v_double=1.0)
    with pytest.raises(KeyError, match="v_double"):
        copyload.block({"v_double": np.zeros(1)})
    with pytest.raises(ValueError, match="v_text"):
        copyload.block({"tag_id": np.zeros(1, np.int32), "v_text": "x"})  # type: ignore[dict-item]


@pytest.mark.integration
@pytest.mark.db
def test_block_reads_back_exactly(fresh_db: str) -> None:
    migrate(fresh_db)
    s = np.arange(5, dtype=np.int64)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(
            "SELECT ps_ensure_partitions('readings', %s, %s)", (copyload.T0, copyload.T0 + timedelta(seconds=10))
        )
        copyload.write(conn, {"time": copyload.T0_US + s * 1_000_000, "tag_id": 7, "v_float": s * 0.25, "quality": 0,
                              "status_code": 0x80310000, "lot_id": s + 1, "seq": s + 100})  # fmt: skip
        copyload.write(conn, {"time": copyload.T0_US + s * 1_000_000, "tag_id": 8, "v_int": -s, "quality": 1, "seq": s})
        copyload.write(conn, {"time": copyload.T0_US + s, "tag_id": 9, "v_bool": s % 2, "quality": 2, "seq": s,
                              "server_time": copyload.T0_US + s + 1})  # fmt: skip
        got = conn.execute(
            "SELECT tag_id, time, v_float, v_int, v_bool, quality, status_code, lot_id, seq, server_time "
            "FROM readings ORDER BY tag_id, time"
        ).fetchall()
    t0, us = copyload.T0, timedelta(microseconds=1)
    want: list[tuple[object, ...]] = [
        (7, t0 + timedelta(seconds=i), i * 0.25, None, None, 0, 0x80310000, i + 1, i + 100, None) for i in range(5)
    ]
    want += [(8, t0 + timedelta(seconds=i), None, -i, None, 1, None, None, i, None) for i in range(5)]
    want += [(9, t0 + i * us, None, None, bool(i % 2), 2, None, None, i, t0 + (i + 1) * us) for i in range(5)]
    assert got == want
