"""Reading a pull's inputs from the database, always through the ds_* views (see migration 0004).

Readings stream window by window with ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)``. psycopg
hands a COPY over row by row (about 1 us of Python per row), so the numeric query packs each
tag's readings of the window into ONE bytea of fixed-width big-endian records on the server
(``string_agg`` of ``*send()`` values, unordered: numpy sorts) and the client turns each blob
into arrays with a single ``numpy.frombuffer``. Record: time (int8 microseconds since
2000-01-01), float value, integer value, value kind, lot id. Text tags go through an ordinary
query (few rows: lot and state strings).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from plantstream.datasets.logic.resample import NO_LOT, Chunk

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z: PostgreSQL's binary timestamp origin
_HEADER = b"PGCOPY\n\xff\r\n\x00"

# kind: 0 float value, 1 integer (or boolean) value, 2 no numeric value (text on a numeric tag).
NUMERIC_SQL = """COPY (SELECT tag_id, string_agg(
        timestamptz_send(time)
        || float8send(COALESCE(v_float, v_int::float8, v_bool::int::float8, 0::float8))
        || int8send(COALESCE(v_int, v_bool::int::int8, 0::int8))
        || int2send((CASE WHEN v_int IS NOT NULL OR v_bool IS NOT NULL THEN 1
                          WHEN v_float IS NOT NULL THEN 0 ELSE 2 END)::int2)
        || int4send(COALESCE(lot_id, -1)), ''::bytea)
    FROM ds_readings
    WHERE tag_id = ANY(%(tags)s::int4[]) AND time >= %(lo)s AND time < %(hi)s AND quality < 2
    GROUP BY tag_id
) TO STDOUT (FORMAT BINARY)"""

TEXT_SQL = """SELECT tag_id, time, COALESCE(v_text, v_float::text, v_int::text, v_bool::text), COALESCE(lot_id, -1)
    FROM ds_readings
    WHERE tag_id = ANY(%(tags)s::int4[]) AND time >= %(lo)s AND time < %(hi)s AND quality < 2"""

RECORD = np.dtype([("t", ">i8"), ("vf", ">f8"), ("vi", ">i8"), ("kind", ">i2"), ("lot", ">i4")])
_FIELD = struct.Struct(">i")


def parse_blob_copy(data: bytes | bytearray | memoryview) -> list[tuple[int, npt.NDArray[Any]]]:
    """Binary COPY of NUMERIC_SQL -> [(tag_id, records)]. ValueError if the stream is not what
    NUMERIC_SQL produces (header, two fields per row, whole records, trailer)."""
    buf = memoryview(data)
    if bytes(buf[:11]) != _HEADER:
        raise ValueError("not a binary COPY stream")
    pos = 19 + _FIELD.unpack_from(buf, 15)[0]
    out: list[tuple[int, npt.NDArray[Any]]] = []
    while True:
        nfields = int.from_bytes(buf[pos : pos + 2], "big", signed=True)
        pos += 2
        if nfields == -1:
            return out
        if nfields != 2:
            raise ValueError(f"unexpected field count {nfields} in binary COPY")
        (n,) = _FIELD.unpack_from(buf, pos)
        tag_id = _FIELD.unpack_from(buf, pos + 4)[0]
        pos += 4 + n
        (n,) = _FIELD.unpack_from(buf, pos)
        pos += 4
        if n < 0 or n % RECORD.itemsize:
            raise ValueError("binary COPY blob is not a whole number of records")
        out.append((tag_id, np.frombuffer(buf[pos : pos + n], dtype=RECORD)))
        pos += n


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


@dataclass
class WindowReader:
    """Reads windows of readings for ``tags`` (plan order) and folds every window into a
    running SHA-256: the data watermark (sorted, so independent of physical row order)."""

    conn: psycopg.Connection[Any]
    tags: Sequence[SourceTag]
    rows_read: int = 0
    _hash: Any = field(default_factory=hashlib.sha256)

    def __post_init__(self) -> None:
        self._index = {t.id: i for i, t in enumerate(self.tags)}
        self._numeric = [t.id for t in self.tags if t.datatype != "str"]
        self._text = [t.id for t in self.tags if t.datatype == "str"]
        self._lut = np.full(max(self._index, default=0) + 1, -1, np.int32)
        for tid, i in self._index.items():
            self._lut[tid] = i
        self._kind = np.array([{"float": 0, "int": 1, "bool": 2}.get(t.datatype, 3) for t in self.tags], np.int8)

    @property
    def watermark(self) -> str:
        return str(self._hash.hexdigest())

    def read(self, lo_us: int, hi_us: int) -> Chunk:
        """Readings with lo <= time < hi (quality good or uncertain), as a Chunk for the resampler."""
        params = {"lo": _dt(lo_us), "hi": _dt(hi_us)}
        parts: list[Chunk] = []
        if self._numeric:
            chunks: list[bytes] = []
            with self.conn.cursor() as cur, cur.copy(NUMERIC_SQL, {**params, "tags": self._numeric}) as cp:
                for data in cp:
                    chunks.append(bytes(data))
            if chunks:
                for tag_id, recs in parse_blob_copy(b"".join(chunks)):
                    parts.append(self._numeric_chunk(tag_id, recs))
        if self._text:
            with self.conn.cursor() as cur:
                cur.execute(TEXT_SQL, {**params, "tags": self._text})
                parts.append(self._text_chunk(cur.fetchall()))
        chunk = Chunk.concat(parts)
        self.rows_read += int(chunk.t_us.size)
        self._digest(chunk)
        return chunk

    def _numeric_chunk(self, tag_id: int, rows: npt.NDArray[Any]) -> Chunk:
        keep = rows["kind"] != 2  # a text value on a numeric tag is not a number: missing
        if not keep.all():
            rows = rows[keep]
        n = rows.size
        tag = np.full(n, self._index[tag_id], np.int32)
        t = rows["t"].astype(np.int64) + PG_EPOCH_US
        vf = rows["vf"].astype(np.float64)
        vi = rows["vi"].astype(np.int64)
        # An integer tag stored as a float reading (registered before its metadata) is rounded.
        is_int = rows["kind"] == 1
        if is_int.all():
            ivalue = vi
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                ivalue = np.where(is_int, vi, np.round(np.nan_to_num(vf)).astype(np.int64))
        return Chunk(tag, t, vf, rows["lot"].astype(np.int32), ivalue)

    def _text_chunk(self, recs: list[tuple[Any, ...]]) -> Chunk:
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
        order = np.lexsort((c.t_us, c.tag))
        self._hash.update(c.tag[order].astype("<i4").tobytes())
        self._hash.update(c.t_us[order].astype("<i8").tobytes())
        self._hash.update(c.lot[order].astype("<i4").tobytes())
        self._hash.update(c.value[order].astype("<f8").tobytes())
        self._hash.update(c.ints()[order].astype("<i8").tobytes())
        if c.text is not None:
            self._hash.update("\x1f".join(repr(x) for x in c.text[order]).encode())


def _dt(us: int) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _to_us(dt: Any) -> int:
    from datetime import UTC, datetime

    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return int((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


NO_LOT_ID = NO_LOT
