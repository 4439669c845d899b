"""Reading a pull's inputs from the database, always through the ds_* views (see migration 0004).

Readings stream window by window with ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)``. psycopg
hands a COPY over row by row (about 1 us of Python per row), so the numeric query packs the
window's readings into ONE bytea of fixed-width big-endian records on the server (``string_agg``
of ``*send()`` values in scan order, no GROUP BY: grouping by tag made the server sort or hash
every reading, measured +30-80 % server CPU per window, and a misestimated sort spilled to disk)
and the client turns the blob into arrays with a single ``numpy.frombuffer`` and orders them by
(tag, time) itself (a radix sort on the tag when the scan order is already time-ascending per
tag, the common case; a full lexsort otherwise). Record: tag id, time (int8 microseconds since
2000-01-01), float value, integer value, value kind, lot id. Text tags go through an ordinary
query (few rows: lot and state strings).

Reading is split in two so a pull can overlap them: ``fetch`` (database round trip only, for a
background thread) and ``decode`` (parse, order, fold into the watermark; called in window order).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from plantstream.datasets.logic.resample import NO_LOT, Chunk

log = logging.getLogger(__name__)

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z: PostgreSQL's binary timestamp origin
_HEADER = b"PGCOPY\n\xff\r\n\x00"

# kind: 0 float value, 1 integer (or boolean) value, 2 no numeric value (text on a numeric tag),
# plus 4 x quality: bad readings travel too (a few bytes each) so the pull can count them per tag
# for the quality report without a second scan; decode drops them before anything uses values.
# The columns of a SourceTag, in its field order.
SOURCE_TAGS_SQL = (
    "SELECT id, tag, equipment, unit, datatype, grade, description, spec_property, lo, hi, std_property FROM ds_tags"
)

NUMERIC_SQL = """COPY (SELECT string_agg(
        int4send(tag_id)
        || timestamptz_send(time)
        || float8send(COALESCE(v_float, v_int::float8, v_bool::int::float8, 0::float8))
        || int8send(COALESCE(v_int, v_bool::int::int8, 0::int8))
        || int2send((CASE WHEN v_int IS NOT NULL OR v_bool IS NOT NULL THEN 1
                          WHEN v_float IS NOT NULL THEN 0 ELSE 2 END + 4 * quality)::int2)
        || int4send(COALESCE(lot_id, -1)), ''::bytea)
    FROM ds_readings
    WHERE tag_id = ANY(%(tags)s::int4[]) AND time >= %(lo)s AND time < %(hi)s
) TO STDOUT (FORMAT BINARY)"""

TEXT_SQL = """SELECT tag_id, time, COALESCE(v_text, v_float::text, v_int::text, v_bool::text), COALESCE(lot_id, -1),
        quality
    FROM ds_readings
    WHERE tag_id = ANY(%(tags)s::int4[]) AND time >= %(lo)s AND time < %(hi)s"""
BAD = 2  # quality: 0 good, 1 uncertain, 2 bad (bad readings are counted, never used)

RECORD = np.dtype([("tag", ">i4"), ("t", ">i8"), ("vf", ">f8"), ("vi", ">i8"), ("kind", ">i2"), ("lot", ">i4")])
_FIELD = struct.Struct(">i")


def parse_blob_copy(data: bytes | bytearray | memoryview) -> npt.NDArray[Any]:
    """Binary COPY of NUMERIC_SQL -> its records (empty when the window has no readings: the
    aggregate is NULL). ValueError if the stream is not what NUMERIC_SQL produces (header, one
    row of one field, whole records, trailer)."""
    buf = memoryview(data)
    if bytes(buf[:11]) != _HEADER:
        raise ValueError("not a binary COPY stream")
    pos = 19 + _FIELD.unpack_from(buf, 15)[0]
    nfields = int.from_bytes(buf[pos : pos + 2], "big", signed=True)
    if nfields != 1:
        raise ValueError(f"unexpected field count {nfields} in binary COPY")
    (n,) = _FIELD.unpack_from(buf, pos + 2)
    pos += 6
    if n == -1:
        recs = np.empty(0, dtype=RECORD)
    elif n < 0 or n % RECORD.itemsize or pos + n > len(buf):
        raise ValueError("binary COPY blob is not a whole number of records")
    else:
        recs = np.frombuffer(buf[pos : pos + n], dtype=RECORD)
        pos += n
    if int.from_bytes(buf[pos : pos + 2], "big", signed=True) != -1:
        raise ValueError("binary COPY stream has more than one row")
    return recs


@dataclass(frozen=True, slots=True)
class RawWindow:
    """One window as fetched: the numeric records (still big-endian, in scan order), the text
    rows, and ``readings``: how many of them the window holds (numeric ones with a number)."""

    numeric: npt.NDArray[Any]
    text: list[tuple[Any, ...]]
    readings: int


@dataclass(frozen=True, slots=True)
class SourceTag:
    id: int
    tag: str
    equipment: str
    unit: str
    datatype: str
    grade: str
    description: str
    spec_property: str
    lo: float | None = None  # engineering range (out-of-range counts in the quality report)
    hi: float | None = None
    std_property: str = ""  # standard property id of the shared vocabulary ('' for none)


@dataclass
class WindowReader:
    """Reads windows of readings for ``tags`` (plan order) and folds every window into a
    running SHA-256: the data watermark (sorted, so independent of physical row order).

    ``helpers``: further connections in the SAME snapshot as ``conn`` (see ``share_snapshot``)
    and under the same role. ``fetch`` then cuts each window into equal time slices, one per
    connection, queried side by side: the server works on a window with more than one core
    (one backend was the bottleneck of a pull). The window, its readings and the watermark do
    not change: ``decode`` orders the concatenated slices by (tag, time) as before. The caller
    owns (and closes) the connections; ``close`` stops the helper threads."""

    conn: psycopg.Connection[Any]
    tags: Sequence[SourceTag]
    rows_read: int = 0
    helpers: Sequence[psycopg.Connection[Any]] = ()
    count_range: tuple[int, int] | None = None  # readings counted by quality only in [lo, hi) us
    _hash: Any = field(default_factory=hashlib.sha256)
    _pool: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        self._index = {t.id: i for i, t in enumerate(self.tags)}
        self._numeric = [t.id for t in self.tags if t.datatype != "str"]
        self._text = [t.id for t in self.tags if t.datatype == "str"]
        self._lut = np.full(max(self._index, default=0) + 1, -1, np.int32)
        for tid, i in self._index.items():
            self._lut[tid] = i
        if self.helpers:
            self._pool = ThreadPoolExecutor(len(self.helpers), thread_name_prefix="dataset-fetch")
        # Per tag (plan order): readings of quality good, uncertain, bad in count_range.
        self.quality_counts = np.zeros((len(self.tags), 3), np.int64)
        self.newest_us = -(2**63)  # the newest usable reading in count_range (the pull's datePublished)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def watermark(self) -> str:
        return str(self._hash.hexdigest())

    def read(self, lo_us: int, hi_us: int) -> Chunk:
        """Readings with lo <= time < hi (quality good or uncertain), as a Chunk for the resampler."""
        return self.decode(self.fetch(lo_us, hi_us))

    def fetch(self, lo_us: int, hi_us: int) -> RawWindow:
        """The database round trip of ``read`` only (no watermark): safe on a background thread
        as long as one thread uses the connection; hand the results to ``decode`` in order."""
        params = {"lo": _dt(lo_us), "hi": _dt(hi_us)}
        recs = np.empty(0, dtype=RECORD)
        if self._numeric:
            if self._pool is None or hi_us - lo_us <= len(self.helpers):
                recs = self._fetch_numeric(self.conn, lo_us, hi_us)
            else:
                n = len(self.helpers) + 1
                cuts = [lo_us + (hi_us - lo_us) * j // n for j in range(n + 1)]
                futures = [
                    self._pool.submit(self._fetch_numeric, c, cuts[j + 1], cuts[j + 2])
                    for j, c in enumerate(self.helpers)
                ]
                try:
                    parts = [self._fetch_numeric(self.conn, cuts[0], cuts[1])]
                finally:
                    parts += [f.result() for f in futures]  # always wait: connections stay one-user
                recs = np.concatenate(parts)
        text: list[tuple[Any, ...]] = []
        if self._text:
            with self.conn.cursor() as cur:
                cur.execute(TEXT_SQL, {**params, "tags": self._text})
                text = cur.fetchall()
        n = int(np.count_nonzero(_usable(recs["kind"]))) + sum(1 for r in text if r[4] != BAD)
        return RawWindow(recs, text, n)

    def _fetch_numeric(self, conn: psycopg.Connection[Any], lo_us: int, hi_us: int) -> npt.NDArray[Any]:
        chunks: list[bytes] = []
        params = {"lo": _dt(lo_us), "hi": _dt(hi_us), "tags": self._numeric}
        with conn.cursor() as cur, cur.copy(NUMERIC_SQL, params) as cp:
            for data in cp:
                chunks.append(bytes(data))
        if not chunks:
            return np.empty(0, dtype=RECORD)
        return parse_blob_copy(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def decode(self, raw: RawWindow) -> Chunk:
        """A fetched window as a Chunk sorted by (tag, time); folds it into the watermark, so
        windows must be decoded in the order they were read."""
        parts: list[Chunk] = []
        if raw.numeric.size:
            parts.append(self._numeric_chunk(raw.numeric))
        if raw.text:
            parts.append(self._text_chunk(raw.text))
        chunk = _by_tag(Chunk.concat(parts))
        self.rows_read += int(chunk.t_us.size)
        if chunk.t_us.size:
            t = chunk.t_us
            if self.count_range is not None:
                t = t[(t >= self.count_range[0]) & (t < self.count_range[1])]
            if t.size:
                self.newest_us = max(self.newest_us, int(t.max()))
        self._digest(chunk)
        return chunk

    def _count(self, tag: npt.NDArray[Any], t_us: npt.NDArray[np.int64], quality: npt.NDArray[Any]) -> None:
        if self.count_range is not None:
            inside = (t_us >= self.count_range[0]) & (t_us < self.count_range[1])
            tag, quality = tag[inside], quality[inside]
        n = len(self.tags)
        flat = np.bincount(tag.astype(np.int64) * 3 + np.minimum(quality, 2).astype(np.int64), minlength=3 * n)
        self.quality_counts += flat[: 3 * n].reshape(n, 3)

    def _numeric_chunk(self, rows: npt.NDArray[Any]) -> Chunk:
        ids = rows["tag"].astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self._lut.size or (self._lut[ids] < 0).any()):
            raise ValueError("the window query returned a reading of a tag that was not asked for")
        code = rows["kind"].astype(np.int16)
        self._count(self._lut[ids], rows["t"].astype(np.int64) + PG_EPOCH_US, code >> 2)
        # Bad readings are left out; a text value on a numeric tag is not a number: missing.
        keep = _usable(code)
        if not keep.all():
            rows, ids = rows[keep], ids[keep]
        tag = self._lut[ids]
        t = rows["t"].astype(np.int64) + PG_EPOCH_US
        # Scan order is time-ascending per tag in the common case (rows stored as they arrive):
        # a stable radix sort on the tag index then gives (tag, time) order; checked, else lexsort.
        order = np.argsort(tag.astype(np.int16) if len(self.tags) < 32_768 else tag, kind="stable")
        tag, t = tag[order], t[order]
        if tag.size > 1 and not bool(np.all((t[1:] > t[:-1]) | (tag[1:] != tag[:-1]))):
            order2 = np.lexsort((t, tag))
            order, tag, t = order[order2], tag[order2], t[order2]
        # Gather native columns, not the 34-byte records (a structured gather is ~10x slower).
        vf = rows["vf"].astype(np.float64)[order]
        vi = rows["vi"].astype(np.int64)[order]
        lot = rows["lot"].astype(np.int32)[order]
        # An integer tag stored as a float reading (registered before its metadata) is rounded.
        is_int = ((rows["kind"] & 3) == 1)[order]
        if is_int.all():
            ivalue = vi
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                ivalue = np.where(is_int, vi, np.round(np.nan_to_num(vf)).astype(np.int64))
        return Chunk(tag, t, vf, lot, ivalue, by_tag=True)

    def _text_chunk(self, recs: list[tuple[Any, ...]]) -> Chunk:
        self._count(
            np.fromiter((self._index[r[0]] for r in recs), np.int32, len(recs)),
            np.fromiter((_to_us(r[1]) for r in recs), np.int64, len(recs)),
            np.fromiter((r[4] for r in recs), np.int16, len(recs)),
        )
        recs = [r for r in recs if r[4] != BAD]
        n = len(recs)
        tag = np.fromiter((self._index[r[0]] for r in recs), np.int32, n)
        t = np.fromiter((_to_us(r[1]) for r in recs), np.int64, n)
        val = np.empty(n, dtype=object)
        val[:] = [r[2] for r in recs]
        lot = np.fromiter((r[3] for r in recs), np.int32, n)
        return Chunk(tag, t, np.zeros(n, np.float64), lot, np.zeros(n, np.int64), val)

    def _digest(self, c: Chunk) -> None:
        if not c.t_us.size:
            return
        if not c.by_tag:
            c = _by_tag(c)
        self._hash.update(c.tag.astype("<i4").tobytes())
        self._hash.update(c.t_us.astype("<i8").tobytes())
        self._hash.update(c.lot.astype("<i4").tobytes())
        self._hash.update(c.value.astype("<f8").tobytes())
        self._hash.update(c.ints().astype("<i8").tobytes())
        if c.text is not None:
            self._hash.update("\x1f".join(repr(x) for x in c.text).encode())


def _usable(code: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Records with a number and not of bad quality (``code`` = kind + 4 x quality)."""
    return ((code & 3) != 2) & ((code >> 2) != BAD)  # type: ignore[no-any-return]


