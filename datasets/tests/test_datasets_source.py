"""The window reader: the client-side (tag, time) ordering whatever order the scan returns, the
blob parser, and helper connections that read time slices of a window in the SAME snapshot."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import psycopg
import pytest
from psycopg import sql

from plantstream.access import DB_ROLE, Tier
from plantstream.datasets import pull as pull_mod
from plantstream.datasets.source import (
    PG_EPOCH_US,
    RECORD,
    RawWindow,
    SourceTag,
    WindowReader,
    parse_blob_copy,
    share_snapshot,
)
from plantstream.domain.pullrequest import Requester, validate_request
from plantstream.testing import datasets as testing

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)


def _tags(n: int) -> list[SourceTag]:
    return [SourceTag(100 + i, f"t{i}", "eq", "", "float", "general", "", "") for i in range(n)]


def _records(n_tags: int, seconds: int) -> np.ndarray[Any, Any]:
    """Time-major records (as stored live): every tag at each second."""
    recs = np.zeros(n_tags * seconds, dtype=RECORD)
    recs["tag"] = np.tile(np.arange(100, 100 + n_tags), seconds)
    recs["t"] = np.repeat(np.arange(seconds, dtype=np.int64) * 1_000_000, n_tags) + 10**15
    recs["vf"] = np.arange(recs.size) * 0.5
    recs["vi"] = np.arange(recs.size) % 7
    recs["kind"] = np.where(np.arange(recs.size) % 11 == 0, 2, 0)  # some text values: missing
    recs["lot"] = np.arange(recs.size) // 25
    return recs


def _reader(n_tags: int) -> WindowReader:
    return WindowReader(cast(Any, None), _tags(n_tags))  # decode never touches the connection


def test_decode_orders_by_tag_and_time_whatever_the_scan_order() -> None:
    recs = _records(5, 40)
    shuffled = recs[np.random.default_rng(7).permutation(recs.size)]
    a, b = _reader(5), _reader(5)
    n = int((recs["kind"] != 2).sum())
    ca = a.decode(RawWindow(recs, [], n))
    cb = b.decode(RawWindow(shuffled, [], n))
    assert ca.by_tag and cb.by_tag and ca.t_us.size == n
    key = ca.tag.astype(np.int64) * 10**17 + ca.t_us
    assert np.all(np.diff(key) > 0)  # strictly (tag, time) ascending
    for x, y in ((ca.tag, cb.tag), (ca.t_us, cb.t_us), (ca.value, cb.value), (ca.lot, cb.lot)):
        assert np.array_equal(x, y)
    first = recs[(recs["tag"] == 100) & (recs["kind"] != 2)]["t"].min()
    assert ca.t_us[0] == int(first) + PG_EPOCH_US
    assert a.watermark == b.watermark and a.rows_read == b.rows_read == n


def test_decode_refuses_a_tag_that_was_not_asked_for() -> None:
    recs = _records(3, 4)
    recs["tag"][5] = 999
    with pytest.raises(ValueError, match="not asked for"):
        _reader(3).decode(RawWindow(recs, [], recs.size))


def test_blob_parser_reads_one_blob_and_an_empty_window() -> None:
    recs = _records(2, 3)
    blob = recs.tobytes()
    data = HEADER + struct.pack(">hi", 1, len(blob)) + blob + TRAILER
    assert parse_blob_copy(data).tobytes() == blob
    assert parse_blob_copy(HEADER + struct.pack(">hi", 1, -1) + TRAILER).size == 0
    with pytest.raises(ValueError):
        parse_blob_copy(HEADER + struct.pack(">hi", 1, len(blob) - 1) + blob[:-1] + TRAILER)
    with pytest.raises(ValueError):
        parse_blob_copy(HEADER + struct.pack(">hi", 2, 0) + TRAILER)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_helper_connections_read_the_same_snapshot(fresh_db: str) -> None:
    seconds = 300
    testing.load(fresh_db, seconds)
    role = DB_ROLE[Tier.OWNER]
    lo, hi = testing.T0_US, testing.T0_US + seconds * 1_000_000
    with (
        psycopg.connect(fresh_db, autocommit=True) as conn,
        psycopg.connect(fresh_db, autocommit=True) as helper,
        psycopg.connect(fresh_db, autocommit=True) as admin,
    ):
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            rows = conn.execute(
                "SELECT id, tag, equipment, unit, datatype, grade, description, spec_property FROM ds_tags ORDER BY tag"
            ).fetchall()
            tags = [SourceTag(*r) for r in rows]
            # Committed after the snapshot was taken: neither reader may see it.
            num = next(t for t in tags if t.datatype == "float")
            admin.execute(
                "INSERT INTO readings (time, tag_id, v_float, quality, seq) VALUES (%s, %s, 1.0, 0, 0)",
                (_at(lo + 500_000), num.id),
            )
            share_snapshot(conn, helper, role)
            single = WindowReader(conn, tags)
            split = WindowReader(conn, tags, helpers=[helper])
            seen: set[int] = set()
            try:
                for a, b in ((lo, lo + 7_000_000), (lo + 7_000_000, hi)):
                    ca, cb = single.read(a, b), split.read(a, b)
                    seen.update(cb.t_us.tolist())
                    assert np.array_equal(ca.tag, cb.tag) and np.array_equal(ca.t_us, cb.t_us)
                    assert np.array_equal(ca.value, cb.value) and np.array_equal(ca.lot, cb.lot)
                    assert np.array_equal(ca.ints(), cb.ints())
            finally:
                split.close()
        assert single.rows_read == split.rows_read > 0
        assert single.watermark == split.watermark
        assert lo + 500_000 not in seen
        # ... while a new transaction does see it (so the check above can fail).
        admin.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        fresh = WindowReader(admin, tags).read(lo, lo + 1_000_000)
        assert lo + 500_000 in set(fresh.t_us.tolist())


def _at(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_pull_files_do_not_depend_on_the_fetch_connections(
    fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seconds = 900
    testing.load(fresh_db, seconds)
    start = _at(testing.T0_US)
    req = validate_request(
        {
            "plant": testing.PLANT,
            "start": start,
            "end": start + timedelta(seconds=seconds),
            "interval": "1s",
            "gap": {"rule": "locf", "max_gap": "5s"},
        }
    )
    files = {}
    for n in (1, 3):
        monkeypatch.setattr(pull_mod, "FETCH_CONNECTIONS", n)
        # Small windows: many of them, each cut into n slices.
        monkeypatch.setattr(pull_mod, "TARGET_READINGS_PER_WINDOW", 2_000)
        rec = pull_mod.pull(fresh_db, req, Requester(name="t", tier=Tier.OWNER), out=tmp_path / f"n{n}")
        assert rec.status == "complete" and rec.rows == seconds
        files[n] = sorted((f.path, f.sha256) for f in rec.files)
    assert files[1] == files[3]


def _plan_nodes(plan: dict[str, Any]) -> list[str]:
    nodes = [str(plan["Node Type"])]
    for child in plan.get("Plans", []):
        nodes += _plan_nodes(child)
    return nodes


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_window_query_reads_each_heap_page_once_for_many_tags(fresh_db: str) -> None:
    """50 tags stored time-major: the window query must not loop over tags (one heap scan per
    tag visits every page 50 times); under tune_for_windows it is one scan joined by hash."""
    from plantstream.bench.pull import load
    from plantstream.datasets.source import NUMERIC_SQL, tune_for_windows

    seconds = 3_000
    load(fresh_db, tags=50, seconds=seconds)
    inner = NUMERIC_SQL[NUMERIC_SQL.index("(") + 1 : NUMERIC_SQL.rindex(") TO STDOUT")]
    lo = datetime(2025, 6, 1, tzinfo=UTC)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(DB_ROLE[Tier.OWNER])))
        ids = [int(r[0]) for r in conn.execute("SELECT id FROM ds_tags")]
        assert len(ids) == 50
        params = {"tags": ids, "lo": lo, "hi": lo + timedelta(seconds=seconds)}

        def explain() -> tuple[list[str], int]:
            row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + sql.SQL(inner), params).fetchone()
            assert row is not None
            plan = row[0][0]["Plan"]
            return _plan_nodes(plan), int(plan["Shared Hit Blocks"]) + int(plan.get("Shared Read Blocks", 0))

        with conn.transaction():
            untuned, untuned_blocks = explain()
        with conn.transaction():
            tune_for_windows(conn)
            tuned, tuned_blocks = explain()
        # The partitions' size on disk: relpages is a planner estimate and was stale (1) here.
        pages = int(
            conn.execute(  # type: ignore[index]
                "SELECT sum(pg_relation_size(c.oid)) / current_setting('block_size')::int FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'readings'::regclass"
            ).fetchone()[0]
        )
    assert "Nested Loop" not in tuned, tuned
    # The reason for the setting: without it the planner loops per tag (it expects 3 of 50
    # readable tags) and reads many times the table's pages.
    assert "Nested Loop" in untuned, untuned
    assert tuned_blocks < 3 * pages < untuned_blocks, (tuned_blocks, pages, untuned_blocks)
