"""The PostgreSQL/TimescaleDB sink core: decoded records in, one transaction per flush out.

No Kafka here (the runner owns the consumer), so the whole write path is testable against a real
database alone. Implements ``plantstream.sinks.base.Sink``; read its failure contract first.

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
import dataclasses
import hashlib
import logging
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from plantstream.contract import ContextEvent, ContextKind, TagMeta, validate_equipment_path
from plantstream.producers import codec
from plantstream.producers.codec import Aggregate, CodecError, ReadingBatch
from plantstream.sinks.base import DeadLetter, Record, RecordOrigin, SinkUnavailable
from plantstream.sinks.timescaledb.copybin import KIND, ReadingColumns, encode_parts
from plantstream.streams.logic.validate import RuleError, compile_rule

log = logging.getLogger(__name__)

LEVELS = ("enterprise", "site", "area", "line", "unit")
KINDS = ("tags", "context", "readings", "aggregates", "deviations")  # write order: metadata first
DAY_US = 86_400_000_000
EPOCH = "timestamptz '1970-01-01 00:00:00+00'"
_TS = f"{EPOCH} + {{}} * interval '1 microsecond'"  # exact for |µs| < 2**53 (until year 2255)


class RecordError(ValueError):
    """A record this sink refuses on its own (before the database sees it)."""


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


def decode(kind: str, value: bytes | None, origin: RecordOrigin, key: bytes | None = None) -> Record | DeadLetter:
    """Decode one Kafka record of ``kind``; a ``DeadLetter`` with the codec's reason if it cannot be."""
    decoders: dict[str, Callable[[bytes], Any]] = {
        "readings": codec.decode_readings,
        "aggregates": codec.decode_aggregates,
        "context": codec.decode_context,
        "tags": codec.decode_tag_meta,
        "deviations": codec.decode_deviation,
    }
    raw = value if value is not None else b""
    try:
        if value is None:
            raise CodecError("empty record (tombstone)")
        return Record(origin, kind, decoders[kind](value), raw, key)
    except CodecError as exc:
        return DeadLetter(raw, key, f"undecodable: {exc.reason}", origin)


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
    return ReadingBatch(
        b.plant,
        b.equipment,
        b.origin,
        b.source,
        b.tag[lo:hi],
        b.unit[lo:hi],
        b.ts_us[lo:hi],
        b.value[lo:hi],
        b.quality[lo:hi],
        b.status_code[lo:hi],
        b.seq[lo:hi],
        b.server_ts_us[lo:hi],
        b.lot[lo:hi],
        b.reason[lo:hi],
    )


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


# --- id registry with savepoint layers ---------------------------------------------------------


class _Registry:
    """Cache of (kind, plant, name) -> id. Ids learned inside a transaction live in a layer that
    is merged only when the savepoint / transaction that created them commits."""

    def __init__(self) -> None:
        self.committed: dict[tuple[str, str, str], int] = {}
        self.layers: list[dict[tuple[str, str, str], int]] = []

    def get(self, key: tuple[str, str, str]) -> int | None:
        for layer in reversed(self.layers):
            if key in layer:
                return layer[key]
        return self.committed.get(key)

    def put(self, key: tuple[str, str, str], ident: int) -> None:
        (self.layers[-1] if self.layers else self.committed)[key] = ident

    def push(self) -> None:
        self.layers.append({})

    def pop(self, keep: bool) -> None:
        top = self.layers.pop()
        if keep:
            (self.layers[-1] if self.layers else self.committed).update(top)

    def discard_pending(self) -> None:
        self.layers.clear()


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