def share_snapshot(conn: psycopg.Connection[Any], helper: psycopg.Connection[Any], role: str) -> None:
    """Open a transaction on ``helper`` (autocommit, idle) under ``role`` that sees exactly the
    snapshot of ``conn``'s open REPEATABLE READ transaction. psycopg.Error if it cannot."""
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    helper.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    helper.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    helper.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(str(row[0]))))
    tune_for_windows(helper)


@contextlib.contextmanager
def snapshot_helpers(
    conn: psycopg.Connection[Any],
    dsn: str,
    role: str,
    count: int,
    application_name: str = "",
    log_kv: dict[str, Any] | None = None,
) -> Iterator[list[psycopg.Connection[Any]]]:
    """Up to ``count`` extra connections reading ``conn``'s open snapshot under ``role`` (see
    :func:`share_snapshot`), closed on exit. They are only a speed-up: when the server has no free
    connection slot, fewer are returned and a warning is logged (with ``log_kv``)."""
    with contextlib.ExitStack() as stack:
        helpers: list[psycopg.Connection[Any]] = []
        for _ in range(count):
            try:
                h = stack.enter_context(psycopg.connect(dsn, autocommit=True, application_name=application_name))
                share_snapshot(conn, h, role)
            except psycopg.OperationalError as exc:
                log.warning(
                    "dataset read with fewer connections",
                    extra={"kv": {**(log_kv or {}), "connections": len(helpers) + 1, "error": str(exc)[:200]}},
                )
                break
            helpers.append(h)
        yield helpers


