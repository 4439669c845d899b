"""Queries process engineers and the live monitor need; identical results on both storage paths.

All functions take an open psycopg connection and return plain dataclasses. Times are UTC
``datetime`` s; values come back exact in their own type (float, int, bool or str).

* ``latest_values``: the newest reading of every tag below an equipment path (one index probe
  per tag: ``readings`` primary key (tag_id, time) scanned backwards).
* ``history``: one tag over a time range, downsampled on the server into fixed buckets
  (``time_bucket`` on TimescaleDB, ``date_bin`` on plain PostgreSQL), each bucket with count,
  min, max, mean and last (numeric tags; bool counts as 0/1).
* ``lot_timeline``: which lots were on which equipment (subtree) in a time window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

Value = float | int | bool | str | None

_SUBTREE = "e.plant = %(plant)s AND (e.path = %(path)s OR e.path LIKE %(prefix)s)"


def _subtree_args(plant: str, path: str) -> dict[str, Any]:
    path = path.strip("/")
    escaped = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return {"plant": plant, "path": path, "prefix": escaped + "/%"}


def flavor(conn: psycopg.Connection[Any]) -> str:
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
    """Buckets of ``bucket`` width (aligned to the Unix epoch) over [start, end); empty buckets omitted."""
    if bucket <= timedelta(0):
        raise ValueError("bucket must be positive")
    rows = conn.execute(
        history_sql(flavor(conn)),
        {"plant": plant, "tag": tag, "start": start, "end": end, "bucket": bucket, "good_only": good_only},
    ).fetchall()
    return [Bucket(*r) for r in rows]


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