# The readings table's columns (table order) with the binary COPY type of each: the one place
# benchmarks and the sink take them from.
READINGS_COLUMN_TYPES: dict[str, str] = {
    "time": "timestamptz",
    "tag_id": "int4",
    "v_float": "float8",
    "v_int": "int8",
    "v_bool": "bool",
    "v_text": "text",
    "quality": "int2",
    "status_code": "int8",
    "lot_id": "int4",
    "server_time": "timestamptz",
    "seq": "int8",
}
# Direct COPY uses the staging column order, with times as timestamptz.
_DIRECT_ORDER = ("tag_id", "time", "v_float", "v_int", "v_bool", "v_text", "quality", "status_code", "lot_id",
                 "server_time", "seq")  # fmt: skip
_COPY_READINGS = f"COPY readings ({', '.join(_DIRECT_ORDER)}) FROM STDIN (FORMAT BINARY)"
# After a conflict, flushes on the staging path before trying direct COPY again: 1 after an
# isolated duplicate (a late re-send), doubling while conflicts repeat (a replay), at most 20.
_FAST_PROBE_MAX = 20
_COPY_PART_ROWS = 5_000  # rows encoded per write of a readings COPY (direct or staging)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds: PostgreSQL's binary time origin


_INSERT_READINGS = f"""
INSERT INTO readings (time, tag_id, v_float, v_int, v_bool, v_text, quality, status_code, lot_id, server_time, seq)
SELECT {_TS.format("ts_us")}, tag_id, v_float, v_int, v_bool, v_text, quality, status_code, lot_id,
       CASE WHEN server_ts_us IS NOT NULL THEN {_TS.format("server_ts_us")} END, seq
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
JOIN readings r ON r.tag_id = s.tag_id AND r.time = {_TS.format("s.ts_us")}
WHERE r.seq IS DISTINCT FROM s.seq
  AND (r.v_float, r.v_int, r.v_bool, r.v_text, r.quality) IS DISTINCT FROM (s.v_float, s.v_int, s.v_bool, s.v_text, s.quality)
ON CONFLICT (tag_id, time, incoming_seq) DO NOTHING
"""

_INSERT_AGGREGATES = f"""
INSERT INTO {{table}} AS a (tag_id, start, count, bad_count, min, max, mean, last, stddev, twa, lot_id)
SELECT DISTINCT ON (tag_id, start_us)
       tag_id, {_TS.format("start_us")}, count, bad_count, min, max, mean, last, stddev, twa, lot_id
FROM ps_stage_aggregates
ORDER BY tag_id, start_us, ord DESC
ON CONFLICT (tag_id, start) DO UPDATE SET
    count = EXCLUDED.count, bad_count = EXCLUDED.bad_count, min = EXCLUDED.min, max = EXCLUDED.max,
    mean = EXCLUDED.mean, last = EXCLUDED.last, stddev = EXCLUDED.stddev, twa = EXCLUDED.twa, lot_id = EXCLUDED.lot_id
WHERE (a.count, a.bad_count, a.min, a.max, a.mean, a.last, a.stddev, a.twa, a.lot_id)
      IS DISTINCT FROM (EXCLUDED.count, EXCLUDED.bad_count, EXCLUDED.min, EXCLUDED.max, EXCLUDED.mean,
                        EXCLUDED.last, EXCLUDED.stddev, EXCLUDED.twa, EXCLUDED.lot_id)
"""


@dataclass(slots=True)
class FlushStats:
    readings: int = 0  # rows offered (written or already present)
    aggregates: int = 0
    other: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    value_conflicts: int = 0  # readings kept aside in reading_conflicts (same key, other value)


def canonical_meta(m: TagMeta) -> TagMeta:
    """The tag as stored: readings arrive from streams in the canonical unit of their quantity, so
    the registry keeps that unit and the engineering range and rate limit converted into it. A tag
    whose unit streams cannot normalize keeps its own (its readings pass through unconverted)."""
    try:
        rule = compile_rule(m)
    except RuleError:
        return m
    if rule.canonical == m.unit:
        return m
    return dataclasses.replace(m, unit=rule.canonical, lo=rule.lo, hi=rule.hi, roc_limit=rule.roc)


