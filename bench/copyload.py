"""Readings into PostgreSQL by binary COPY for the benchmarks, in the sink's own column layout.

One loader, two forms, one column declaration (the sink's COPY columns,
``sinks/timescaledb/copybin.COPY_COLUMNS``, derived from the reading contract):

* :func:`block` / :func:`write`: binary COPY data of many readings at once, built with numpy from
  one array per column (no Python per row). The dataset pull, history and TimescaleDB benches load
  millions of readings this way.
* :func:`row` with :data:`COLUMNS` / :data:`TYPES`: one reading as a tuple for psycopg's
  ``write_row``, which is what the COPY limits measure (a client paying per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from plantstream.sinks.timescaledb.copybin import COPY_COLUMNS, SIGNATURE, TRAILER

T0 = datetime(2025, 6, 1, tzinfo=UTC)  # where the benches' data lies (fixed, so runs compare)
T0_US = int(T0.timestamp()) * 1_000_000
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z, the origin of binary timestamps

TYPES: dict[str, str] = {c.name: c.pg for c in COPY_COLUMNS}  # readings column -> binary COPY type
COLUMNS: tuple[str, ...] = tuple(TYPES)
_NUMPY = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "timestamptz": ">i8", "float8": ">f8", "bool": "u1"}
_TIMES = frozenset(name for name, pg in TYPES.items() if pg == "timestamptz")

ColumnData = npt.NDArray[Any] | int | float


def _in_copy_order(names: Sequence[str]) -> list[str]:
    unknown = sorted(set(names) - TYPES.keys())
    if unknown:
        raise KeyError(f"not a column the sink COPYs into readings: {', '.join(unknown)} (have {', '.join(COLUMNS)})")
    if "text" in {TYPES[n] for n in names}:
        raise ValueError("block() lays out fixed-width columns only; v_text rows go through row()")
    return [c for c in COLUMNS if c in names]


def statement(names: Sequence[str], table: str = "readings") -> str:
    """The COPY statement :func:`block` data of ``names`` is written with."""
    return f"COPY {table} ({', '.join(_in_copy_order(names))}) FROM STDIN (FORMAT BINARY)"


def block(columns: Mapping[str, ColumnData]) -> bytes:
    """A whole binary COPY stream (signature to trailer) of the rows in ``columns``: readings
    column name -> one value per row (an array) or one for every row (a scalar); at least one
    array. Times (``time``, ``server_time``) are Unix microseconds. Columns left out are not in
    the statement (their defaults or NULL)."""
    names = _in_copy_order(list(columns))
    n = next((len(v) for v in columns.values() if isinstance(v, np.ndarray)), None)
    if n is None:
        raise ValueError("block() needs at least one column as an array (the row count)")
    spec: list[tuple[str, str]] = [("n", ">i2")]
    for name in names:
        spec += [(f"l_{name}", ">i4"), (name, _NUMPY[TYPES[name]])]
    rows = np.empty(n, dtype=np.dtype(spec))
    rows["n"] = len(names)
    for name in names:
        rows[f"l_{name}"] = rows.dtype[name].itemsize
        value = columns[name]
        rows[name] = value - PG_EPOCH_US if name in _TIMES else value
    return SIGNATURE + rows.tobytes() + TRAILER


def write(conn: psycopg.Connection[Any], columns: Mapping[str, ColumnData], table: str = "readings") -> None:
    """COPY the rows of ``columns`` (see :func:`block`) into ``table``."""
    with conn.cursor().copy(statement(list(columns), table)) as cp:
        cp.write(block(columns))


def row(**values: Any) -> tuple[Any, ...]:
    """One reading as a COPY row in :data:`COLUMNS` order (columns not given are NULL), for
    ``write_row`` with ``set_types(list(TYPES.values()))``."""
    unknown = sorted(values.keys() - TYPES.keys())
    if unknown:
        raise KeyError(f"not a readings COPY column: {', '.join(unknown)}")
    return tuple(values.get(c) for c in COLUMNS)
