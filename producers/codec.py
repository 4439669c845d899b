"""Wire codec for every plantstream Kafka message.

Layout: ``b"PS"`` magic, one byte schema version, one byte message kind, then a msgpack body.
The version sits outside the body so a consumer can refuse a message it does not understand
without parsing it. Reading batches are columnar (one list per field, tag names and units
dictionary-encoded) because per-message overhead, not bytes, bounds Kafka throughput from Python;
msgpack keeps int, float, bool and str distinct, so values stay exact.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from plantstream.contract import (
    AGGREGATE_FIELDS,
    READING_COLUMN_NAMES,
    READING_COLUMNS,
    Aggregate,
    ContextEvent,
    ContextKind,
    ContractError,
    Deviation,
    Grade,
    Origin,
    Quality,
    Reading,
    TagMeta,
    Value,
)

MAGIC = b"PS"
SCHEMA_VERSION = 1
HEADER_LEN = 4


class Kind(enum.IntEnum):
    READINGS = 1
    AGGREGATES = 2
    DEVIATION = 3
    CONTEXT = 4
    TAG_META = 5


class CodecError(ValueError):
    """A message that cannot be decoded; ``reason`` is what goes to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _header(kind: Kind) -> bytes:
    return MAGIC + bytes((SCHEMA_VERSION, kind))


def _pack(kind: Kind, body: object) -> bytes:
    # msgpack ships no type information; packb always returns bytes.
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return _header(kind) + packed


def _body(data: bytes, kind: Kind) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"message value is {type(data).__name__}, not bytes")
    if len(data) < HEADER_LEN or bytes(data[:2]) != MAGIC:
        raise CodecError("not a plantstream message (bad magic)")
    version, got = data[2], data[3]
    if version != SCHEMA_VERSION:
        raise CodecError(f"unsupported schema version {version} (this build reads {SCHEMA_VERSION})")
    if got != kind:
        raise CodecError(f"message kind {got} where {int(kind)} ({kind.name}) was expected")
    try:
        return msgpack.unpackb(memoryview(data)[HEADER_LEN:], raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CodecError(f"corrupt body: {exc}") from exc


def peek_kind(data: bytes) -> Kind:
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        raise CodecError("not a plantstream message (bad magic)")
    if data[2] != SCHEMA_VERSION:
        raise CodecError(f"unsupported schema version {data[2]} (this build reads {SCHEMA_VERSION})")
    try:
        return Kind(data[3])
    except ValueError:
        raise CodecError(f"unknown message kind {data[3]}") from None


# A reading batch's per-batch fields, before its per-reading columns (contract.READING_COLUMNS).
BATCH_FIELDS = ("plant", "equipment", "origin", "source")


@dataclass(slots=True)
class ReadingBatch:
    """Readings of one source on one equipment unit, columnar, in source order.

    The columns are ``contract.READING_COLUMNS``, spelled out here for the type checker (a test
    holds them to the declaration: same names, same order)."""

    plant: str
    equipment: str
    origin: Origin
    source: str
    tag: list[str] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    value: list[Value] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    status_code: list[int | None] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    server_ts_us: list[int | None] = field(default_factory=list)
    lot: list[str | None] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts_us)

    @property
    def key(self) -> str:
        return f"{self.plant}/{self.equipment}"

    def append(self, r: Reading) -> None:
        for name in READING_COLUMN_NAMES:
            getattr(self, name).append(getattr(r, name))
        self.quality[-1] = int(r.quality)  # the column holds the code, not the enum

    def slice(self, lo: int, hi: int) -> ReadingBatch:
        """Rows ``lo:hi`` as a batch of the same plant, equipment, origin and source."""
        cols = {name: getattr(self, name)[lo:hi] for name in READING_COLUMN_NAMES}
        return ReadingBatch(self.plant, self.equipment, self.origin, self.source, **cols)

    @classmethod
    def of(cls, readings: Sequence[Reading]) -> ReadingBatch:
        if not readings:
            raise ValueError("a batch needs at least one reading")
        first = readings[0]
        batch = cls(first.plant, first.equipment, first.origin, first.source)
        for r in readings:
            if (r.plant, r.equipment, r.source) != (first.plant, first.equipment, first.source):
                raise ValueError(
                    f"one batch holds one plant/equipment/source; got {r.plant}/{r.equipment} from {r.source!r} "
                    f"beside {first.plant}/{first.equipment} from {first.source!r}"
                )
            batch.append(r)
        return batch

    def readings(self) -> Iterator[Reading]:
        head: dict[str, Any] = {"plant": self.plant, "equipment": self.equipment, "origin": self.origin}
        head["source"] = self.source
        for row in zip(*(getattr(self, name) for name in READING_COLUMN_NAMES), strict=True):
            kw: dict[str, Any] = dict(zip(READING_COLUMN_NAMES, row, strict=True))
            kw["quality"] = Quality(kw["quality"])
            yield Reading(**head, **kw)