def tune_for_windows(conn: psycopg.Connection[Any]) -> None:
    """Planner settings for the window queries, local to the open transaction (measured on 50
    tags x 4.3M readings a day).

    - JIT compiling the window query costs more than it saves (0.7 -> 3.5 s server CPU per million
      readings once the estimate crosses the optimize cost).
    - Window scans read heap blocks in order, which kernel readahead covers; the per-block
      posix_fadvise prefetch cost ~15 % of the backend's CPU (perf).
    - ``ds_readings`` filters tags by readable grade through a function the planner cannot see
      into: it expects 3 of 50 tags and loops over them, one bitmap heap scan per tag, visiting
      each heap page once per tag (2.0M page visits for a day instead of 40k; 4.7 s instead of
      2.7 s). A hash join against the readable tags reads each page once and stays index-driven
      for a few tags of many (``tag_id = ANY`` is an index condition either way).
    """
    conn.execute("SET LOCAL jit = off")
    conn.execute("SET LOCAL effective_io_concurrency = 0")
    conn.execute("SET LOCAL enable_nestloop = off")


def _by_tag(c: Chunk) -> Chunk:
    """``c`` ordered by (tag, time) (time is unique per tag: the primary key), flagged ``by_tag``."""
    if c.by_tag or not c.t_us.size:
        return c if c.by_tag else Chunk(c.tag, c.t_us, c.value, c.lot, c.ivalue, c.text, by_tag=True)
    o = np.lexsort((c.t_us, c.tag))
    return Chunk(
        c.tag[o],
        c.t_us[o],
        c.value[o],
        c.lot[o],
        c.ints()[o] if c.ivalue is not None else None,
        c.text[o] if c.text is not None else None,
        by_tag=True,
    )


def _dt(us: int) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _to_us(dt: Any) -> int:
    from datetime import UTC, datetime

    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return int((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


NO_LOT_ID = NO_LOT
