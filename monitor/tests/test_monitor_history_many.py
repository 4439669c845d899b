"""history_many / history against a brute-force reference over readings written by the real sink:
raw and downsampled paths, gaps, bad/uncertain quality, int/bool/text tags, sub-second sampling,
several day partitions; the plan (primary key, partition pruning); the TimescaleDB SQL's shape."""

from __future__ import annotations

import re
import statistics
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from plantstream.contract import Origin, Quality, Reading
from plantstream.monitor import queries as Q
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.stack import Stack
from plantstream.testing.sinks import reading_records, timescale_db

# Builds its own databases from the stack (not fresh_db): CI's PostgreSQL-only pass must keep it.
pytestmark = pytest.mark.db

SEC = 1_000_000
HOUR = 3600 * SEC
EQ = "acme/works/melt/lf/lf1"
FAST = [f"f{k}" for k in range(4)]
ALL = [*FAST, "i0", "b0", "s0", "j0", "p0"]


@dataclass(frozen=True)
class Loaded:
    dsn: str
    day: int  # µs of midnight UTC two days ago: D-2 busy, p0 spans D-2 .. D
    rs: list[Reading]


def _data(day: int) -> list[Reading]:
    """f0..f3 float 1 Hz for 3000 s from day+1h (every 50th bad, every 70th uncertain; f1 has a
    600 s gap), i0/b0/s0 int/bool/text 1 Hz, j0 2 Hz at odd sub-second times, p0 every 30 s
    over three days (three day partitions)."""
    t0 = day + HOUR
    out: list[Reading] = []

    def add(tag: str, ts: int, value: float | int | bool | str, q: Quality = Quality.GOOD) -> None:
        out.append(Reading("steel", EQ, tag, ts, value, "", q, Origin.OPCUA, "s", len(out)))

    for i in range(3000):
        q = Quality.BAD if i % 50 == 0 else Quality.UNCERTAIN if i % 70 == 0 else Quality.GOOD
        for k, tag in enumerate(FAST):
            if not (tag == "f1" and 1000 <= i < 1600):
                add(tag, t0 + i * SEC, float((i * 7 + k) % 113) - 40.5, q)
        add("i0", t0 + i * SEC, (i * 13) % 1000 - 500, q)
        add("b0", t0 + i * SEC, i % 3 == 0, q)
        add("s0", t0 + i * SEC, f"state{i % 4}", q)
        for half in (0, 1):
            add("j0", t0 + i * SEC + half * SEC // 2 + 137, float(i) + half / 4)
    for i in range(3 * 24 * 120):
        add("p0", day + i * 30 * SEC, float(i % 17), Quality.BAD if i % 11 == 0 else Quality.GOOD)
    return out


@pytest.fixture(scope="module")
def loaded(stack: Stack) -> Iterator[Loaded]:
    """One database for the module (the data is only read): written by the real sink, ANALYZEd."""
    name = f"pstest_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = stack.dsn(name)
    try:
        migrate(dsn)
        midnight = datetime.now(tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day = int((midnight - timedelta(days=2)).timestamp()) * SEC
        rs = _data(day)
        # f3's readings 200-299 s arrive late: stored after newer rows, so heap order != time order.
        late = [r for r in rs if r.tag == "f3" and day + HOUR + 200 * SEC <= r.ts_us < day + HOUR + 300 * SEC]
        sink = PostgresSink(dsn)
        sink.connect()
        sink.write(reading_records([r for r in rs if r not in late], per=2000))
        assert sink.flush() == []
        sink.write(reading_records(late, per=2000))
        assert sink.flush() == []
        sink.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ANALYZE")
            heap = [
                r[0]
                for r in conn.execute(
                    "SELECT r.time FROM readings r JOIN tags t ON t.id = r.tag_id "
                    "WHERE t.tag = 'f3' ORDER BY r.tableoid, r.ctid"
                )
            ]
        assert heap != sorted(heap)  # the raw path must sort what the server sends in heap order
        yield Loaded(dsn, day, rs)
    finally:
        with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ts(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _num(v: object) -> float | None:
    return None if isinstance(v, str) or v is None else float(v)  # type: ignore[arg-type]


def reference(
    rs: list[Reading], tag: str, start: int, end: int, width: int, good_only: bool = False
) -> tuple[bool, list[Q.Bucket]]:
    """The contract, by brute force: raw readings when they fit in the buckets, else buckets."""
    mine = sorted(
        (r for r in rs if r.tag == tag and start <= r.ts_us < end and (not good_only or r.quality == Quality.GOOD)),
        key=lambda r: r.ts_us,
    )
    nb = (end - 1) // width - start // width + 1
    if len(mine) <= nb:
        return True, [Q.Bucket(_ts(r.ts_us), 1, int(r.quality == Quality.BAD), *([_num(r.value)] * 4)) for r in mine]
    groups: dict[int, list[Reading]] = {}
    for r in mine:
        groups.setdefault(r.ts_us // width, []).append(r)
    out = []
    for b, grp in sorted(groups.items()):
        vals = [v for v in (_num(r.value) for r in grp) if v is not None]
        out.append(
            Q.Bucket(
                _ts(b * width),
                len(grp),
                sum(r.quality == Quality.BAD for r in grp),
                min(vals) if vals else None,
                max(vals) if vals else None,
                statistics.fmean(vals) if vals else None,
                vals[-1] if vals else None,
            )
        )
    return False, out


def _check(got: Q.Series, raw: bool, want: list[Q.Bucket]) -> None:
    assert got.raw is raw, got.tag
    buckets = got.buckets()
    assert len(buckets) == len(want), got.tag
    for g, w in zip(buckets, want, strict=True):
        assert (g.start, g.count, g.bad_count, g.min, g.max, g.last) == (
            w.start,
            w.count,
            w.bad_count,
            w.min,
            w.max,
            w.last,
        ), got.tag
        assert g.mean == pytest.approx(w.mean), got.tag


CASES = [
    # (offset from day+1h in s, length s, width us): 1 s over 1 Hz (raw for 1 Hz tags, buckets
    # for j0 at 2 Hz), 60 s (all downsampled, p0 raw), 0.25 s, and an unaligned window over f1's gap.
    (100, 1800, SEC),
    (0, 3000, 60 * SEC),
    (50, 120, SEC // 4),
    (777, 1111, 7 * SEC),
]


@pytest.mark.integration
@pytest.mark.parametrize("good_only", [False, True])
@pytest.mark.parametrize(("offset", "length", "width"), CASES)
def test_history_many_equals_reference(loaded: Loaded, offset: int, length: int, width: int, good_only: bool) -> None:
    start = loaded.day + HOUR + offset * SEC + 123_457  # not on a bucket edge
    end = start + length * SEC
    with psycopg.connect(loaded.dsn) as conn:
        got = Q.history_many(conn, "steel", ALL, _ts(start), _ts(end), timedelta(microseconds=width), good_only)
    assert set(got) == set(ALL)
    kinds = set()
    for tag in ALL:
        raw, want = reference(loaded.rs, tag, start, end, width, good_only)
        _check(got[tag], raw, want)
        kinds.add(raw)
        assert len(got[tag]) <= Q.bucket_count(_ts(start), _ts(end), timedelta(microseconds=width))
    if width == SEC:
        assert kinds == {True, False}  # one call mixing both paths


@pytest.mark.integration
def test_history_one_tag_unknown_tags_empty_ranges(loaded: Loaded) -> None:
    start, end = loaded.day + HOUR + 10 * SEC, loaded.day + HOUR + 700 * SEC
    with psycopg.connect(loaded.dsn) as conn:
        one = Q.history(conn, "steel", "f2", _ts(start), _ts(end), timedelta(minutes=1))
        many = Q.history_many(conn, "steel", ["f2", "nope", "f2"], _ts(start), _ts(end), timedelta(minutes=1))
        other_plant = Q.history_many(conn, "chem", ["f2"], _ts(start), _ts(end), timedelta(minutes=1))
        before = Q.history_many(
            conn, "steel", ["f0", "p0"], _ts(loaded.day - HOUR), _ts(loaded.day), timedelta(seconds=1)
        )
        empty = Q.history_many(conn, "steel", ["f0"], _ts(end), _ts(start), timedelta(seconds=1))
        unknown = Q.history(conn, "steel", "nope", _ts(start), _ts(end), timedelta(minutes=1))
        with pytest.raises(ValueError):
            Q.history_many(conn, "steel", ["f0"], _ts(start), _ts(end), timedelta(0))
    assert one == reference(loaded.rs, "f2", start, end, 60 * SEC)[1] and len(one) == 12
    assert list(many) == ["f2"] and many["f2"].buckets() == one
    assert other_plant == {} and empty == {} and unknown == []
    assert {t: len(s) for t, s in before.items()} == {"f0": 0, "p0": 0}


@pytest.mark.integration
def test_history_many_plan_uses_primary_key_and_prunes_partitions(loaded: Loaded) -> None:
    with psycopg.connect(loaded.dsn) as conn:
        partitions = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'readings'::regclass"
            )
        }
        plans = {}
        flavor = Q.flavor(conn)
        # 10 min of 4 of 9 tags: a selective range, as a chart on a real plant's table is.
        end = loaded.day + HOUR + 600 * SEC
        for label, start, width in (("raw", loaded.day + HOUR, SEC), ("agg", loaded.day + HOUR, 60 * SEC)):
            params = {
                "plant": "steel",
                "tags": FAST,  # 1 Hz: raw at 1 s, downsampled at 60 s
                "start": _ts(start),
                "end": _ts(end),
                "width": timedelta(microseconds=width),
                "nb": Q.bucket_count(_ts(start), _ts(end), timedelta(microseconds=width)),
                "good_only": False,
            }
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + Q.history_many_sql(flavor), params)
            plans[label] = "\n".join(str(r[0]) for r in rows)
    day = _ts(loaded.day).strftime("%Y%m%d")
    if flavor == "timescale":
        # Hypertable: the planner excludes every chunk but the one holding the range and reads it
        # through an index (primary key, or the time index with the tag filter; its choice by cost).
        for label, plan in plans.items():
            chunks = set(re.findall(r" on (_hyper_\d+_\d+_chunk)\b", plan))
            assert len(chunks) == 1 and len(partitions) >= 1, (label, plan)
            assert "Seq Scan on _hyper" not in plan and "Index Scan" in plan, (label, plan)
        assert re.search(r"tag_id = ANY \(\$\d+\)", plans["raw"]), plans["raw"]
    else:
        assert f"readings_p{day}" in partitions and len(partitions) >= 4  # D-2, D-1, D, default at least
        for label, plan in plans.items():
            scanned = {t for t in re.findall(r" on (readings\w*)", plan) if not t.endswith("_pkey")}
            assert scanned == {f"readings_p{day}"}, (label, plan)  # pruned to the one day
            assert f"readings_p{day}_pkey" in plan and "Seq Scan on readings" not in plan, (label, plan)
        # The raw tags are read by one scan of the key for all of them (each heap page read once).
        assert re.search(r"Index Cond: \(\(tag_id = ANY \(\$\d+\)\)", plans["raw"]), plans["raw"]
    # Each path ran its own branch only (the other's scan is skipped by a one-time filter).
    assert re.search(r"GroupAggregate .*never executed", plans["raw"]), plans["raw"]
    assert re.search(r"GroupAggregate .*loops=4\)", plans["agg"]), plans["agg"]


def test_timescale_sql_mirrors_plain_and_parses() -> None:
    pglast = pytest.importorskip("pglast", reason="pglast parses SQL without a server")
    plain, ts = Q.history_many_sql("plain"), Q.history_many_sql("timescale")
    assert "date_bin(" in plain and "time_bucket(" not in plain
    assert "time_bucket(%(width)s, r.time, origin => timestamptz '1970-01-01 00:00:00+00')" in ts
    assert "last(v, r.time)" in ts and "date_bin(" not in ts
    # Identical apart from the bucket and last expressions.
    norm = re.compile(
        r"date_bin\(%\(width\)s, r\.time, timestamptz '[^']*'\)"
        r"|time_bucket\(%\(width\)s, r\.time, origin => timestamptz '[^']*'\)"
        r"|last\(v, r\.time\)|\(array_agg\(v ORDER BY r\.time DESC\)"
    )
    assert norm.sub("X", plain).replace(")[1]", "") == norm.sub("X", ts)
    for sql in (plain, ts):
        assert pglast.parse_sql(re.sub(r"%\((\w+)\)s", "NULL", sql))


@pytest.fixture
def ts_db(fresh_db: str) -> str:
    return timescale_db(fresh_db)


@pytest.mark.integration
@pytest.mark.timescaledb
def test_history_many_on_timescaledb(ts_db: str) -> None:
    day = (int(datetime.now(tz=UTC).timestamp()) // 86400 - 1) * 86400 * SEC
    rs = _data(day)
    sink = PostgresSink(ts_db)
    sink.connect()
    sink.write(reading_records(rs, per=2000))
    assert sink.flush() == []
    sink.close()
    for offset, length, width in CASES:
        start = day + HOUR + offset * SEC + 123_457
        end = start + length * SEC
        with psycopg.connect(ts_db) as conn:
            got = Q.history_many(conn, "steel", ALL, _ts(start), _ts(end), timedelta(microseconds=width))
        for tag in ALL:
            raw, want = reference(rs, tag, start, end, width)
            _check(got[tag], raw, want)