def _dict_encode(values: list[str]) -> tuple[list[str], list[int]]:
    index: dict[str, int] = {}
    codes = [index.setdefault(v, len(index)) for v in values]
    return list(index), codes


def _optional(col: list[Any]) -> list[Any] | None:
    # Columns that are entirely None (the common case) cost one byte on the wire.
    return col if any(v is not None for v in col) else None


# How each column travels, from the declaration: a dictionary-encoded one as two arrays (names,
# codes), a nullable one as nil when all None, the others as they are. Body: BATCH_FIELDS, then these.
_DICT, _NULLABLE, _PLAIN = 0, 1, 2
_LAYOUT: tuple[tuple[str, int], ...] = tuple(
    (c.name, _DICT if c.wire == "dict" else _NULLABLE if c.nullable else _PLAIN) for c in READING_COLUMNS
)
READINGS_BODY_LEN = len(BATCH_FIELDS) + sum(2 if how == _DICT else 1 for _, how in _LAYOUT)


def encode_readings(batch: ReadingBatch | Sequence[Reading]) -> bytes:
    if not isinstance(batch, ReadingBatch):
        batch = ReadingBatch.of(batch)
    body: list[Any] = [batch.plant, batch.equipment, int(batch.origin), batch.source]
    for name, how in _LAYOUT:
        col = getattr(batch, name)
        if how == _PLAIN:
            body.append(col)
        elif how == _NULLABLE:
            body.append(_optional(col))
        else:
            body += _dict_encode(col)
    return _pack(Kind.READINGS, body)


_STR = str


_INT_ONLY = frozenset({int})
_QUALITIES = frozenset({0, 1, 2})
_VALUE_TYPES = frozenset({float, int, bool, str})


# (name, how, position after BATCH_FIELDS) of each column in the body.
_DECODE: tuple[tuple[str, int, int], ...] = tuple(
    (name, how, sum(2 if h == _DICT else 1 for _, h in _LAYOUT[:k])) for k, (name, how) in enumerate(_LAYOUT)
)
_ROWS_FROM = next(pos for name, _, pos in _DECODE if name == "ts_us")  # the column that gives the row count


def decode_readings(data: bytes) -> ReadingBatch:
    body = _body(data, Kind.READINGS)
    try:
        plant, equipment, origin, source, *body_cols = body
    except (TypeError, ValueError):
        body_cols = None
    if body_cols is None or len(body_cols) != READINGS_BODY_LEN - len(BATCH_FIELDS):
        raise CodecError(f"readings body must be a {READINGS_BODY_LEN}-element array")
    ts = body_cols[_ROWS_FROM]
    n = len(ts) if isinstance(ts, list) else -1
    if not (isinstance(plant, _STR) and isinstance(equipment, _STR) and isinstance(source, _STR)):
        raise CodecError("plant, equipment and source must be strings")
    cols: dict[str, Any] = {}
    dicts: list[tuple[str, Any, Any]] = []
    for name, how, pos in _DECODE:
        col = body_cols[pos]
        if how == _NULLABLE:
            if col is None:
                col = [None] * n
            elif not isinstance(col, list) or len(col) != n:
                raise CodecError(f"column {name!r} has the wrong length")
        else:
            codes = body_cols[pos + 1] if how == _DICT else col
            if not isinstance(codes, list) or len(codes) != n:
                got = len(codes) if isinstance(codes, list) else "no"
                raise CodecError(f"column {name!r} has {got} rows, expected {n}")
            if how == _DICT:
                dicts.append((name, col, codes))
                continue
        cols[name] = col
    # Column checks run at C speed (map/set) - they are per reading, in every consumer's hot path;
    # the slow loop only runs to name the offending row.
    try:
        org = Origin(origin)
        for name, names, codes in dicts:
            cols[name] = list(map(names.__getitem__, codes))
    except (ValueError, IndexError, TypeError, KeyError, AttributeError) as exc:
        raise CodecError(f"bad dictionary or origin: {exc}") from None
    if not set(map(type, ts)) <= _INT_ONLY:
        raise CodecError("ts_us must be integers (microseconds)")
    quality = cols["quality"]
    try:
        quality_ok = set(quality) <= _QUALITIES
    except TypeError:  # an unhashable element
        quality_ok = False
    if not quality_ok:
        raise CodecError("quality must be 0 (good), 1 (uncertain) or 2 (bad)")
    values = cols["value"]
    if not set(map(type, values)) <= _VALUE_TYPES:
        for i, v in enumerate(values):
            if not isinstance(v, float | int | str):  # bool is an int
                raise CodecError(
                    f"value of row {i} ({cols['tag'][i]!r}) is {type(v).__name__}; expected float, int, bool or str"
                )
    return ReadingBatch(plant, equipment, org, source, **cols)


# --- aggregates --------------------------------------------------------------------------------

# Aggregate and AGGREGATE_FIELDS are the contract's (plantstream.contract); the wire order is the field order.


def encode_aggregates(aggs: Iterable[Aggregate]) -> bytes:
    rows = [[getattr(a, f) for f in AGGREGATE_FIELDS] for a in aggs]
    return _pack(Kind.AGGREGATES, rows)