class PostgresSink:
    """Sink core for PostgreSQL (plain or TimescaleDB). Not thread-safe: one per runner."""

    def __init__(self, dsn: str, connect_timeout: float = 5.0, application_name: str = "plantstream-sink") -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._app = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._staged: list[Record] = []
        self._dead: list[DeadLetter] = []
        self._reg = _Registry()
        self._covered: set[tuple[str, int]] = set()  # (table, day) known to have a partition
        self._keep_days: dict[str, int] = {}
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
            rows = conn.execute("SELECT table_name, extract(day FROM keep)::int FROM retention").fetchall()
        except psycopg.OperationalError as exc:
            raise SinkUnavailable(f"database unreachable: {_first_line(exc)}") from exc
        except psycopg.errors.UndefinedTable as exc:
            raise SinkUnavailable("the database has no plantstream schema: run `plantstream db migrate`") from exc
        self._keep_days = {str(t): int(d) for t, d in rows}
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
            self._ensure_partitions(conn, units)
            self._reg.push()
            with conn.transaction():
                self._attempt(conn, units, dead)
            self._reg.pop(keep=True)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._reg.discard_pending()
            self.close_connection()
            raise SinkUnavailable(f"database write failed: {_first_line(exc)}") from exc
        except BaseException:
            self._reg.discard_pending()
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
            for table in ("readings", "aggregates_1s", "aggregates_1m"):
                conn.execute(
                    "SELECT ps_ensure_partitions(%s, now() - interval '1 day', now() + interval '4 days')", (table,)
                )
                conn.execute("SELECT ps_settle_partitions(%s)", (table,))
                conn.execute("SELECT ps_apply_retention(%s)", (table,))
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close_connection()
            raise SinkUnavailable(f"maintenance failed: {_first_line(exc)}") from exc

    # -- bisection ------------------------------------------------------------------------------

    def _attempt(self, conn: psycopg.Connection[Any], units: list[_Unit], dead: list[DeadLetter]) -> None:
        self._reg.push()
        conflicts_before = self._flush_conflicts
        try:
            with conn.transaction():  # a savepoint inside the flush transaction
                self._write_units(conn, units)
        except RECORD_ERRORS as exc:
            self._reg.pop(keep=False)
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
            self._reg.pop(keep=True)

    def _write_units(self, conn: psycopg.Connection[Any], units: list[_Unit]) -> None:
        with conn.cursor() as cur:
            readings = [u for u in units if u.kind == "readings"]
            aggs = [u for u in units if u.kind == "aggregates"]
            for u in units:
                if u.kind == "tags":
                    self._tag_meta(cur, u.record.payload)
                elif u.kind == "context":
                    self._context(cur, u.record.payload)
            if readings:
                self._readings(cur, readings)
            if aggs:
                self._aggregates(cur, aggs)
            for u in units:
                if u.kind == "deviations":
                    self._deviation(cur, u.record.payload)

    # -- partitions -----------------------------------------------------------------------------

    def _ensure_partitions(self, conn: psycopg.Connection[Any], units: list[_Unit]) -> None:
        now_day = int(time.time() * 1e6) // DAY_US
        spans: dict[str, tuple[int, int]] = {}
        for u in units:
            p = u.record.payload
            if u.kind == "readings":
                ts = p.ts_us[u.lo : u.hi]
                _widen(spans, "readings", min(ts), max(ts))
            elif u.kind == "aggregates":
                for a in p[u.lo : u.hi]:
                    if isinstance(a, Aggregate) and isinstance(a.start_us, int):
                        _widen(spans, "aggregates_" + str(a.window), a.start_us, a.start_us)
        for table, (lo, hi) in spans.items():
            keep = self._keep_days.get(table)
            if keep is None:
                continue  # an unknown window: the write will reject it
            # Beyond retention or far ahead the rows go to the default partition instead of
            # creating partitions that retention drops again or that nobody will fill.
            lo_day = max(lo // DAY_US, now_day - keep)
            hi_day = min(hi // DAY_US, now_day + 31)
            missing = [d for d in range(lo_day, hi_day + 1) if (table, d) not in self._covered]
            if not missing:
                continue
            conn.execute(
                f"SELECT ps_ensure_partitions(%s, {_TS.format('%s::bigint')}, {_TS.format('%s::bigint')})",
                (table, missing[0] * DAY_US, (missing[-1] + 1) * DAY_US),
            )
            self._covered.update((table, d) for d in missing)

    # -- registration ---------------------------------------------------------------------------

    def _equipment_id(self, cur: psycopg.Cursor[Any], plant: str, path: str) -> int:
        key = ("equipment", plant, path)
        ident = self._reg.get(key)
        if ident is not None:
            return ident
        try:
            validate_equipment_path(path)
        except ValueError as exc:
            raise RecordError(str(exc)) from None
        parent: int | None = None
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            k = ("equipment", plant, sub)
            got = self._reg.get(k)
            if got is None:
                got = self._upsert_returning(
                    cur,
                    "INSERT INTO equipment (plant, path, name, level, parent_id) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (plant, path) DO NOTHING RETURNING id",
                    (plant, sub, parts[depth - 1], LEVELS[depth - 1], parent),
                    "SELECT id FROM equipment WHERE plant = %s AND path = %s",
                    (plant, sub),
                )
                self._reg.put(k, got)
            parent = got
        assert parent is not None
        return parent

    def _tag_id(self, cur: psycopg.Cursor[Any], plant: str, tag: str, equipment: str, unit: str, datatype: str) -> int:
        key = ("tag", plant, tag)
        ident = self._reg.get(key)
        if ident is not None:
            return ident
        eq = self._equipment_id(cur, plant, equipment)
        ident = self._upsert_returning(
            cur,
            "INSERT INTO tags (plant, tag, equipment_id, unit, datatype) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (plant, tag) DO NOTHING RETURNING id",
            (plant, tag, eq, unit, datatype),
            "SELECT id FROM tags WHERE plant = %s AND tag = %s",
            (plant, tag),
        )
        self._reg.put(key, ident)
        return ident

    def _lot_id(self, cur: psycopg.Cursor[Any], plant: str, lot: str, kind: str = "", spec: str = "") -> int:
        key = ("lot", plant, lot)
        ident = self._reg.get(key)
        if ident is not None and not kind and not spec:
            return ident
        if not lot:
            raise RecordError("empty lot id")
        ident = self._upsert_returning(
            cur,
            "INSERT INTO lots AS l (plant, lot, kind, spec_id) VALUES (%s, %s, %s, NULLIF(%s, '')) "
            "ON CONFLICT (plant, lot) DO UPDATE SET kind = COALESCE(NULLIF(EXCLUDED.kind, ''), l.kind), "
            "spec_id = COALESCE(EXCLUDED.spec_id, l.spec_id) "
            "WHERE (NULLIF(EXCLUDED.kind, '') IS NOT NULL AND EXCLUDED.kind <> l.kind) "
            "   OR (EXCLUDED.spec_id IS NOT NULL AND EXCLUDED.spec_id IS DISTINCT FROM l.spec_id) "
            "RETURNING id",
            (plant, lot, kind, spec),
            "SELECT id FROM lots WHERE plant = %s AND lot = %s",
            (plant, lot),
        )
        self._reg.put(key, ident)
        return ident

    @staticmethod
    def _upsert_returning(
        cur: psycopg.Cursor[Any], insert: str, args: tuple[Any, ...], select: str, sargs: tuple[Any, ...]
    ) -> int:
        row = cur.execute(insert, args).fetchone()
        if row is None:  # already there (maybe inserted by a concurrent sink that has committed)
            row = cur.execute(select, sargs).fetchone()
        if row is None:
            raise RecordError(f"registration of {sargs} returned no id")
        return int(row[0])

    def _tag_meta(self, cur: psycopg.Cursor[Any], m: TagMeta) -> None:
        m = canonical_meta(m)
        eq = self._equipment_id(cur, m.plant, m.equipment)
        ident = self._upsert_returning(
            cur,
            """INSERT INTO tags AS t (plant, tag, equipment_id, unit, datatype, lo, hi, roc_limit, grade, source_address,
                                    spec_property, description, registered_by)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'meta')
               ON CONFLICT (plant, tag) DO UPDATE SET equipment_id = EXCLUDED.equipment_id, unit = EXCLUDED.unit,
                   datatype = EXCLUDED.datatype, lo = EXCLUDED.lo, hi = EXCLUDED.hi, roc_limit = EXCLUDED.roc_limit,
                   grade = EXCLUDED.grade, source_address = EXCLUDED.source_address,
                   spec_property = EXCLUDED.spec_property, description = EXCLUDED.description,
                   registered_by = 'meta', updated_at = now()
               WHERE (t.equipment_id, t.unit, t.datatype, t.lo, t.hi, t.roc_limit, t.grade, t.source_address,
                      t.spec_property, t.description, t.registered_by)
                     IS DISTINCT FROM (EXCLUDED.equipment_id, EXCLUDED.unit, EXCLUDED.datatype, EXCLUDED.lo,
                      EXCLUDED.hi, EXCLUDED.roc_limit, EXCLUDED.grade, EXCLUDED.source_address,
                      EXCLUDED.spec_property, EXCLUDED.description, 'meta')
               RETURNING id""",
            (
                m.plant,
                m.tag,
                eq,
                m.unit,
                m.datatype,
                m.lo,
                m.hi,
                m.roc_limit,
                m.grade.value,
                m.source_address,
                m.spec_property,
                m.description,
            ),
            "SELECT id FROM tags WHERE plant = %s AND tag = %s",
            (m.plant, m.tag),
        )
        self._reg.put(("tag", m.plant, m.tag), ident)

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
                    ids[t] = self._tag_id(cur, b.plant, t, b.equipment, units_[i], _datatype(v))
            lots: dict[str | None, int | None] = {None: None}
            for lot in set(b.lot[lo:hi]):
                if lot is not None:
                    lots[lot] = self._lot_id(cur, b.plant, lot)
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
            "COPY ps_stage_readings (tag_id, ts_us, v_float, v_int, v_bool, v_text, quality, status_code, lot_id, "
            "server_ts_us, seq) FROM STDIN (FORMAT BINARY)",
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
                tag_id = self._tag_id(cur, a.plant, a.tag, a.equipment, a.unit, "float")
                lot_id = self._lot_id(cur, a.plant, a.lot) if a.lot else None
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

    # -- context and deviations -----------------------------------------------------------------

    def _context(self, cur: psycopg.Cursor[Any], ev: ContextEvent) -> None:
        ts = _TS.format("%s::bigint")
        if ev.kind is ContextKind.LOT_START:
            lot = self._lot_id(cur, ev.plant, ev.lot, ev.lot_kind, ev.material)
            eq = self._equipment_id(cur, ev.plant, ev.equipment)
            cur.execute(
                f"INSERT INTO process_segments (lot_id, equipment_id, start_time) VALUES (%s, %s, {ts}) "
                "ON CONFLICT (lot_id, equipment_id, start_time) DO NOTHING",
                (lot, eq, ev.ts_us),
            )
        elif ev.kind is ContextKind.LOT_END:
            lot = self._lot_id(cur, ev.plant, ev.lot, ev.lot_kind, ev.material)
            eq = self._equipment_id(cur, ev.plant, ev.equipment)
            # Close the latest open segment that started before this end. An end without a
            # start (start older than the topic's retention) leaves nothing to close.
            cur.execute(
                f"""UPDATE process_segments SET end_time = {ts}
                    WHERE id = (SELECT id FROM process_segments
                                WHERE lot_id = %s AND equipment_id = %s AND end_time IS NULL AND start_time <= {ts}
                                ORDER BY start_time DESC LIMIT 1)""",
                (ev.ts_us, lot, eq, ev.ts_us),
            )
        elif ev.kind is ContextKind.GENEALOGY:
            child = self._lot_id(cur, ev.plant, ev.lot, ev.lot_kind, ev.material)
            for parent in ev.parents:
                pid = self._lot_id(cur, ev.plant, parent)
                cur.execute(
                    f"INSERT INTO lot_genealogy (parent_id, child_id, relation, time) VALUES (%s, %s, %s, {ts}) "
                    "ON CONFLICT (parent_id, child_id) DO NOTHING",
                    (pid, child, ev.relation, ev.ts_us),
                )
        elif ev.kind is ContextKind.LAB_RESULT:
            lot = self._lot_id(cur, ev.plant, ev.lot, ev.lot_kind, ev.material)
            eq_opt: int | None = self._equipment_id(cur, ev.plant, ev.equipment) if ev.equipment else None
            for prop, (value, unit) in sorted(ev.results.items()):
                cur.execute(
                    f"INSERT INTO lot_test_results AS r (lot_id, property, time, value, unit, equipment_id) "
                    f"VALUES (%s, %s, {ts}, %s, %s, %s) ON CONFLICT (lot_id, property, time) DO UPDATE "
                    "SET value = EXCLUDED.value, unit = EXCLUDED.unit, equipment_id = EXCLUDED.equipment_id "
                    "WHERE (r.value, r.unit, r.equipment_id) IS DISTINCT FROM "
                    "(EXCLUDED.value, EXCLUDED.unit, EXCLUDED.equipment_id)",
                    (lot, prop, ev.ts_us, value, unit, eq_opt),
                )

    def _deviation(self, cur: psycopg.Cursor[Any], dev: dict[str, Any]) -> None:
        d = Deviation.parse(dev)
        lot = self._lot_id(cur, d.plant, d.lot) if d.lot else None
        tag = self._tag_id(cur, d.plant, d.tag, d.equipment, "", "float") if d.tag and d.equipment else None
        if d.tag and tag is None:
            row = cur.execute("SELECT id FROM tags WHERE plant = %s AND tag = %s", (d.plant, d.tag)).fetchone()
            tag = int(row[0]) if row else None
        ts = _TS.format("%s::bigint")
        cur.execute(
            f"""INSERT INTO deviations AS d (id, kind, plant, lot_id, spec_id, property, tag_id, start_time, end_time,
                                           peak, "limit", status, attrs)
                VALUES (%s, %s, %s, %s, %s, %s, %s, {ts}, CASE WHEN %s::bigint IS NULL THEN NULL ELSE {ts} END,
                        %s, %s, %s, %s)
                ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, plant = EXCLUDED.plant, lot_id = EXCLUDED.lot_id,
                    spec_id = EXCLUDED.spec_id, property = EXCLUDED.property, tag_id = EXCLUDED.tag_id,
                    start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time, peak = EXCLUDED.peak,
                    "limit" = EXCLUDED."limit", status = EXCLUDED.status, attrs = EXCLUDED.attrs
                WHERE (d.kind, d.plant, d.lot_id, d.spec_id, d.property, d.tag_id, d.start_time, d.end_time, d.peak,
                       d."limit", d.status, d.attrs)
                      IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.plant, EXCLUDED.lot_id, EXCLUDED.spec_id,
                       EXCLUDED.property, EXCLUDED.tag_id, EXCLUDED.start_time, EXCLUDED.end_time, EXCLUDED.peak,
                       EXCLUDED."limit", EXCLUDED.status, EXCLUDED.attrs)""",
            (
                d.id,
                d.kind,
                d.plant,
                lot,
                d.spec or None,
                d.property,
                tag,
                d.start_us,
                d.end_us,
                d.end_us,
                d.peak,
                d.limit,
                d.status,
                Jsonb(d.attrs),
            ),
        )


@dataclass(frozen=True, slots=True)
class Deviation:
    """The deviation map on Topics.deviations, as this sink reads it.

    Keys: ``id`` (stable; a re-emission with the same id updates the row; derived from
    kind/plant/lot/tag/property/start when absent), ``kind`` (process | lab | late_data),
    ``plant``, ``equipment``, ``lot``, ``spec``, ``property``, ``tag``, ``start_us``, ``end_us``,
    ``peak``, ``limit``, ``status`` (streams also sends it as ``state``: either is read). Other
    keys (``limit_min``, ``limit_max``, ``unit``, ``duration_s``, ``count``, ...) are kept in
    ``attrs``. Without ``limit``, the bound ``peak`` crossed is taken from ``limit_min``/``limit_max``.
    """

    id: str
    kind: str
    plant: str
    equipment: str
    lot: str
    spec: str
    property: str
    tag: str
    start_us: int
    end_us: int | None
    peak: float | None
    limit: float | None
    status: str
    attrs: dict[str, Any]

    KNOWN = (
        "id",
        "kind",
        "plant",
        "equipment",
        "lot",
        "spec",
        "property",
        "tag",
        "start_us",
        "end_us",
        "peak",
        "limit",
        "status",
    )

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Deviation:
        def text(k: str) -> str:
            v = d.get(k) or ""
            if not isinstance(v, str):
                raise RecordError(f"deviation field {k!r} must be a string, got {type(v).__name__}")
            return v

        def num(k: str) -> float | None:
            v = d.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise RecordError(f"deviation field {k!r} must be a number, got {type(v).__name__}")
            return None if v is None else float(v)

        start = d.get("start_us")
        end = d.get("end_us")
        if type(start) is not int:
            raise RecordError("deviation field 'start_us' (integer microseconds) is required")
        if end is not None and type(end) is not int:
            raise RecordError("deviation field 'end_us' must be integer microseconds")
        kind, plant = text("kind") or "process", text("plant")
        if not plant:
            raise RecordError("deviation field 'plant' is required")
        ident = (
            text("id")
            or hashlib.sha1(
                "|".join((kind, plant, text("lot"), text("tag"), text("property"), str(start))).encode()
            ).hexdigest()
        )
        attrs = {k: v for k, v in d.items() if k not in cls.KNOWN and k != "state"}
        peak, limit = num("peak"), num("limit")
        if limit is None and peak is not None:
            lo, hi = num("limit_min"), num("limit_max")
            limit = lo if lo is not None and peak < lo else hi if hi is not None and peak > hi else None
        return cls(
            ident,
            kind,
            plant,
            text("equipment"),
            text("lot"),
            text("spec"),
            text("property"),
            text("tag"),
            start,
            end,
            peak,
            limit,
            text("status") or text("state") or "open",
            attrs,
        )


def _datatype(v: object) -> str:
    t = type(v)
    return "bool" if t is bool else "int" if t is int else "str" if t is str else "float"


def _widen(spans: dict[str, tuple[int, int]], table: str, lo: int, hi: int) -> None:
    cur = spans.get(table)
    spans[table] = (lo, hi) if cur is None else (min(cur[0], lo), max(cur[1], hi))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def iter_dead_letters(dead: Sequence[DeadLetter]) -> Iterator[tuple[bytes, bytes | None, dict[str, str]]]:
    """(value, key, headers) for each dead letter, with the contract's headers."""
    from plantstream.producers.topics import (
        DEADLETTER_ORIGIN_HEADER,
        DEADLETTER_REASON_HEADER,
        DEADLETTER_STAGE_HEADER,
    )

    for d in dead:
        headers = {DEADLETTER_REASON_HEADER: d.reason, DEADLETTER_STAGE_HEADER: "sink"}
        if d.origin is not None:
            headers[DEADLETTER_ORIGIN_HEADER] = str(d.origin)
        yield d.value, d.key, headers
