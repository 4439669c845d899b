"""Queries process engineers and the live monitor need; identical results on both storage paths.

All functions take an open psycopg connection and return plain dataclasses. Times are UTC
``datetime`` s; values come back exact in their own type (float, int, bool or str).

* ``latest_values``: the newest reading of every tag below an equipment path (one index probe
  per tag: ``readings`` primary key (tag_id, time) scanned backwards).
* ``history_many``: many tags over a time range in one round trip, as columnar numpy series:
  the raw readings when they fit (no more rows than buckets), else downsampled on the server
  into fixed buckets (``time_bucket`` on TimescaleDB, ``date_bin`` on plain PostgreSQL), each
  bucket with count, bad count, min, max, mean and last (numeric tags; bool counts as 0/1).
* ``history``: the same for one tag, as a list of ``Bucket`` (the monitor's contract).
* ``lot_timeline``: which lots were on which equipment (subtree) in a time window.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import pq
from psycopg.adapt import Buffer, Loader

Value = float | int | bool | str | None

_SUBTREE = "e.plant = %(plant)s AND (e.path = %(path)s OR e.path LIKE %(prefix)s)"


def _subtree_args(plant: str, path: str) -> dict[str, Any]:
    path = path.strip("/")
    escaped = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return {"plant": plant, "path": path, "prefix": escaped + "/%"}


def flavor(conn: psycopg.Connection[Any]) -> str:
    """The storage flavor ('plain' or 'timescale') recorded by the first migration.
    ``RuntimeError`` if the database has no plantstream schema."""
    row = conn.execute("SELECT flavor FROM schema_migrations ORDER BY version LIMIT 1").fetchone()
    if row is None:
        raise RuntimeError("the database has no plantstream schema: run `plantstream db migrate`")
    return str(row[0])


LATEST_SQL = f"""SELECT t.tag, e.path, t.unit, r.time, r.v_float, r.v_int, r.v_bool, r.v_text, r.quality, l.lot
            FROM equipment e
            JOIN tags t ON t.equipment_id = e.id
            CROSS JOIN LATERAL (
                SELECT * FROM readings r
                WHERE r.tag_id = t.id AND (%(since)s::timestamptz IS NULL OR r.time >= %(since)s::timestamptz)
                ORDER BY r.time DESC LIMIT 1) r
            LEFT JOIN lots l ON l.id = r.lot_id
            WHERE {_SUBTREE}
            ORDER BY e.path, t.tag"""

TIMELINE_SQL = f"""SELECT l.lot, l.kind, l.spec_id, e.path, s.start_time, s.end_time
            FROM equipment e
            JOIN process_segments s ON s.equipment_id = e.id
            JOIN lots l ON l.id = s.lot_id
            WHERE {_SUBTREE}
              AND s.start_time < %(end)s AND (s.end_time IS NULL OR s.end_time > %(start)s)
            ORDER BY s.start_time, e.path, l.lot"""


def history_sql(flavor: str) -> str:
    """The downsampling query for a storage flavor (parameters: plant, tag, start, end, bucket, good_only)."""
    if flavor == "timescale":
        bucket_expr = "time_bucket(%(bucket)s, r.time, origin => timestamptz '1970-01-01 00:00:00+00')"
        last_expr = "last(v, r.time) FILTER (WHERE v IS NOT NULL)"
    else:
        bucket_expr = "date_bin(%(bucket)s, r.time, timestamptz '1970-01-01 00:00:00+00')"
        last_expr = "(array_agg(v ORDER BY r.time DESC) FILTER (WHERE v IS NOT NULL))[1]"
    return f"""SELECT {bucket_expr} AS b, count(*), count(*) FILTER (WHERE r.quality = 2),
                   min(v), max(v), avg(v), {last_expr}
            FROM readings r
            CROSS JOIN LATERAL (SELECT COALESCE(r.v_float, r.v_int::double precision,
                                               r.v_bool::int::double precision) AS v) x
            WHERE r.tag_id = (SELECT id FROM tags WHERE plant = %(plant)s AND tag = %(tag)s)
              AND r.time >= %(start)s AND r.time < %(end)s
              AND (NOT %(good_only)s OR r.quality = 0)
            GROUP BY b ORDER BY b"""


@dataclass(frozen=True, slots=True)
class LatestValue:
    tag: str
    equipment: str
    unit: str
    time: datetime
    value: Value
    quality: int
    lot: str | None


def latest_values(
    conn: psycopg.Connection[Any], plant: str, equipment: str, since: datetime | None = None
) -> list[LatestValue]:
    """Latest reading per tag of the equipment subtree (tags without readings are left out).
    ``since`` bounds how far back to look, which lets the planner skip old partitions/chunks."""
    args = _subtree_args(plant, equipment) | {"since": since}
    rows = conn.execute(LATEST_SQL, args).fetchall()
    return [
        LatestValue(tag, path, unit, ts, _value(vf, vi, vb, vt), q, lot)
        for tag, path, unit, ts, vf, vi, vb, vt, q, lot in rows
    ]


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    count: int
    bad_count: int
    min: float | None
    max: float | None
    mean: float | None
    last: float | None


def history(
    conn: psycopg.Connection[Any],
    plant: str,
    tag: str,
    start: datetime,
    end: datetime,
    bucket: timedelta,
    good_only: bool = False,
) -> list[Bucket]:
    """One tag over [start, end) as ``history_many`` returns it (raw readings when they fit,
    else ``bucket``-wide buckets aligned to the Unix epoch, empty buckets omitted), as a list.
    An unknown tag gives an empty list. ``ValueError`` if ``bucket`` is not positive."""
    series = history_many(conn, plant, [tag], start, end, bucket, good_only).get(tag)
    return [] if series is None else series.buckets()


# --- many tags, one round trip ----------------------------------------------------------------

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z: binary timestamptz counts from here
_UNIX = datetime(1970, 1, 1, tzinfo=UTC)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Series:
    """One tag's history as columns (numpy arrays of equal length, ordered by time).

    ``raw``: the points are the readings themselves (``time_us`` = reading time, count 1,
    min = max = mean = last = the value); else they are buckets (``time_us`` = bucket start).
    Times are integer microseconds since the Unix epoch. Float columns hold NaN where a point
    has no numeric value (text readings; a NaN reading is NaN too). Arrays may share memory
    (raw: min, max, mean and last are one array): copy before modifying."""

    tag: str
    raw: bool
    time_us: I64
    count: I64
    bad_count: I64
    min: F64
    max: F64
    mean: F64
    last: F64

    def __len__(self) -> int:
        return int(self.time_us.size)

    def buckets(self) -> list[Bucket]:
        """As ``Bucket`` objects (NaN -> None), for callers that want rows (one tag, a chart)."""
        cols = [c.tolist() for c in (self.count, self.bad_count, self.min, self.max, self.mean, self.last)]
        return [
            Bucket(_UNIX + timedelta(microseconds=t), n, b, _num(lo), _num(hi), _num(m), _num(la))
            for t, n, b, lo, hi, m, la in zip(self.time_us.tolist(), *cols, strict=True)
        ]


def bucket_count(start: datetime, end: datetime, width: timedelta) -> int:
    """How many epoch-aligned buckets of ``width`` overlap [start, end) (0 if the range is empty)."""
    w, s, e = _us(width), _us(start - _UNIX), _us(end - _UNIX)
    if w <= 0:
        raise ValueError("bucket width must be positive")
    return 0 if e <= s else (e - 1) // w - s // w + 1


def history_many_sql(flavor: str) -> str:
    """The many-tag history query for a storage flavor. Parameters: plant, tags (text[]), start,
    end, width (interval), nb (bucket count), good_only. One row per known tag: ordinality i,
    raw flag, then arrays (time, count, quality/bad, value/min, max, mean, last).

    Per tag: count the rows in range, stopping at nb + 1 (index-only on the primary key). The
    tags whose rows fit in the buckets are read together: ONE bitmap scan of the primary key
    (tag_id = ANY, time range) with partition/chunk pruning, so each heap page is read once even
    though live data is stored time-major (per-tag scans re-read the same pages once per tag:
    ~25x the buffer accesses for 50 tags at 1 Hz). Their arrays come in heap order, not
    necessarily time order (the caller sorts). The other tags are aggregated per bucket, one
    primary-key range scan each. No ORDER BY over the tag rows: sorting megabytes of arrays
    spills to disk, and the caller maps rows by i."""
    if flavor == "timescale":
        bucket_expr = "time_bucket(%(width)s, r.time, origin => timestamptz '1970-01-01 00:00:00+00')"
        last_expr = "last(v, r.time) FILTER (WHERE v IS NOT NULL)"
    else:
        bucket_expr = "date_bin(%(width)s, r.time, timestamptz '1970-01-01 00:00:00+00')"
        last_expr = "(array_agg(v ORDER BY r.time DESC) FILTER (WHERE v IS NOT NULL))[1]"
    value = "COALESCE(r.v_float, r.v_int::double precision, r.v_bool::int::double precision)"
    in_range = "r.time >= %(start)s AND r.time < %(end)s AND (NOT %(good_only)s OR r.quality = 0)"
    nan = "'NaN'::double precision"
    return f"""WITH q AS MATERIALIZED (
                SELECT t.id, k.i::int AS i,
                       (SELECT count(*) FROM (SELECT 1 FROM readings r
                                              WHERE r.tag_id = t.id AND {in_range}
                                              LIMIT %(nb)s::bigint + 1) c) <= %(nb)s::bigint AS raw
                FROM unnest(%(tags)s::text[]) WITH ORDINALITY AS k(tag, i)
                JOIN tags t ON t.plant = %(plant)s AND t.tag = k.tag),
            raw AS (
                SELECT r.tag_id, array_agg(r.time) AS t, array_agg(r.quality::bigint) AS qb,
                       array_agg(COALESCE({value}, {nan})) AS v
                FROM readings r
                WHERE r.tag_id = ANY (ARRAY(SELECT id FROM q WHERE raw)) AND {in_range}
                GROUP BY r.tag_id)
            SELECT q.i, true, raw.t, NULL::bigint[], raw.qb, raw.v, NULL::float8[], NULL::float8[], NULL::float8[]
            FROM q LEFT JOIN raw ON raw.tag_id = q.id
            WHERE q.raw
            UNION ALL
            SELECT q.i, false, s.*
            FROM q CROSS JOIN LATERAL (
                SELECT array_agg(g.b), array_agg(g.cnt), array_agg(g.bad), array_agg(g.mn), array_agg(g.mx),
                       array_agg(g.mean), array_agg(g.last)
                FROM (SELECT {bucket_expr} AS b, count(*) AS cnt, count(*) FILTER (WHERE r.quality = 2) AS bad,
                             COALESCE(min(v), {nan}) AS mn, COALESCE(max(v), {nan}) AS mx,
                             COALESCE(avg(v), {nan}) AS mean, COALESCE({last_expr}, {nan}) AS last
                      FROM readings r CROSS JOIN LATERAL (SELECT {value} AS v) x
                      WHERE r.tag_id = q.id AND {in_range}
                      GROUP BY b ORDER BY b) g) s
            WHERE NOT q.raw"""


def history_many(
    conn: psycopg.Connection[Any],
    plant: str,
    tags: Sequence[str],
    start: datetime,
    end: datetime,
    width: timedelta,
    good_only: bool = False,
) -> dict[str, Series]:
    """History of many tags over [start, end) in one query and one round trip.

    Per tag: if it has no more readings in the range than there are ``width`` buckets
    (epoch-aligned, overlapping the range), the readings themselves (``Series.raw``): at a width
    not coarser than the sampling interval, aggregating would only cost time. Otherwise buckets
    with count, bad count (quality bad), min, max, mean, last (empty buckets omitted).
    ``good_only``: only readings of good quality count. Tags unknown in ``plant`` are left out of
    the result; known tags without readings give an empty series. ``ValueError`` if ``width``
    is not positive; database errors propagate (psycopg exceptions).

    Results travel binary, one row per tag, arrays decoded straight into numpy; raw points are
    put in time order here (the server returns them in storage order to avoid a sort)."""
    nb = bucket_count(start, end, width)
    if nb == 0 or not tags:
        return {}
    names = list(dict.fromkeys(tags))
    params = {
        "plant": plant,
        "tags": names,
        "start": start,
        "end": end,
        "width": width,
        "nb": nb,
        "good_only": good_only,
    }
    with conn.cursor(binary=True) as cur:
        for oid, loader in _ARRAY_LOADERS.items():
            cur.adapters.register_loader(oid, loader)
        cur.execute(history_many_sql(_cached_flavor(conn)), params)
        rows = cur.fetchall()
    out: dict[str, Series] = {}
    for i, raw, t, cnt, qb, v, mx, mean, last in rows:
        tag = names[i - 1]
        t = _EMPTY_I if t is None else t
        if raw:
            v = _EMPTY_F if v is None else v
            q = _EMPTY_I if qb is None else qb
            if t.size > 1 and not bool(np.all(t[1:] > t[:-1])):  # heap order; mostly sorted already
                order = np.argsort(t, kind="stable")
                t, v, q = t[order], v[order], q[order]
            ones = np.ones(t.size, np.int64)
            out[tag] = Series(tag, True, t, ones, (q == 2).astype(np.int64), v, v, v, v)
        else:
            out[tag] = Series(tag, False, t, cnt, qb, v, mx, mean, last)
    return out


class _NumpyArrayLoader(Loader):
    """Binary PostgreSQL array of a fixed-width type -> 1-D numpy array, without Python objects
    per element: (length, value) pairs read as one strided big-endian view. NULL elements
    (never sent by ``history_many_sql``, which coalesces to NaN) fall back to a slow path."""

    format = pq.Format.BINARY
    dtype: np.dtype[Any] = np.dtype(">f8")
    native: np.dtype[Any] = np.dtype(np.float64)
    shift = 0

    def load(self, data: Buffer) -> Any:
        ndim, hasnull, _ = struct.unpack_from(">iiI", data)
        if ndim == 0:
            return np.empty(0, self.native)
        if ndim != 1:
            raise psycopg.DataError(f"expected a 1-D array, got {ndim} dimensions")
        (n,) = struct.unpack_from(">i", data, 12)
        width = self.dtype.itemsize
        if hasnull:
            return self._with_nulls(bytes(data), n, width)
        pairs = np.frombuffer(data, np.dtype([("len", ">i4"), ("v", self.dtype)]), count=n, offset=20)
        out = pairs["v"].astype(self.native)
        if self.shift:
            out += self.shift
        return out

    def _with_nulls(self, data: bytes, n: int, width: int) -> Any:
        out = np.empty(n, self.native)
        off = 20
        for k in range(n):
            (ln,) = struct.unpack_from(">i", data, off)
            off += 4
            if ln < 0:
                out[k] = np.nan  # only float columns can be NULL here
            else:
                out[k] = np.frombuffer(data, self.dtype, count=1, offset=off)[0] + self.shift
                off += width
        return out


class _F8Loader(_NumpyArrayLoader):
    pass


class _I8Loader(_NumpyArrayLoader):
    dtype = np.dtype(">i8")
    native = np.dtype(np.int64)


class _TimestamptzLoader(_I8Loader):
    shift = PG_EPOCH_US  # binary timestamptz: microseconds since 2000-01-01 UTC


# Array type oids (pg_type): float8[], int8[], timestamptz[].
_ARRAY_LOADERS: dict[int, type[Loader]] = {1022: _F8Loader, 1016: _I8Loader, 1185: _TimestamptzLoader}
_EMPTY_I: I64 = np.empty(0, np.int64)
_EMPTY_F: F64 = np.empty(0, np.float64)


# The flavor never changes for a database; asking once per connection saves a round trip per query.
_FLAVORS: weakref.WeakKeyDictionary[psycopg.Connection[Any], str] = weakref.WeakKeyDictionary()


def _cached_flavor(conn: psycopg.Connection[Any]) -> str:
    f = _FLAVORS.get(conn)
    if f is None:
        f = _FLAVORS[conn] = flavor(conn)
    return f


def _us(d: timedelta) -> int:
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _num(x: float) -> float | None:
    return None if x != x else x  # NaN -> None


@dataclass(frozen=True, slots=True)
class Segment:
    lot: str
    lot_kind: str
    spec_id: str | None
    equipment: str
    start: datetime
    end: datetime | None


def lot_timeline(
    conn: psycopg.Connection[Any], plant: str, equipment: str, start: datetime, end: datetime
) -> list[Segment]:
    """Process segments on the equipment subtree overlapping [start, end), by start time."""
    args = _subtree_args(plant, equipment) | {"start": start, "end": end}
    rows = conn.execute(TIMELINE_SQL, args).fetchall()
    return [Segment(*r) for r in rows]


def explain(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> str:
    """EXPLAIN text of a query (for tests and for operators checking index use)."""
    rows = conn.execute("EXPLAIN " + query, params).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def _value(vf: float | None, vi: int | None, vb: bool | None, vt: str | None) -> Value:
    for v in (vf, vi, vb, vt):
        if v is not None:
            return v
    return None
