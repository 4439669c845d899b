"""Every consumer of the reading's columns agrees with their one declaration
(``contract.READING_COLUMNS``): the codec's batch and body layout, the edge batcher, the streams
processor, the sink's COPY columns and its slicing.

Each check takes the declaration as an argument, and the last test runs every check again with
one column more than the code knows: each must fail, so a column added to the declaration and not
to a consumer cannot pass unnoticed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from plantstream.bench import copyload
from plantstream.contract import (
    READING_COLUMN_NAMES,
    READING_COLUMNS,
    Origin,
    Reading,
    ReadingColumn,
    TagMeta,
    Value,
)
from plantstream.edge.batcher import Batcher, Sample
from plantstream.edge.buffer import Buffer
from plantstream.producers import codec
from plantstream.producers.codec import BATCH_FIELDS, READINGS_BODY_LEN, ReadingBatch, decode_readings, encode_readings
from plantstream.sinks.timescaledb import copybin
from plantstream.sinks.timescaledb import sink as pgsink
from plantstream.streams.logic.processor import CARRIED, STAMPED, Processor, ProcessorConfig, SharedContext

Columns = Sequence[ReadingColumn]
EQ = "acme/site/area/line/unit1"
T0 = 1_700_000_000_000_000


def sample_batch() -> ReadingBatch:
    """Three rows in which every column holds a distinct, non-None value of its declared kind."""
    b = ReadingBatch("steel", EQ, Origin.OPCUA, "src1")
    values: tuple[Value, ...] = (1.5, 7, "RUN")
    for i, value in enumerate(values):
        b.tag.append(f"t{i}")
        b.unit.append(("degC", "", "")[i])
        b.ts_us.append(T0 + i)
        b.value.append(value)
        b.quality.append(i % 3)
        b.status_code.append(0x40000000 + i)
        b.seq.append(100 + i)
        b.server_ts_us.append(T0 + 10 + i)
        b.lot.append(f"L{i}")
        b.reason.append(f"why {i}")
    return b


def rows_of(b: ReadingBatch, columns: Columns) -> list[tuple[Any, ...]]:
    cols = [getattr(b, c.name, ()) for c in columns]
    n = len(b)
    assert all(len(col) == n for col in cols), {c.name: len(col) for c, col in zip(columns, cols, strict=True)}
    return list(zip(*cols, strict=True))


# --- the checks, one per consumer -----------------------------------------------------------------


def check_batch_fields(columns: Columns) -> None:
    fields = tuple(f.name for f in dataclasses.fields(ReadingBatch))
    assert fields == (*BATCH_FIELDS, *(c.name for c in columns)), fields
    reading_fields = {f.name for f in dataclasses.fields(Reading)}
    assert {c.name for c in columns} <= reading_fields, "every column is a Reading field"


def check_codec_body(columns: Columns) -> None:
    b = sample_batch()
    body = msgpack.unpackb(encode_readings(b)[codec.HEADER_LEN :], raw=False)
    assert len(body) == READINGS_BODY_LEN == len(BATCH_FIELDS) + sum(2 if c.wire == "dict" else 1 for c in columns)
    assert body[: len(BATCH_FIELDS)] == ["steel", EQ, int(Origin.OPCUA), "src1"]
    pos = len(BATCH_FIELDS)
    for c in columns:
        col = getattr(b, c.name, None)
        assert col is not None, c.name
        if c.wire == "dict":
            names, codes = body[pos], body[pos + 1]
            assert [names[k] for k in codes] == col, c.name
            pos += 2
        else:
            assert body[pos] == col, c.name
            pos += 1
    assert pos == len(body)
    # A nullable column that is all None travels as one nil; the others never do.
    empty = sample_batch()
    for c in columns:
        if c.nullable:
            setattr(empty, c.name, [None] * len(empty))
    body = msgpack.unpackb(encode_readings(empty)[codec.HEADER_LEN :], raw=False)
    pos = len(BATCH_FIELDS)
    for c in columns:
        assert (body[pos] is None) == c.nullable, c.name
        pos += 2 if c.wire == "dict" else 1
    assert rows_of(decode_readings(encode_readings(empty)), columns) == rows_of(empty, columns)


def check_codec_round_trips(columns: Columns) -> None:
    b = sample_batch()
    want = rows_of(b, columns)
    assert rows_of(decode_readings(encode_readings(b)), columns) == want
    assert rows_of(ReadingBatch.of(list(b.readings())), columns) == want  # readings() and append
    assert rows_of(b.slice(1, 3), columns) == want[1:3]
    assert rows_of(pgsink._slice_batch(b, 0, 2), columns) == want[:2]  # the sink's dead-letter slices
    for r, row in zip(b.readings(), want, strict=True):
        assert tuple(getattr(r, c.name) for c in columns) == row


def check_batcher(columns: Columns, tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "buffer.db")
    try:
        batcher = Batcher("steel", "t.raw", buf, max_readings=1000, max_delay_s=0)
        samples: list[Sample] = [
            (EQ, "t0", T0, 1.5, "degC", 0, None, None, None),
            (EQ, "t1", T0 + 1, 7, "", 2, 0x80310000, T0 + 5, "value: not finite"),
        ]
        assert batcher.add("src1", Origin.OPCUA, samples) == 2
        (entry,) = batcher.take(everything=True)
        b = decode_readings(entry.value)
    finally:
        buf.close()
    got = rows_of(b, columns)
    from_sample = {"tag": 1, "ts_us": 2, "value": 3, "unit": 4, "quality": 5, "status_code": 6}
    from_sample |= {"server_ts_us": 7, "reason": 8}
    for k, s in enumerate(samples):
        row = dict(zip((c.name for c in columns), got[k], strict=True))
        for name, value in row.items():
            if name == "seq":
                assert isinstance(value, int) and value > 0
            elif name == "lot":
                assert value is None  # stamped by streams, never at the edge
            else:
                assert value == s[from_sample[name]], name
    assert got[1][[c.name for c in columns].index("seq")] == got[0][[c.name for c in columns].index("seq")] + 1


def check_streams(columns: Columns) -> None:
    names = {c.name for c in columns}
    assert set(STAMPED) <= names and set(CARRIED) | set(STAMPED) == names, (STAMPED, CARRIED)
    shared = SharedContext()
    for i in range(3):
        shared.register_tag(TagMeta("steel", f"t{i}", EQ, ("degC", "", "")[i], datatype=("float", "int", "str")[i]))
    proc = Processor(shared, ProcessorConfig())
    b = sample_batch()
    b.ts_us = [T0, T0 + 1, T0 + 2]
    b.lot = [None, None, None]
    (clean,) = proc.process_batch(b, 0, T0).clean
    out = rows_of(clean, columns)
    assert len(out) == len(b)
    for c in columns:
        if c.name in CARRIED:
            assert getattr(clean, c.name) == getattr(b, c.name), c.name


def check_sink_copy(columns: Columns) -> None:
    assert tuple(copybin.STORED_AS) == tuple(c.name for c in columns), "every column placed (or left out) by the sink"
    copy = copybin.COPY_COLUMNS
    assert [c.source for c in copy] == [c.name for c in columns for _ in copybin.STORED_AS[c.name][1]], (
        "COPY order follows the contract"
    )
    assert copybin.FIELDS == len(copy) == len(copybin.DIRECT_COLUMNS) == len(copybin.STAGING_COLUMNS)
    declared = {c.name: c for c in columns}
    for cc in copy:
        assert cc.nullable == declared[cc.source].nullable, cc.name
    attrs = {cc.attr for cc in copy}
    assert attrs == {f.name for f in dataclasses.fields(copybin.ReadingColumns)}, "each row attribute is COPYed"
    assert {cc.name: cc.pg for cc in copy} == copyload.TYPES  # what the benchmarks COPY with
    assert f"COPY readings ({', '.join(copybin.DIRECT_COLUMNS)}) FROM STDIN (FORMAT BINARY)" == pgsink._COPY_READINGS
    staging = f"COPY ps_stage_readings ({', '.join(copybin.STAGING_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    assert staging == pgsink._COPY_STAGE_READINGS
    ddl = pgsink._STAGE_DDL.split("ps_stage_readings (", 1)[1].split(");", 1)[0]
    pg_names = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float8": "double precision"}
    pg_names |= {"bool": "boolean", "text": "text"}
    stage_types = dict(part.strip().split(" ", 1) for part in ddl.split(","))
    assert stage_types == {cc.staging_name: pg_names[cc.staging_pg] for cc in copy}


def check_copy_rows(columns: Columns) -> None:
    """One row through the encoder: each field where COPY_COLUMNS says, with its declared width."""
    rows = copybin.ReadingColumns([7], [T0], [1.5], [2], [None], [9], [T0 + 3], [11])
    data = copybin.encode(rows, 0)[len(copybin.SIGNATURE) : -len(copybin.TRAILER)]
    assert int.from_bytes(data[:2], "big") == copybin.FIELDS
    pos, got = 2, {}
    for cc in copybin.COPY_COLUMNS:
        size = int.from_bytes(data[pos : pos + 4], "big", signed=True)
        pos += 4
        got[cc.name] = None if size < 0 else data[pos : pos + size]
        pos += max(size, 0)
    assert pos == len(data)
    assert got == {
        "tag_id": (7).to_bytes(4, "big"),
        "time": T0.to_bytes(8, "big"),
        "v_float": bytes.fromhex("3ff8000000000000"),
        "v_int": None,
        "v_bool": None,
        "v_text": None,
        "quality": (2).to_bytes(2, "big"),
        "status_code": None,
        "seq": (11).to_bytes(8, "big"),
        "server_time": (T0 + 3).to_bytes(8, "big"),
        "lot_id": (9).to_bytes(4, "big"),
    }
    assert {cc.source for cc in copybin.COPY_COLUMNS} <= {c.name for c in columns}


CHECKS: dict[str, Callable[..., None]] = {
    "batch_fields": check_batch_fields,
    "codec_body": check_codec_body,
    "codec_round_trips": check_codec_round_trips,
    "batcher": check_batcher,
    "streams": check_streams,
    "sink_copy": check_sink_copy,
}


def _run(name: str, columns: Columns, tmp_path: Path) -> None:
    check = CHECKS[name]
    if name == "batcher":
        check(columns, tmp_path)
    else:
        check(columns)


@pytest.mark.parametrize("name", CHECKS)
def test_consumer_agrees_with_the_declaration(name: str, tmp_path: Path) -> None:
    _run(name, READING_COLUMNS, tmp_path)


def test_copy_rows_follow_the_declared_columns() -> None:
    check_copy_rows(READING_COLUMNS)


@pytest.mark.parametrize("name", CHECKS)
def test_a_column_no_consumer_knows_fails_every_check(name: str, tmp_path: Path) -> None:
    extended = (*READING_COLUMNS, ReadingColumn("batch_note", "object", "str", nullable=True))
    with pytest.raises((AssertionError, AttributeError, KeyError)):
        _run(name, extended, tmp_path)


def test_declaration_is_well_formed() -> None:
    assert len(set(READING_COLUMN_NAMES)) == len(READING_COLUMNS)
    assert tuple(c.name for c in READING_COLUMNS) == READING_COLUMN_NAMES
    assert {c.wire for c in READING_COLUMNS} <= {"dict", "int", "str", "value"}
    assert not any(c.nullable and c.wire == "dict" for c in READING_COLUMNS)
    assert not set(READING_COLUMN_NAMES) & set(BATCH_FIELDS)
    assert all(np.dtype(c.dtype).kind in "iufbO" for c in READING_COLUMNS)  # real numpy dtypes
