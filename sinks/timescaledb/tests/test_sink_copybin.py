"""The column-wise binary COPY encoder, read back by PostgreSQL itself: every value type, NULL
pattern and edge value arrives exactly (the database is the judge of the wire format)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantstream.sinks.timescaledb.copybin import DIRECT_COLUMNS, STAGING_COLUMNS, ReadingColumns, encode, encode_parts

pytestmark = [pytest.mark.integration, pytest.mark.db]

_PG_EPOCH_US = 946_684_800_000_000
_COLS = ", ".join(DIRECT_COLUMNS)  # the encoder's column order (derived from the reading contract)

value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40),
)
ts = st.integers(min_value=-(10**15), max_value=4 * 10**15)  # 1938 .. 2096
row = st.tuples(
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    ts,
    value,
    st.integers(min_value=0, max_value=2),
    st.none() | st.integers(min_value=0, max_value=2**32 - 1),
    st.none() | st.integers(min_value=1, max_value=2**31 - 1),
    st.none() | ts,
)


def _seqs(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A unique seq per row (the last column), spread over the whole int8 range, to order by."""
    return [(*r, (2**63 - 1) - i * (2**50)) for i, r in enumerate(rows)]


def _columns(rows: list[tuple[Any, ...]]) -> ReadingColumns:
    c = ReadingColumns()
    for tag, t, v, q, sc, lot, srv, seq in rows:
        c.tag_id.append(tag)
        c.ts_us.append(t)
        c.value.append(v)
        c.quality.append(q)
        c.status_code.append(sc)
        c.lot_id.append(lot)
        c.server_ts_us.append(srv)
        c.seq.append(seq)
    return c


def _us(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def conn(stack: Any) -> Any:
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as c:  # temp tables only
        yield c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, max_size=40), part=st.one_of(st.none(), st.integers(min_value=1, max_value=41)))
def test_every_shape_reads_back_exactly(conn: Any, rows: list[tuple[Any, ...]], part: int | None) -> None:
    """Whole (``encode``) or written in parts of ``part`` rows (``encode_parts``, as the sink does)."""
    rows = _seqs(rows)
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS copybin_rt (tag_id int4, time timestamptz, v_float float8, v_int int8, "
        "v_bool bool, v_text text, quality int2, status_code int8, lot_id int4, server_time timestamptz, seq int8, "
        "staged_ts int8, staged_srv int8)"
    )
    conn.execute("TRUNCATE copybin_rt")
    cols = _columns(rows)
    with conn.cursor() as cur:
        with cur.copy(f"COPY copybin_rt ({_COLS}) FROM STDIN (FORMAT BINARY)") as cp:
            if part is None:
                cp.write(encode(cols, _PG_EPOCH_US))  # timestamptz: PostgreSQL's 2000-01-01 origin
            else:
                for chunk in encode_parts(cols, _PG_EPOCH_US, part):
                    cp.write(chunk)
        got = cur.execute(f"SELECT {_COLS} FROM copybin_rt ORDER BY seq").fetchall()
    assert len(got) == len(rows)
    want = sorted(rows, key=lambda r: r[7])
    for (tag, t, v, q, sc, lot, srv, seq), row in zip(want, got, strict=True):
        g = dict(zip(DIRECT_COLUMNS, row, strict=True))
        vals = [g[c] for c in ("v_float", "v_int", "v_bool", "v_text") if g[c] is not None]
        assert len(vals) == 1 and _same(v, vals[0]), (v, g)
        stored = (g["tag_id"], _us(g["time"]), g["quality"], g["status_code"], g["lot_id"], _us(g["server_time"]))
        assert (*stored, g["seq"]) == (tag, t, q, sc, lot, srv, seq)


def test_staging_origin_and_empty_stream(conn: Any) -> None:
    """Origin 0 writes Unix microseconds into bigint columns (the staging table); no rows is
    still a valid stream (signature and trailer)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS copybin_stage (tag_id int4, ts_us int8, v_float float8, "
                 "v_int int8, v_bool bool, v_text text, quality int2, status_code int8, lot_id int4, "
                 "server_ts_us int8, seq int8)")  # fmt: skip
    conn.execute("TRUNCATE copybin_stage")
    rows = [(7, 1_700_000_000_000_001, 1.5, 0, None, None, 1_700_000_000_000_009, 1), (7, 5, "RUN", 1, 3, 2, None, 2)]
    with conn.cursor() as cur:
        stage = f"COPY copybin_stage ({', '.join(STAGING_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        with cur.copy(stage) as cp:
            cp.write(encode(_columns(rows), 0))
        with cur.copy(stage) as cp:
            cp.write(encode(ReadingColumns(), 0))
        got = cur.execute(
            "SELECT ts_us, server_ts_us, v_float, v_text, lot_id FROM copybin_stage ORDER BY seq"
        ).fetchall()
    assert got == [(1_700_000_000_000_001, 1_700_000_000_000_009, 1.5, None, None), (5, None, None, "RUN", 2)]


def test_an_integer_beyond_bigint_is_refused_before_the_database(conn: Any) -> None:
    with pytest.raises(OverflowError):
        encode(_columns([(1, 0, 2**63, 0, None, None, None, 1)]), 0)