def decode_aggregates(data: bytes) -> list[Aggregate]:
    rows = _body(data, Kind.AGGREGATES)
    if not isinstance(rows, list):
        raise CodecError("aggregates body must be an array")
    try:
        return [Aggregate(*row) for row in rows]
    except TypeError as exc:
        raise CodecError(f"bad aggregate row: {exc}") from None


# --- deviations and context events (low volume: maps, self-describing) -------------------------


def encode_deviation(dev: Deviation) -> bytes:
    return _pack(Kind.DEVIATION, dev.to_map())


def encode_deviation_map(dev: Mapping[str, Any]) -> bytes:
    """A deviation map as it is, unchecked: what another (older, newer or hostile) producer may send."""
    return _pack(Kind.DEVIATION, dict(dev))


def decode_deviation_map(data: bytes) -> dict[str, Any]:
    """The deviation message's map as it was sent (``topics tail`` shows it; readers use decode_deviation)."""
    body = _body(data, Kind.DEVIATION)
    if not isinstance(body, dict):
        raise CodecError("deviation body must be a map")
    return body


def decode_deviation(data: bytes) -> Deviation:
    try:
        return Deviation.from_map(decode_deviation_map(data))
    except ContractError as exc:
        raise CodecError(str(exc)) from None


def context_to_dict(ev: ContextEvent) -> dict[str, Any]:
    """A context event as plain data (the wire body; also what ledgers and logs record)."""
    return {
        "kind": ev.kind.value,
        "plant": ev.plant,
        "equipment": ev.equipment,
        "ts_us": ev.ts_us,
        "lot": ev.lot,
        "lot_kind": ev.lot_kind,
        "material": ev.material,
        "parents": list(ev.parents),
        "relation": ev.relation,
        "results": {k: list(v) for k, v in ev.results.items()},
        "attrs": ev.attrs,
    }


def encode_context(ev: ContextEvent) -> bytes:
    return _pack(Kind.CONTEXT, context_to_dict(ev))


def decode_context(data: bytes) -> ContextEvent:
    body = _body(data, Kind.CONTEXT)
    if not isinstance(body, dict):
        raise CodecError("context body must be a map")
    try:
        text = {k: body.get(k, "") for k in ("plant", "equipment", "lot", "lot_kind", "material", "relation")}
        for k in ("plant", "equipment", "lot"):
            if k not in body:
                raise KeyError(k)
        bad = [k for k, v in text.items() if not isinstance(v, str)]
        results, parents, attrs = body.get("results", {}), body.get("parents", ()), body.get("attrs", {})
        if bad or not isinstance(results, dict) or not isinstance(parents, list | tuple) or not isinstance(attrs, dict):
            raise TypeError(f"field types: {bad or [k for k in ('results', 'parents', 'attrs') if k in body]}")
        if not all(isinstance(x, str) for x in parents) or not all(isinstance(k, str) for k in results):
            raise TypeError("parents and result names must be strings")
        return ContextEvent(
            kind=ContextKind(body["kind"]),
            ts_us=int(body["ts_us"]),
            parents=tuple(parents),
            results={k: (float(v[0]), str(v[1])) for k, v in results.items()},
            attrs=attrs,
            **text,
        )
    except (KeyError, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise CodecError(f"bad context event: {exc!r}") from None


# --- tag metadata ------------------------------------------------------------------------------

_TAG_FIELDS = (
    "plant",
    "tag",
    "equipment",
    "unit",
    "datatype",
    "lo",
    "hi",
    "roc_limit",
    "grade",
    "description",
    "source_address",
    "spec_property",
)


# Optional keys: written only when set, so a message without one is byte-identical to what an
# older producer sends; a consumer that does not know a key ignores it, a missing one decodes to "".
_TAG_OPTIONAL = ("std_property",)


def encode_tag_meta(meta: TagMeta) -> bytes:
    body = {f: getattr(meta, f) for f in _TAG_FIELDS}
    body["grade"] = meta.grade.value
    for f in _TAG_OPTIONAL:
        if getattr(meta, f):
            body[f] = getattr(meta, f)
    return _pack(Kind.TAG_META, body)


def decode_tag_meta(data: bytes) -> TagMeta:
    body = _body(data, Kind.TAG_META)
    if not isinstance(body, dict):
        raise CodecError("tag metadata body must be a map")
    try:
        kw = {f: body[f] for f in (*_TAG_FIELDS, *_TAG_OPTIONAL) if f in body}
        if not all(isinstance(kw.get(f, ""), str) for f in _TAG_OPTIONAL):
            raise ValueError(f"{', '.join(_TAG_OPTIONAL)} must be a string")
        kw["grade"] = Grade(kw.get("grade", "core"))  # unstated: core (fail closed)
        return TagMeta(**kw)
    except (KeyError, ValueError, TypeError) as exc:
        raise CodecError(f"bad tag metadata: {exc!r}") from None
