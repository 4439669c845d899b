"""The PostgreSQL/TimescaleDB sink core: decoded records in, one transaction per flush out.

No Kafka here (the generic runner ``sinks/runner.py`` owns the consumer), so the whole write path
is testable against a real database alone. Implements ``plantstream.sinks.base.Sink``; read its
failure contract first. This module is the flush, bisection and the readings/aggregates COPY;
by concern beside it: ``ids.py`` (equipment, tag and lot registration), ``context.py`` (context
events, deviations), ``partitions.py`` (partitions ahead, maintenance), ``copybin.py`` (binary COPY).

Write path per flush:

1. Partitions (plain path) for the time range of the batch are created in a short transaction
   of their own, so the data transaction never holds the parent table's exclusive lock.
2. One transaction: tag metadata upserts, context (lots, genealogy, segments, lab results),
   readings (binary COPY into a temp staging table, then ``INSERT ... SELECT ... ON CONFLICT
   (tag_id, time) DO NOTHING``), aggregates (same, ``ON CONFLICT DO UPDATE`` only where the row
   differs), deviations (upsert by id). Unknown equipment, tags and lots are registered on first
   sight inside the same transaction.
3. A record the database rejects (type, range, constraint) is isolated by bisection under
   savepoints: the batch is halved until the failing record (for readings: the failing row) is
   alone; it becomes a dead letter and everything else is written in the same transaction.

Replaying the same records leaves the tables unchanged: readings keep the first row per
(tag_id, time), aggregates are overwritten only with different values (a deterministic
re-emission is identical), context and registrations are keyed upserts.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import psycopg
from psycopg import sql

from plantstream.producers import codec
from plantstream.producers.codec import ReadingBatch
from plantstream.sinks.base import (
    DeadLetter,
    FlushStats,
    Record,
    SinkUnavailable,
)
from plantstream.sinks.timescaledb.context import write_context, write_deviation
from plantstream.sinks.timescaledb.copybin import (
    DIRECT_COLUMNS,
    KIND,
    STAGING_COLUMNS,
    ReadingColumns,
    encode_parts,
)
from plantstream.sinks.timescaledb.ids import RecordError, Registry
from plantstream.sinks.timescaledb.partitions import Partitions
from plantstream.sinks.timescaledb.timesql import TS

log = logging.getLogger(__name__)

KINDS = ("tags", "context", "readings", "aggregates", "deviations")  # write order: metadata first


# Errors that are about one record's content: isolate and dead-letter it. Everything else that
# psycopg raises (OperationalError: connection, deadlock, server shutdown) is retried whole.
RECORD_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,  # e.g. an index row too large (a huge tag name)
    ValueError,
    TypeError,
    OverflowError,
    struct.error,  # a timestamp beyond int64 microseconds
)


# --- units of work: what bisection splits -----------------------------------------------------


@dataclass(slots=True)
class _Unit:
    record: Record
    lo: int = 0  # row slice of a readings batch / aggregate list
    hi: int = 0

    @property
    def kind(self) -> str:
        return str(self.record.kind)

    def split(self) -> list[_Unit]:
        if self.kind in ("readings", "aggregates") and self.hi - self.lo > 1:
            mid = (self.lo + self.hi) // 2
            return [_Unit(self.record, self.lo, mid), _Unit(self.record, mid, self.hi)]
        return []

    def whole(self) -> bool:
        return self.kind not in ("readings", "aggregates") or (self.lo == 0 and self.hi == _rows(self.record))

    def dead_letter(self, reason: str) -> DeadLetter:
        value = self.record.value
        if not self.whole():
            # Only the rejected rows go to the dead-letter topic, re-encoded, so a replay of the
            # dead letter cannot duplicate the rows that were written.
            if self.kind == "readings":
                value = codec.encode_readings(_slice_batch(self.record.payload, self.lo, self.hi))
            else:
                value = codec.encode_aggregates(self.record.payload[self.lo : self.hi])
        return DeadLetter(value, self.record.key, reason, self.record.origin)


def _rows(rec: Record) -> int:
    if rec.kind == "readings":
        return len(rec.payload)
    if rec.kind == "aggregates":
        return len(rec.payload)
    return 1


def _copy_columns(cur: psycopg.Cursor[Any], statement: str, cols: ReadingColumns, time_origin_us: int) -> None:
    """Binary COPY of ``cols`` in parts: the server parses and indexes one part while the next is encoded."""
    with cur.copy(statement) as cp:
        for part in encode_parts(cols, time_origin_us, _COPY_PART_ROWS):
            cp.write(part)


def _slice_batch(b: ReadingBatch, lo: int, hi: int) -> ReadingBatch:
    return b.slice(lo, hi)  # every column of the contract (codec.ReadingBatch.slice)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        msg = (diag.message_primary or str(exc)).strip()
        parts = [f"rejected by database: {msg}"]
        if diag.sqlstate:
            parts.append(f"sqlstate {diag.sqlstate}")
        if diag.constraint_name:
            parts.append(f"constraint {diag.constraint_name}")
        if diag.column_name:
            parts.append(f"column {diag.column_name}")
        return "; ".join(parts)[:900]
    return f"rejected by sink: {type(exc).__name__}: {exc}"[:900]


# --- the sink ---------------------------------------------------------------------------------

_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS ps_stage_readings (
    tag_id integer, ts_us bigint, v_float double precision, v_int bigint, v_bool boolean, v_text text,
    quality smallint, status_code bigint, lot_id integer, server_ts_us bigint, seq bigint
);
CREATE TEMP TABLE IF NOT EXISTS ps_stage_aggregates (
    ord integer, tag_id integer, start_us bigint, count integer, bad_count integer,
    min double precision, max double precision, mean double precision, last double precision,
    stddev double precision, twa double precision, lot_id integer
);
"""
_AGG_TYPES = [
    "int4",
    "int4",
    "int8",
    "int4",
    "int4",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "int4",
]

