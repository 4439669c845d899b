"""Readings as PostgreSQL binary COPY data, encoded column-wise with numpy.

psycopg's ``Copy.write_row`` encodes row by row (~2 us a row here, half the sink's time at 50k rows
per flush). Readings have few shapes: the value is one of four types and three columns may be
NULL, so rows are grouped by shape and each group is laid out as one numpy structured array in the
wire format (per row: field count, then per field a length - or -1 for NULL - and big-endian
data). Text values, which vary in width, are packed row by row with ``struct``.

Column order and types are the sink's (``tag_id int4, time timestamptz|int8, v_float float8,
v_int int8, v_bool bool, v_text text, quality int2, status_code int8, lot_id int4,
server_time timestamptz|int8, seq int8``); times are Unix microseconds and ``time_origin_us`` is
subtracted (PostgreSQL's 2000-01-01 for timestamptz, 0 for the staging table's bigint).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from plantstream.contract import Value

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
FIELDS = 11

FLOAT, INT, BOOL, TEXT = 0, 1, 2, 3
KIND: dict[type, int] = {float: FLOAT, int: INT, bool: BOOL, str: TEXT}
_VALUE_TYPE = {FLOAT: (">f8", 8), INT: (">i8", 8), BOOL: ("u1", 1)}
_NULL_SC, _NULL_LOT, _NULL_SRV = 4, 8, 16


@dataclass(slots=True)
class ReadingColumns:
    """Rows to COPY, as parallel lists (values of a type in ``KIND``; None = NULL where allowed)."""

    tag_id: list[int] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    value: list[Value] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    status_code: list[int | None] = field(default_factory=list)
    lot_id: list[int | None] = field(default_factory=list)
    server_ts_us: list[int | None] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts_us)

    def slice(self, lo: int, hi: int) -> ReadingColumns:
        return ReadingColumns(
            self.tag_id[lo:hi],
            self.ts_us[lo:hi],
            self.value[lo:hi],
            self.quality[lo:hi],
            self.status_code[lo:hi],
            self.lot_id[lo:hi],
            self.server_ts_us[lo:hi],
            self.seq[lo:hi],
        )


def _nulls(col: list[int | None], n: int) -> np.ndarray:
    k = col.count(None)  # C speed; columns are usually all NULL or all set
    if k == 0:
        return np.zeros(n, dtype=bool)
    if k == n:
        return np.ones(n, dtype=bool)
    return np.fromiter(map(operator.is_, col, repeat(None)), dtype=bool, count=n)


def _ints(col: list[int | None], nulls: np.ndarray) -> np.ndarray:
    if not nulls.any():
        return np.array(col, dtype=np.int64)
    if nulls.all():
        return np.zeros(len(col), dtype=np.int64)  # never written (the rows' fields are NULL)
    obj = np.array(col, dtype=object)
    obj[nulls] = 0
    return obj.astype(np.int64)


def encode(cols: ReadingColumns, time_origin_us: int) -> bytes:
    """Signature, rows and trailer: a whole binary COPY stream.

    Raises OverflowError for an integer outside the column's range (as the database would refuse
    it); the caller handles it like any row the database rejects.
    """
    return b"".join(encode_parts(cols, time_origin_us, len(cols) or 1))


def encode_parts(cols: ReadingColumns, time_origin_us: int, rows_per_part: int) -> Iterator[bytes]:
    """The stream of :func:`encode` in parts of at most ``rows_per_part`` rows (the first part
    starts with the signature, the trailer comes last), encoded lazily: written part by part,
    the database parses one part while the next is encoded."""
    yield SIGNATURE
    n = len(cols)
    for lo in range(0, n, rows_per_part):
        yield _rows(cols if lo == 0 and n <= rows_per_part else cols.slice(lo, lo + rows_per_part), time_origin_us)
    yield TRAILER


def _rows(cols: ReadingColumns, time_origin_us: int) -> bytes:
    n = len(cols)
    out: list[bytes] = []
    types = list(map(type, cols.value))
    all_float = types.count(float) == n
    kinds = np.zeros(n, dtype=np.int8) if all_float else np.array(list(map(KIND.__getitem__, types)), dtype=np.int8)
    sc_null, lot_null, srv_null = _nulls(cols.status_code, n), _nulls(cols.lot_id, n), _nulls(cols.server_ts_us, n)
    shape = kinds | (sc_null.astype(np.int8) * _NULL_SC) | (lot_null.astype(np.int8) * _NULL_LOT)
    shape |= srv_null.astype(np.int8) * _NULL_SRV
    tag = np.array(cols.tag_id, dtype=np.int64)
    ts = np.array(cols.ts_us, dtype=np.int64) - time_origin_us
    quality = np.array(cols.quality, dtype=np.int64)
    seq = np.array(cols.seq, dtype=np.int64)
    sc = _ints(cols.status_code, sc_null)
    lot = _ints(cols.lot_id, lot_null)
    srv = _ints(cols.server_ts_us, srv_null) - time_origin_us
    values = np.array(cols.value, dtype=np.float64 if all_float else object)
    for s in np.unique(shape).tolist():
        idx = np.flatnonzero(shape == s)
        kind = s & 3
        if kind == TEXT:
            out.append(_text_rows(idx, cols, tag, ts, quality, sc, lot, srv, seq, s))
            continue
        vtype, vsize = _VALUE_TYPE[kind]
        spec: list[tuple[str, str]] = [("n", ">i2"), ("l_tag", ">i4"), ("tag", ">i4"), ("l_ts", ">i4"), ("ts", ">i8")]
        for k in (FLOAT, INT, BOOL, TEXT):  # v_float, v_int, v_bool, v_text: one of them set
            spec += [(f"l_v{k}", ">i4"), ("v", vtype)] if k == kind else [(f"l_v{k}", ">i4")]
        spec += [("l_q", ">i4"), ("q", ">i2")]
        spec += [("l_sc", ">i4")] if s & _NULL_SC else [("l_sc", ">i4"), ("sc", ">i8")]
        spec += [("l_lot", ">i4")] if s & _NULL_LOT else [("l_lot", ">i4"), ("lot", ">i4")]
        spec += [("l_srv", ">i4")] if s & _NULL_SRV else [("l_srv", ">i4"), ("srv", ">i8")]
        spec += [("l_seq", ">i4"), ("seq", ">i8")]
        a = np.empty(len(idx), dtype=np.dtype(spec))
        a["n"] = FIELDS
        a["l_tag"], a["tag"] = 4, tag[idx]
        a["l_ts"], a["ts"] = 8, ts[idx]
        for k in (FLOAT, INT, BOOL, TEXT):
            a[f"l_v{k}"] = vsize if k == kind else -1
        a["v"] = values[idx] if all_float else values[idx].astype(np.float64 if kind == FLOAT else np.int64)
        a["l_q"], a["q"] = 2, quality[idx]
        a["l_sc"] = -1
        if not s & _NULL_SC:
            a["l_sc"], a["sc"] = 8, sc[idx]
        a["l_lot"] = -1
        if not s & _NULL_LOT:
            a["l_lot"], a["lot"] = 4, lot[idx]
        a["l_srv"] = -1
        if not s & _NULL_SRV:
            a["l_srv"], a["srv"] = 8, srv[idx]
        a["l_seq"], a["seq"] = 8, seq[idx]
        out.append(a.tobytes())
    return b"".join(out)


_HEAD = struct.Struct(">hi i i q")  # field count; tag_id; time
_NULL = struct.pack(">i", -1)


def _text_rows(
    idx: np.ndarray,
    cols: ReadingColumns,
    tag: np.ndarray,
    ts: np.ndarray,
    quality: np.ndarray,
    sc: np.ndarray,
    lot: np.ndarray,
    srv: np.ndarray,
    seq: np.ndarray,
    s: int,
) -> bytes:
    parts: list[bytes] = []
    for i in idx.tolist():
        text = str(cols.value[i]).encode("utf-8")
        parts.append(_HEAD.pack(FIELDS, 4, int(tag[i]), 8, int(ts[i])))
        parts.append(_NULL * 3 + struct.pack(">i", len(text)) + text)
        parts.append(struct.pack(">ih", 2, int(quality[i])))
        parts.append(_NULL if s & _NULL_SC else struct.pack(">iq", 8, int(sc[i])))
        parts.append(_NULL if s & _NULL_LOT else struct.pack(">ii", 4, int(lot[i])))
        parts.append(_NULL if s & _NULL_SRV else struct.pack(">iq", 8, int(srv[i])))
        parts.append(struct.pack(">iq", 8, int(seq[i])))
    return b"".join(parts)
