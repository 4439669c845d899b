"""Readings as PostgreSQL binary COPY data, encoded column-wise with numpy.

psycopg's ``Copy.write_row`` encodes row by row (~2 us a row here, half the sink's time at 50k rows
per flush). Readings have few shapes: the value is one of four types and three columns may be
NULL, so rows are grouped by shape and each group is laid out as one numpy structured array in the
wire format (per row: field count, then per field a length - or -1 for NULL - and big-endian
data). Text values, which vary in width, are packed row by row with ``struct``.

Columns, their order and types come from the reading contract (``contract.READING_COLUMNS``,
in its order) through :data:`STORED_AS`, which says where each reading column goes in the
``readings`` table: ``tag_id int4, time timestamptz|int8, v_float float8, v_int int8, v_bool bool,
v_text text, quality int2, status_code int8, seq int8, server_time timestamptz|int8, lot_id int4``
(:data:`COPY_COLUMNS`); times are Unix microseconds and ``time_origin_us`` is subtracted
(PostgreSQL's 2000-01-01 for timestamptz, 0 for the staging table's bigint).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from plantstream.contract import READING_COLUMNS, Value

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

# Where each reading column goes: the ReadingColumns attribute the sink fills from it (tag and lot
# become registry ids) and the readings columns it becomes (the value: one of four, by its type).
# () for what readings does not keep: the unit lives in the tag registry, the reason nowhere.
# A reading column missing here fails the import: a new column must be placed (or left out) here.
STORED_AS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "tag": ("tag_id", (("tag_id", "int4"),)),
    "unit": ("", ()),
    "ts_us": ("ts_us", (("time", "timestamptz"),)),
    "value": ("value", (("v_float", "float8"), ("v_int", "int8"), ("v_bool", "bool"), ("v_text", "text"))),
    "quality": ("quality", (("quality", "int2"),)),
    "status_code": ("status_code", (("status_code", "int8"),)),
    "seq": ("seq", (("seq", "int8"),)),
    "server_ts_us": ("server_ts_us", (("server_time", "timestamptz"),)),
    "lot": ("lot_id", (("lot_id", "int4"),)),
    "reason": ("", ()),
}


@dataclass(slots=True, frozen=True)
class CopyColumn:
    """One column of the COPY stream, in stream order."""

    name: str  # in readings
    pg: str  # its binary COPY type in readings
    source: str  # the reading column (contract) it holds
    attr: str  # the ReadingColumns attribute it is taken from
    nullable: bool

    @property
    def staging_name(self) -> str:
        """Its name in the staging table, where times are bigint Unix microseconds."""
        return self.source if self.pg == "timestamptz" else self.name

    @property
    def staging_pg(self) -> str:
        return "int8" if self.pg == "timestamptz" else self.pg


COPY_COLUMNS: tuple[CopyColumn, ...] = tuple(
    CopyColumn(name, pg, c.name, STORED_AS[c.name][0], c.nullable)
    for c in READING_COLUMNS
    for name, pg in STORED_AS[c.name][1]
)
FIELDS = len(COPY_COLUMNS)
DIRECT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COPY_COLUMNS)  # COPY readings (...)
STAGING_COLUMNS: tuple[str, ...] = tuple(c.staging_name for c in COPY_COLUMNS)  # COPY ps_stage_readings (...)

FLOAT, INT, BOOL, TEXT = 0, 1, 2, 3
KIND: dict[type, int] = {float: FLOAT, int: INT, bool: BOOL, str: TEXT}
_VALUE_KIND = {"float8": FLOAT, "int8": INT, "bool": BOOL, "text": TEXT}
_VALUE_TYPE = {FLOAT: (">f8", 8), INT: (">i8", 8), BOOL: ("u1", 1)}
# numpy dtype, size and struct code of each fixed-width type
_FIXED = {"int2": (">i2", 2, "h"), "int4": (">i4", 4, "i"), "int8": (">i8", 8, "q"), "timestamptz": (">i8", 8, "q")}
# Each nullable column has a bit in a row's shape above the value kind's two bits.
_NULL_BIT = {c.name: 4 << k for k, c in enumerate(c for c in COPY_COLUMNS if c.nullable)}
# The non-value columns, each with its dtype and size, before and after the value's four.
_VALUE_COLS = [c for c in COPY_COLUMNS if c.source == "value"]
_first_v = COPY_COLUMNS.index(_VALUE_COLS[0])
_BEFORE = [(c, *_FIXED[c.pg]) for c in COPY_COLUMNS[:_first_v]]
_AFTER = [(c, *_FIXED[c.pg]) for c in COPY_COLUMNS[_first_v + len(_VALUE_COLS) :]]
_V_ORDER = [_VALUE_KIND[c.pg] for c in _VALUE_COLS]
if sorted(_V_ORDER) != [FLOAT, INT, BOOL, TEXT] or any(c.source == "value" for c, *_ in _BEFORE + _AFTER):
    raise ImportError("copybin: the value must become v_float, v_int, v_bool, v_text, side by side")


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
        return ReadingColumns(**{name: getattr(self, name)[lo:hi] for name in _ROW_ATTRS})


_ROW_ATTRS = tuple(ReadingColumns.__dataclass_fields__)


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
    kinds = np.zeros(n, dtype=np.int16) if all_float else np.array(list(map(KIND.__getitem__, types)), dtype=np.int16)
    shape = kinds
    # Each non-value column as int64 (NULLs as 0, never written) and, where nullable, its NULL mask.
    arrays: dict[str, np.ndarray] = {}
    for c, _, _, _ in (*_BEFORE, *_AFTER):
        col = getattr(cols, c.attr)
        if c.nullable:
            nulls = _nulls(col, n)
            shape = shape | (nulls.astype(np.int16) * _NULL_BIT[c.name])
            arr = _ints(col, nulls)
        else:
            arr = np.array(col, dtype=np.int64)
        arrays[c.name] = arr - time_origin_us if c.pg == "timestamptz" else arr
    values = np.array(cols.value, dtype=np.float64 if all_float else object)
    for s in np.unique(shape).tolist():
        idx = np.flatnonzero(shape == s)
        kind = s & 3
        if kind == TEXT:
            out.append(_text_rows(idx, cols, arrays, s))
            continue
        vtype, vsize = _VALUE_TYPE[kind]
        spec: list[tuple[str, str]] = [("n", ">i2")]
        for c, dt, _, _ in _BEFORE:
            spec += [(f"l_{c.name}", ">i4")] if s & _NULL_BIT.get(c.name, 0) else [(f"l_{c.name}", ">i4"), (c.name, dt)]
        for k in _V_ORDER:  # v_float, v_int, v_bool, v_text: one of them set
            spec += [(f"l_v{k}", ">i4"), ("v", vtype)] if k == kind else [(f"l_v{k}", ">i4")]
        for c, dt, _, _ in _AFTER:
            spec += [(f"l_{c.name}", ">i4")] if s & _NULL_BIT.get(c.name, 0) else [(f"l_{c.name}", ">i4"), (c.name, dt)]
        a = np.empty(len(idx), dtype=np.dtype(spec))
        a["n"] = FIELDS
        for k in _V_ORDER:
            a[f"l_v{k}"] = vsize if k == kind else -1
        a["v"] = values[idx] if all_float else values[idx].astype(np.float64 if kind == FLOAT else np.int64)
        for c, _, size, _ in (*_BEFORE, *_AFTER):
            if s & _NULL_BIT.get(c.name, 0):
                a[f"l_{c.name}"] = -1
            else:
                a[f"l_{c.name}"], a[c.name] = size, arrays[c.name][idx]
        out.append(a.tobytes())
    return b"".join(out)


_NULL = struct.pack(">i", -1)
_FIELD_COUNT = struct.pack(">h", FIELDS)
_TEXT_AT = _V_ORDER.index(TEXT)
_V_BEFORE_TEXT, _V_AFTER_TEXT = _NULL * _TEXT_AT, _NULL * (len(_V_ORDER) - 1 - _TEXT_AT)
_LEN = struct.Struct(">i")


def _packed(
    group: list[tuple[CopyColumn, str, int, str]], arrays: dict[str, np.ndarray], idx: np.ndarray, s: int
) -> list[bytes]:
    """The fields of ``group`` for the rows ``idx`` of shape ``s``, one bytes per row (C-speed map)."""
    fmt = ">"
    args: list[Iterator[int] | list[int]] = []
    for c, _, size, code in group:
        if s & _NULL_BIT.get(c.name, 0):
            fmt += "i"
            args.append(repeat(-1))
        else:
            fmt += "i" + code
            args += [repeat(size), arrays[c.name][idx].tolist()]
    if not args:
        return [b""] * len(idx)
    return list(map(struct.Struct(fmt).pack, *args))


def _text_rows(idx: np.ndarray, cols: ReadingColumns, arrays: dict[str, np.ndarray], s: int) -> bytes:
    before = _packed(_BEFORE, arrays, idx, s)
    after = _packed(_AFTER, arrays, idx, s)
    value = cols.value
    parts: list[bytes] = []
    for b, i, a in zip(before, idx.tolist(), after, strict=True):
        text = str(value[i]).encode("utf-8")
        parts += (_FIELD_COUNT, b, _V_BEFORE_TEXT, _LEN.pack(len(text)), text, _V_AFTER_TEXT, a)
    return b"".join(parts)
