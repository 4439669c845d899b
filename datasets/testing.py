"""Test and benchmark data for datasets: a small caster written through the real sink core."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from plantstream.contract import ContextEvent, ContextKind, Grade, Origin, Quality, Reading, TagMeta
from plantstream.producers import codec
from plantstream.sinks.base import Record, RecordOrigin
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink

PLANT = "steel"
EQ = "acme/duisburg/steelmaking/caster1/mould"
SPEC = "EN10025-2:S355J2"
T0_US = 1_748_736_000_000_000  # 2025-06-01T00:00:00Z
S = 1_000_000


@dataclass(frozen=True, slots=True)
class SimTag:
    tag: str
    datatype: str
    grade: Grade
    unit: str


TAGS = (
    SimTag("mould.level", "float", Grade.GENERAL, "mm"),
    SimTag("mould.speed", "float", Grade.IMPORTANT, "m/min"),
    SimTag("mould.recipe_setpoint", "float", Grade.CORE, "degC"),
    SimTag("mould.strands", "int", Grade.GENERAL, "1"),
    SimTag("mould.running", "bool", Grade.GENERAL, ""),
    SimTag("mould.current_heat", "str", Grade.GENERAL, ""),
)


def value(tag: SimTag, i: int) -> float | int | bool | str:
    """Deterministic value of ``tag`` at sample ``i``."""
    if tag.datatype == "float":
        return round(100.0 + (i % 17) * 0.25 + TAGS.index(tag), 3)
    if tag.datatype == "int":
        return 2**40 + i  # beyond float32 exactness: checks int64 stays exact
    if tag.datatype == "bool":
        return i % 3 != 0
    return f"H{i // 60:03d}"


def lot_of(i: int, lot_s: int = 60) -> str:
    return f"H{i // lot_s:03d}"


def _origin(n: int) -> RecordOrigin:
    return RecordOrigin("test", 0, n)


def records(seconds: int, lot_s: int = 60, skip: frozenset[tuple[str, int]] = frozenset()) -> Iterator[Record]:
    """Tag metadata, lot context (start, lab results) and 1 Hz readings for ``seconds``; ``skip``
    removes readings (tag, sample index) to make gaps."""
    n = 0
    for t in TAGS:
        meta = TagMeta(PLANT, t.tag, EQ, t.unit, t.datatype, grade=t.grade, description=f"{t.tag} of caster 1")
        yield Record(_origin(n), "tags", meta, b"", None)
        n += 1
    for lot_i in range(0, seconds, lot_s):
        lot = lot_of(lot_i, lot_s)
        ts = T0_US + lot_i * S
        yield Record(
            _origin(n), "context", ContextEvent(ContextKind.LOT_START, PLANT, EQ, ts, lot, "heat", SPEC), b"", None
        )
        reh = 340.0 + (lot_i // lot_s) * 7 % 40  # some lots below the 355 MPa minimum
        results = {"ReH": (reh, "MPa"), "C": (0.18, "percent")}
        yield Record(
            _origin(n + 1),
            "context",
            ContextEvent(ContextKind.LAB_RESULT, PLANT, EQ, ts + 1, lot, "heat", SPEC, results=results),
            b"",
            None,
        )
        n += 2
    batch: list[Reading] = []
    seq = 0
    for i in range(seconds):
        for t in TAGS:
            if (t.tag, i) in skip:
                continue
            seq += 1
            batch.append(
                Reading(
                    PLANT,
                    EQ,
                    t.tag,
                    T0_US + i * S,
                    value(t, i),
                    t.unit,
                    Quality.GOOD,
                    Origin.OPCUA,
                    "src",
                    seq,
                    lot=lot_of(i, lot_s),
                )
            )
        if len(batch) >= 2000:
            yield Record(_origin(n), "readings", codec.decode_readings(codec.encode_readings(batch)), b"", None)
            n += 1
            batch = []
    if batch:
        yield Record(_origin(n), "readings", codec.decode_readings(codec.encode_readings(batch)), b"", None)


def load(dsn: str, seconds: int, lot_s: int = 60, skip: frozenset[tuple[str, int]] = frozenset()) -> None:
    """Migrate ``dsn`` and write the caster's data through the sink core (one flush per 50 records)."""
    migrate(dsn)
    sink = PostgresSink(dsn)
    sink.connect()
    try:
        pending: list[Record] = []
        for rec in records(seconds, lot_s, skip):
            pending.append(rec)
            if len(pending) >= 50:
                sink.write(pending)
                dead = sink.flush()
                assert not dead, dead
                pending = []
        if pending:
            sink.write(pending)
            dead = sink.flush()
            assert not dead, dead
    finally:
        sink.close()