# The readings columns and their order: derived from the reading contract by copybin (COPY_COLUMNS).
_COPY_READINGS = f"COPY readings ({', '.join(DIRECT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_COPY_STAGE_READINGS = f"COPY ps_stage_readings ({', '.join(STAGING_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# After a conflict, flushes on the staging path before trying direct COPY again: 1 after an
# isolated duplicate (a late re-send), doubling while conflicts repeat (a replay), at most 20.
_FAST_PROBE_MAX = 20
_COPY_PART_ROWS = 5_000  # rows encoded per write of a readings COPY (direct or staging)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds: PostgreSQL's binary time origin


_INSERT_READINGS = f"""
INSERT INTO readings (time, tag_id, v_float, v_int, v_bool, v_text, quality, status_code, lot_id, server_time, seq)
SELECT {TS.format("ts_us")}, tag_id, v_float, v_int, v_bool, v_text, quality, status_code, lot_id,
       CASE WHEN server_ts_us IS NOT NULL THEN {TS.format("server_ts_us")} END, seq
FROM ps_stage_readings
ON CONFLICT (tag_id, time) DO NOTHING
"""

# Rows of the staging table whose key was already stored with another value or quality: kept in
# reading_conflicts (migration 0009), never dropped silently. First value wins in readings.
_RECORD_CONFLICTS = f"""
INSERT INTO reading_conflicts (tag_id, time, incoming_seq, stored, incoming)
SELECT s.tag_id, r.time, s.seq,
       jsonb_build_object('value', COALESCE(to_jsonb(r.v_float), to_jsonb(r.v_int), to_jsonb(r.v_bool), to_jsonb(r.v_text)),
                          'quality', r.quality, 'seq', r.seq),
       jsonb_build_object('value', COALESCE(to_jsonb(s.v_float), to_jsonb(s.v_int), to_jsonb(s.v_bool), to_jsonb(s.v_text)),
                          'quality', s.quality, 'seq', s.seq)
FROM ps_stage_readings s
JOIN readings r ON r.tag_id = s.tag_id AND r.time = {TS.format("s.ts_us")}
WHERE r.seq IS DISTINCT FROM s.seq
  AND (r.v_float, r.v_int, r.v_bool, r.v_text, r.quality) IS DISTINCT FROM (s.v_float, s.v_int, s.v_bool, s.v_text, s.quality)
ON CONFLICT (tag_id, time, incoming_seq) DO NOTHING
"""

_INSERT_AGGREGATES = f"""
INSERT INTO {{table}} AS a (tag_id, start, count, bad_count, min, max, mean, last, stddev, twa, lot_id)
SELECT DISTINCT ON (tag_id, start_us)
       tag_id, {TS.format("start_us")}, count, bad_count, min, max, mean, last, stddev, twa, lot_id
FROM ps_stage_aggregates
ORDER BY tag_id, start_us, ord DESC
ON CONFLICT (tag_id, start) DO UPDATE SET
    count = EXCLUDED.count, bad_count = EXCLUDED.bad_count, min = EXCLUDED.min, max = EXCLUDED.max,
    mean = EXCLUDED.mean, last = EXCLUDED.last, stddev = EXCLUDED.stddev, twa = EXCLUDED.twa, lot_id = EXCLUDED.lot_id
WHERE (a.count, a.bad_count, a.min, a.max, a.mean, a.last, a.stddev, a.twa, a.lot_id)
      IS DISTINCT FROM (EXCLUDED.count, EXCLUDED.bad_count, EXCLUDED.min, EXCLUDED.max, EXCLUDED.mean,
                        EXCLUDED.last, EXCLUDED.stddev, EXCLUDED.twa, EXCLUDED.lot_id)
"""


class PostgresSink:
    """Sink core for PostgreSQL (plain or TimescaleDB). Not thread-safe: one per runner."""

    def __init__(self, dsn: str, connect_timeout: float = 5.0, application_name: str = "plantstream-sink") -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._app = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._staged: list[Record] = []
        self._dead: list[DeadLetter] = []
        self._ids = Registry()
        self._partitions = Partitions()
        self._fast_probe_in = 0
        self._fast_probe_backoff = 1
        self.direct_conflicts = 0  # direct COPYs undone by a key already present
        self.value_conflicts = 0  # readings not stored because their key held another value (kept aside)
        self._flush_conflicts = 0
        self.last = FlushStats()

    # -- Sink protocol --------------------------------------------------------------------------

    def connect(self) -> None:
        self.close_connection()
        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout)),
                application_name=self._app,
                # A dead peer (cable pulled, proxy stopped) is noticed in seconds, not hours.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
            conn.execute(_STAGE_DDL)
            self._partitions.load_retention(conn)
        except psycopg.OperationalError as exc:
            raise SinkUnavailable(f"database unreachable: {_first_line(exc)}") from exc
        except psycopg.errors.UndefinedTable as exc:
            raise SinkUnavailable("the database has no plantstream schema: run `plantstream db migrate`") from exc
        self._conn = conn

    def write(self, batch: Sequence[Record | DeadLetter]) -> None:
        for rec in batch:
            if isinstance(rec, DeadLetter):
                self._dead.append(rec)
            elif rec.kind not in KINDS:
                raise ValueError(f"unknown record kind {rec.kind!r}")
            else:
                self._staged.append(rec)

    def flush(self) -> list[DeadLetter]:
        t0 = time.perf_counter()
        if self._conn is None or self._conn.closed:
            self.connect()
        conn = self._conn
        assert conn is not None
        order = {k: i for i, k in enumerate(KINDS)}
        units = [_Unit(r, 0, _rows(r)) for r in sorted(self._staged, key=lambda r: order[r.kind])]
        units = [u for u in units if u.hi > u.lo]
        dead: list[DeadLetter] = []
        self._flush_conflicts = 0
        try:
            self._partitions.ensure(conn, units)
            self._ids.cache.push()
            with conn.transaction():
                self._attempt(conn, units, dead)
            self._ids.cache.pop(keep=True)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._ids.cache.discard_pending()
            self.close_connection()
            raise SinkUnavailable(f"database write failed: {_first_line(exc)}") from exc
        except BaseException:
            self._ids.cache.discard_pending()
            raise
        out = self._dead + dead
        stats = FlushStats(
            dead_letters=len(out), seconds=time.perf_counter() - t0, value_conflicts=self._flush_conflicts
        )
        self.value_conflicts += self._flush_conflicts
        for r in self._staged:
            if r.kind == "readings":
                stats.readings += len(r.payload)
            elif r.kind == "aggregates":
                stats.aggregates += len(r.payload)
            else:
                stats.other += 1
        self.last = stats
        self._staged, self._dead = [], []
        return out

    def close(self) -> None:
        self._staged, self._dead = [], []
        self.close_connection()

    def close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A broken connection may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()

    def maintain(self) -> None:
        """Create partitions ahead (today .. +3 days), let autovacuum at the day partitions that are
        no longer written (see migration 0006) and apply retention (plain path; no-op on TimescaleDB)."""
        conn = self._conn
        if conn is None:
            return
        try:
            Partitions.maintain(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close_connection()
            raise SinkUnavailable(f"maintenance failed: {_first_line(exc)}") from exc

    # -- bisection ------------------------------------------------------------------------------

    def _attempt(self, conn: psycopg.Connection[Any], units: list[_Unit], dead: list[DeadLetter]) -> None:
        self._ids.cache.push()
        conflicts_before = self._flush_conflicts
        try:
            with conn.transaction():  # a savepoint inside the flush transaction
                self._write_units(conn, units)
        except RECORD_ERRORS as exc:
            self._ids.cache.pop(keep=False)
            self._flush_conflicts = conflicts_before  # rolled back with the savepoint
            if len(units) == 1:
                parts = units[0].split()
                if not parts:
                    dl = units[0].dead_letter(_reason(exc))
                    log.warning("record rejected", extra={"kv": {"origin": str(dl.origin), "reason": dl.reason}})
                    dead.append(dl)
                    return
                units = parts
            mid = len(units) // 2
            self._attempt(conn, units[:mid], dead)
            self._attempt(conn, units[mid:], dead)
        else:
            self._ids.cache.pop(keep=True)

    def _write_units(self, conn: psycopg.Connection[Any], units: list[_Unit]) -> None:
        with conn.cursor() as cur:
            readings = [u for u in units if u.kind == "readings"]
            aggs = [u for u in units if u.kind == "aggregates"]
            for u in units:
                if u.kind == "tags":
                    self._ids.tag_meta(cur, u.record.payload)
                elif u.kind == "context":
                    write_context(cur, self._ids, u.record.payload)
            if readings:
                self._readings(cur, readings)
            if aggs:
                self._aggregates(cur, aggs)
            for u in units:
                if u.kind == "deviations":
                    write_deviation(cur, self._ids, u.record.payload)

    # -- time series ----------------------------------------------------------------------------

    def _readings(self, cur: psycopg.Cursor[Any], units: list[_Unit]) -> None:
        cols = ReadingColumns()
        c_tag, c_ts, c_val, c_q = cols.tag_id, cols.ts_us, cols.value, cols.quality
        c_sc, c_lot, c_srv, c_seq = cols.status_code, cols.lot_id, cols.server_ts_us, cols.seq
        for u in units:
            b: ReadingBatch = u.record.payload
            lo, hi = u.lo, u.hi
            tags, units_, vals = b.tag, b.unit, b.value
            ids: dict[str, int] = {}
            for i in range(lo, hi):
                t = tags[i]
                if t not in ids:
                    v = vals[i]
                    ids[t] = self._ids.tag_id(cur, b.plant, t, b.equipment, units_[i], _datatype(v))
            lots: dict[str | None, int | None] = {None: None}
            for lot in set(b.lot[lo:hi]):
                if lot is not None:
                    lots[lot] = self._ids.lot_id(cur, b.plant, lot)
            ts, q, sc, seq, sts, lot_col = b.ts_us, b.quality, b.status_code, b.seq, b.server_ts_us, b.lot
            c_tag.extend(map(ids.__getitem__, tags[lo:hi]))
            c_ts.extend(ts[lo:hi])
            c_q.extend(q[lo:hi])
            c_sc.extend(sc[lo:hi])
            c_seq.extend(seq[lo:hi])
            if set(map(type, vals[lo:hi])) == {float} and not any(sts[lo:hi]) and not any(lot_col[lo:hi]):
                # The common case (float values, no server time, no lot): columns extended at C speed.
                c_val.extend(vals[lo:hi])
                c_lot.extend(repeat(None, hi - lo))
                c_srv.extend(repeat(None, hi - lo))
                continue
            for i in range(lo, hi):
                v = vals[i]
                if type(v) not in KIND:
                    raise RecordError(f"value of {tags[i]!r} is {type(v).__name__}")
                c_val.append(v)
                c_lot.append(lots[lot_col[i]])
                srv = sts[i]
                c_srv.append(None if srv == ts[i] else srv)  # equal to the source time: not stored
        if self._fast_probe_in <= 0:
            # Optimistic path: COPY straight into readings (multi-insert, ~2x faster than
            # INSERT ... ON CONFLICT). Any key already present (a replay, a late duplicate) makes
            # it fail as a whole; it is then undone and the rows go through staging instead.
            try:
                with cur.connection.transaction():
                    _copy_columns(cur, _COPY_READINGS, cols, _PG_EPOCH_US)
                self._fast_probe_backoff = 1
                return
            except psycopg.errors.UniqueViolation:
                # A wasted COPY per probe while a replay lasts, so probe less often the longer it
                # does; a single late duplicate costs one flush on the slower path, not twenty.
                self._fast_probe_in = self._fast_probe_backoff
                self._fast_probe_backoff = min(_FAST_PROBE_MAX, self._fast_probe_backoff * 2)
                self.direct_conflicts += 1
        else:
            self._fast_probe_in -= 1
        _copy_columns(
            cur,
            _COPY_STAGE_READINGS,
            cols,
            0,  # bigint Unix microseconds in the staging table
        )
        cur.execute(_INSERT_READINGS)
        cur.execute(_RECORD_CONFLICTS)
        if cur.rowcount > 0:
            self._flush_conflicts += cur.rowcount  # counted once the flush commits
            log.warning(
                "readings at an existing key with another value: first value kept, the new one recorded",
                extra={"kv": {"rows": cur.rowcount, "table": "reading_conflicts"}},
            )
        cur.execute("TRUNCATE ps_stage_readings")

    def _aggregates(self, cur: psycopg.Cursor[Any], units: list[_Unit]) -> None:
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for u in units:
            for a in u.record.payload[u.lo : u.hi]:
                if a.window not in ("1s", "1m"):
                    raise RecordError(f"aggregate window {a.window!r} is not 1s or 1m")
                tag_id = self._ids.tag_id(cur, a.plant, a.tag, a.equipment, a.unit, "float")
                lot_id = self._ids.lot_id(cur, a.plant, a.lot) if a.lot else None
                rows = by_table.setdefault(f"aggregates_{a.window}", [])
                rows.append(
                    (
                        len(rows),
                        tag_id,
                        a.start_us,
                        a.count,
                        a.bad_count,
                        a.min,
                        a.max,
                        a.mean,
                        a.last,
                        a.stddev,
                        a.twa,
                        lot_id,
                    )
                )
        for table, rows in by_table.items():
            with cur.copy(
                "COPY ps_stage_aggregates (ord, tag_id, start_us, count, bad_count, min, max, mean, last, stddev, twa, "
                "lot_id) FROM STDIN (FORMAT BINARY)"
            ) as cp:
                cp.set_types(_AGG_TYPES)
                for r in rows:
                    cp.write_row(r)
            cur.execute(sql.SQL(_INSERT_AGGREGATES).format(table=sql.Identifier(table)))
            cur.execute("TRUNCATE ps_stage_aggregates")


def _datatype(v: object) -> str:
    t = type(v)
    return "bool" if t is bool else "int" if t is int else "str" if t is str else "float"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
