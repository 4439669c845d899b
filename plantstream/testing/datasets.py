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
    write(dsn, records(seconds, lot_s, skip))


# --- two lines running different lots at once (the fiber plant's shape) ---------------------------

FIBER = "fiber"
POY = "acme/nantong/spinning/poy1"
CF = "acme/nantong/carbonfiber/cf1"
PET = "PET:POY-288-288"
CFSPEC = "CF:T700-12K"
DOFF_S, SPOOL_S, CREEL_S = 60, 90, 360
# (tag, equipment, unit). The carbon-fibre line has more tags, all sampled at the same instants
# as the spinning line's: under the old rule (the lot of the latest reading in the bucket, ties
# to the first tag by name) nearly every row took the carbon-fibre line's lot.
FIBER_TAGS = (
    ("cf1.creel.tension", f"{CF}/creel", "cN"),
    ("cf1.n2_flow", f"{CF}/furnace", "m**3/h"),
    ("cf1.oven1.temp", f"{CF}/oven1", "degC"),
    ("cf1.speed", f"{CF}/winder", "m/min"),
    ("poy1.speed", f"{POY}/winder", "m/min"),
    ("poy1.titer", f"{POY}/winder", "dtex"),
)


def doff(i: int) -> str:
    return f"D{i + 1:04d}"


def spool(i: int) -> str:
    return f"CF{i + 1:04d}"


def precursor(i: int) -> str:
    return f"PAN{i + 1:03d}"


def fiber_lot_at(equipment: str, i: int) -> str:
    """The lot a reading at second ``i`` on ``equipment`` is stamped with (nearest line, as streams does)."""
    if equipment.startswith(f"{CF}/creel"):
        return precursor(i // CREEL_S)
    if equipment.startswith(CF):
        return spool((i - 30) // SPOOL_S) if i >= 30 else ""
    return doff(i // DOFF_S)


def fiber_records(seconds: int) -> Iterator[Record]:
    """Doffs every 60 s on the spinning line; spools every 90 s (from 30 s) on the carbon-fibre
    line, four to a precursor creel lot (every 360 s, genealogy ``transform``); lab results;
    1 Hz readings stamped with their line's lot."""
    n = 0
    for tag, eq, unit in FIBER_TAGS:
        yield Record(_origin(n), "tags", TagMeta(FIBER, tag, eq, unit, "float", grade=Grade.GENERAL), b"", None)
        n += 1
    events: list[ContextEvent] = []

    def lot(eq: str, start: int, end: int, name: str, kind: str, spec: str, parents: tuple[str, ...] = ()) -> None:
        events.append(ContextEvent(ContextKind.LOT_START, FIBER, eq, T0_US + start * S, name, kind, spec))
        if parents:
            events.append(
                ContextEvent(
                    ContextKind.GENEALOGY, FIBER, eq, T0_US + start * S + 1, name, kind, spec, parents, "transform"
                )
            )
        if end <= seconds:
            events.append(ContextEvent(ContextKind.LOT_END, FIBER, eq, T0_US + end * S, name, kind, spec))
            prop, value, unit = ("tenacity", 2.5, "cN/dtex") if kind == "doff" else ("tensile_strength", 4.9, "GPa")
            events.append(
                ContextEvent(
                    ContextKind.LAB_RESULT,
                    FIBER,
                    eq,
                    T0_US + end * S + 2,
                    name,
                    kind,
                    spec,
                    results={prop: (value, unit)},
                )
            )

    for i in range(0, seconds, DOFF_S):
        lot(POY, i, i + DOFF_S, doff(i // DOFF_S), "doff", PET)
    for i in range(0, seconds, CREEL_S):
        lot(f"{CF}/creel", i, i + CREEL_S, precursor(i // CREEL_S), "precursor", "")
    for i in range(30, seconds, SPOOL_S):
        k = (i - 30) // SPOOL_S
        lot(CF, i, i + SPOOL_S, spool(k), "spool", CFSPEC, (precursor(i // CREEL_S),))
    events.sort(key=lambda e: e.ts_us)
    for ev in events:
        yield Record(_origin(n), "context", ev, b"", None)
        n += 1
    for j, (tag, eq, unit) in enumerate(FIBER_TAGS):  # a batch holds one equipment's readings
        for lo in range(0, seconds, 2000):
            batch = [
                Reading(
                    FIBER, eq, tag, T0_US + i * S, fiber_value(j, i), unit, Quality.GOOD, Origin.OPCUA, "src",
                    i + 1, lot=fiber_lot_at(eq, i) or None,
                )
                for i in range(lo, min(seconds, lo + 2000))
            ]  # fmt: skip
            yield Record(_origin(n), "readings", codec.decode_readings(codec.encode_readings(batch)), b"", None)
            n += 1


def fiber_value(j: int, i: int) -> float:
    return round(10.0 * (j + 1) + (i % 13) * 0.5, 3)


def write(dsn: str, recs: Iterator[Record]) -> None:
    """Migrate ``dsn`` and write ``recs`` through the sink core (one flush per 50 records)."""
    migrate(dsn)
    sink = PostgresSink(dsn)
    sink.connect()
    try:
        pending: list[Record] = []
        for rec in recs:
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
