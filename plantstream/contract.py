"""The reading contract: what every stage of plantstream agrees a reading and a context event are.

Contract version 1 (see README "The reading contract"):

* ``plant``      plant id, e.g. ``steel``
* ``equipment``  ISA-95 path ``enterprise/site/area/line/unit`` (1..5 levels, ``/``-separated)
* ``tag``        tag name, unique within the plant
* ``ts_us``      source timestamp, UTC, integer microseconds since the Unix epoch
* ``value``      float, int, bool or str, kept exact end to end
* ``unit``       unit symbol as the source states it (normalized downstream)
* ``quality``    good / uncertain / bad, plus the raw OPC-UA status code where there is one
* ``origin``     opcua / mqtt / sparkplug / modbus
* ``source``     id of the edge source that assigned ``seq``
* ``seq``        per-source sequence number, strictly increasing across agent restarts
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CONTRACT_VERSION = 1

Value = float | int | bool | str


class Quality(enum.IntEnum):
    GOOD = 0
    UNCERTAIN = 1
    BAD = 2

    @classmethod
    def from_opcua_status(cls, code: int) -> Quality:
        """OPC-UA Part 4 7.34: the two top bits of a StatusCode give its severity."""
        severity = (code >> 30) & 0b11
        if severity == 0:
            return cls.GOOD
        if severity == 1:
            return cls.UNCERTAIN
        return cls.BAD


class Origin(enum.IntEnum):
    """How the edge got a reading: one byte on the wire (docs/wire-format.md).

    Open-ended, so a new connector never breaks an older consumer: an id 1..255 this build does
    not know decodes to a pseudo-member labelled ``origin_<id>`` and travels through streams and
    sinks like any other (0 and ids beyond a byte are refused). MODBUS came after contract version
    1 shipped: builds from before this rule dead-letter its batches ('bad dictionary or origin')."""

    OPCUA = 1
    MQTT = 2
    SPARKPLUG = 3
    MODBUS = 4

    @classmethod
    def _missing_(cls, value: object) -> Origin | None:
        if type(value) is not int or not 1 <= value <= 255:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"ORIGIN_{value}"
        member._value_ = value
        return cls._value2member_map_.setdefault(value, member)  # type: ignore[return-value]

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(slots=True, frozen=True)
class Reading:
    plant: str
    equipment: str
    tag: str
    ts_us: int
    value: Value
    unit: str
    quality: Quality
    origin: Origin
    source: str
    seq: int
    status_code: int | None = None
    server_ts_us: int | None = None
    # Stamped by the streams stage; empty at the edge.
    lot: str | None = None
    reason: str | None = None

    @property
    def key(self) -> str:
        """Kafka key: every tag of one equipment unit shares a partition, so per-tag order holds."""
        return f"{self.plant}/{self.equipment}"

    @property
    def dedup_key(self) -> tuple[str, str, int, int]:
        return (self.plant, self.tag, self.ts_us, self.seq)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.ts_us / 1e6, tz=UTC)


@dataclass(slots=True, frozen=True)
class ReadingColumn:
    """One per-reading column of a reading batch (``producers.codec.ReadingBatch``).

    ``name`` is the batch attribute, the :class:`Reading` field and the column's name in
    docs/wire-format.md. ``dtype`` is the numpy dtype its values fit ("object" for text and for
    ``value``, which mixes float, int, bool and str). ``wire`` is how the batch body carries it:
    ``dict`` (strings, dictionary-encoded once per batch: a names array, then a codes array),
    ``int``, ``str`` or ``value`` (float, int, bool or str). ``nullable``: entries may be None,
    and a column whose entries are all None travels as a single nil.
    """

    name: str
    dtype: str
    wire: str
    nullable: bool = False


# The per-reading columns, in wire order (after the batch's plant, equipment, origin, source):
# the one declaration the codec, the edge batcher, streams and the sink derive theirs from
# (producers/tests/test_reading_columns.py fails for a consumer that does not follow it).
READING_COLUMNS: tuple[ReadingColumn, ...] = (
    ReadingColumn("tag", "object", "dict"),
    ReadingColumn("unit", "object", "dict"),
    ReadingColumn("ts_us", "int64", "int"),
    ReadingColumn("value", "object", "value"),
    ReadingColumn("quality", "int16", "int"),
    ReadingColumn("status_code", "int64", "int", nullable=True),
    ReadingColumn("seq", "int64", "int"),
    ReadingColumn("server_ts_us", "int64", "int", nullable=True),
    ReadingColumn("lot", "object", "str", nullable=True),
    ReadingColumn("reason", "object", "str", nullable=True),
)
READING_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in READING_COLUMNS)


class ContextKind(enum.StrEnum):
    LOT_START = "lot_start"
    LOT_END = "lot_end"
    GENEALOGY = "genealogy"
    LAB_RESULT = "lab_result"


@dataclass(slots=True, frozen=True)
class ContextEvent:
    """Material context: which lot is on which equipment, where it came from, what the lab found.

    ``lot_kind`` is heat, slab, coil, batch, doff, spool, ... ``material`` names a material
    spec (e.g. ``EN10025-2:S355J2``). Genealogy events carry ``parents`` and a ``relation``
    (split, merge, transform). Lab results carry ``results``: property -> (value, unit).
    """

    kind: ContextKind
    plant: str
    equipment: str
    ts_us: int
    lot: str
    lot_kind: str = ""
    material: str = ""
    parents: tuple[str, ...] = ()
    relation: str = ""
    results: dict[str, tuple[float, str]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.plant}/{self.equipment}"


class ContractError(ValueError):
    """A record that breaks the contract; the message names the field (it becomes a dead letter's reason)."""


@dataclass(slots=True, frozen=True)
class Aggregate:
    """One closed window of one tag (streams emits it, the sink and the monitor read it).

    ``window`` is ``"1s"`` or ``"1m"``; statistics are None when the window held no numeric value;
    ``twa`` is the time-weighted average. The field order is the wire order (AGGREGATE_FIELDS).
    """

    plant: str
    equipment: str
    tag: str
    window: str
    start_us: int
    count: int
    bad_count: int
    min: float | None
    max: float | None
    mean: float | None
    last: float | None
    stddev: float | None
    twa: float | None
    unit: str
    lot: str | None


AGGREGATE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Aggregate))


class DeviationKind(enum.StrEnum):
    PROCESS = "process"  # a spec-tied tag outside its process limits (open, then closed)
    LAB = "lab"  # a lab result outside its lab limits (lot-level, closed)
    LATE_DATA = "late_data"  # readings that arrived after their window closed (closed)


class DeviationStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


# The deviation map's core keys, in wire order; other keys are details (docs/wire-format.md).
DEVIATION_KEYS: tuple[str, ...] = (
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
# Typed details, on the wire only when set.
DEVIATION_DETAIL_KEYS: tuple[str, ...] = ("unit", "limit_min", "limit_max")
_I64 = 1 << 63
_MAX_TEXT = 4096  # ids, names and paths; the database and the live page keep them whole


def _check_plain(where: str, v: object, depth: int = 0) -> None:
    """Details are stored as JSON: scalars, finite numbers, lists and string-keyed maps, shallow."""
    if depth > 8:
        raise ContractError(f"deviation detail {where!r} is nested too deeply")
    if v is None or isinstance(v, bool | str):
        return
    if isinstance(v, int):
        if not -_I64 <= v < _I64:
            raise ContractError(f"deviation detail {where!r} is an integer beyond 64 bits")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ContractError(f"deviation detail {where!r} is not finite ({v!r})")
        return
    if isinstance(v, list | tuple):
        for x in v:
            _check_plain(where, x, depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise ContractError(f"deviation detail {where!r} has a non-string key {k!r}")
            _check_plain(where, x, depth + 1)
        return
    raise ContractError(f"deviation detail {where!r} must be JSON data, got {type(v).__name__}")


@dataclass(slots=True, frozen=True)
class Deviation:
    """A deviation record on Topics.deviations: streams builds it, the sink upserts it by ``id``
    (a re-emission with the same id, e.g. the close of an open one, updates the row), the monitor
    shows it live.

    ``limit`` is the bound ``peak`` crossed; ``limit_min``/``limit_max`` the limits in force, in
    ``unit``. ``details`` holds the kind's other facts (``duration_s``, ``count``, ``reason``,
    ``window_start_us``, ``source``, ...), carried and stored as they are.
    """

    id: str
    kind: str
    status: DeviationStatus
    plant: str
    equipment: str
    start_us: int
    end_us: int | None = None
    lot: str | None = None
    spec: str | None = None
    property: str | None = None
    tag: str | None = None
    peak: float | None = None
    limit: float | None = None
    unit: str | None = None
    limit_min: float | None = None
    limit_max: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @builtins.property  # the field ``property`` shadows the builtin in this class body
    def key(self) -> str:
        return f"{self.plant}/{self.equipment}"

    def to_map(self) -> dict[str, Any]:
        """The wire map: the core keys always (nil where unset), typed details when set, then ``details``."""
        out: dict[str, Any] = {k: getattr(self, k) for k in DEVIATION_KEYS}
        out["kind"], out["status"] = str(self.kind), self.status.value
        for k in DEVIATION_DETAIL_KEYS:
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        for k, v in self.details.items():
            out.setdefault(k, v)
        return out

    def replace(self, **changes: Any) -> Deviation:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_map(cls, d: Mapping[Any, Any]) -> Deviation:
        """Read a deviation map (any producer's), checking every field; ContractError names the bad one.

        ``status`` may come as ``state`` (what streams wrote before the contract typed it) and
        defaults to open; ``kind`` defaults to process and an id, when absent, is derived from
        kind/plant/lot/tag/property/start so a re-emission still lands on the same row; without
        ``limit``, the bound ``peak`` crossed is taken from ``limit_min``/``limit_max``. A kind this
        reader does not know is carried as it is (a newer producer never breaks an older reader).
        """
        for k in d:
            if not isinstance(k, str):
                raise ContractError(f"deviation key {k!r} must be a string")

        def text(k: str) -> str | None:
            v = d.get(k)
            if v is None or v == "":
                return None
            if not isinstance(v, str):
                raise ContractError(f"deviation field {k!r} must be a string, got {type(v).__name__}")
            if len(v) > _MAX_TEXT:
                raise ContractError(f"deviation field {k!r} is {len(v)} characters long (at most {_MAX_TEXT})")
            return v

        def num(k: str, finite: bool = False) -> float | None:
            v = d.get(k)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ContractError(f"deviation field {k!r} must be a number, got {type(v).__name__}")
            if finite and not math.isfinite(v):
                raise ContractError(f"deviation field {k!r} must be finite, got {v!r}")
            return float(v)

        def micros(k: str) -> int | None:
            v = d.get(k)
            if v is None:
                return None
            if type(v) is not int or not -_I64 <= v < _I64:
                raise ContractError(f"deviation field {k!r} must be integer microseconds, got {v!r}")
            return v

        plant = text("plant")
        if plant is None:
            raise ContractError("deviation field 'plant' is required")
        start = micros("start_us")
        if start is None:
            raise ContractError("deviation field 'start_us' (integer microseconds) is required")
        status_raw = text("status") or text("state") or DeviationStatus.OPEN.value
        try:
            status = DeviationStatus(status_raw)
        except ValueError:
            raise ContractError(f"deviation field 'status' must be open or closed, got {status_raw!r}") from None
        kind = text("kind") or DeviationKind.PROCESS.value
        lot, tag, prop = text("lot"), text("tag"), text("property")
        ident = (
            text("id")
            or hashlib.sha1(
                "|".join((kind, plant, lot or "", tag or "", prop or "", str(start))).encode("utf-8", "surrogatepass")
            ).hexdigest()
        )
        peak, limit, lo, hi = num("peak"), num("limit"), num("limit_min", True), num("limit_max", True)
        if limit is None and peak is not None:
            limit = lo if lo is not None and peak < lo else hi if hi is not None and peak > hi else None
        known = {*DEVIATION_KEYS, *DEVIATION_DETAIL_KEYS, "state"}
        details = {k: v for k, v in d.items() if k not in known}
        for k, v in details.items():
            _check_plain(k, v)
        return cls(
            id=ident,
            kind=kind,
            status=status,
            plant=plant,
            equipment=text("equipment") or "",
            start_us=start,
            end_us=micros("end_us"),
            lot=lot,
            spec=text("spec"),
            property=prop,
            tag=tag,
            peak=peak,
            limit=limit,
            unit=text("unit"),
            limit_min=lo,
            limit_max=hi,
            details=details,
        )


def now_us() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1_000_000)


def validate_equipment_path(path: str) -> str:
    parts = path.split("/")
    if not 1 <= len(parts) <= 5 or any(not p for p in parts):
        raise ValueError(f"equipment path {path!r} must have 1 to 5 non-empty ISA-95 levels separated by '/'")
    return path


class Grade(enum.StrEnum):
    """Data grade per GB/T 43697-2024 data classification and grading."""

    CORE = "core"
    IMPORTANT = "important"
    GENERAL = "general"


@dataclass(slots=True, frozen=True)
class TagMeta:
    """What a tag is. Published by the edge from its config on a compacted topic (key plant/tag),
    so streams (validation, units) and sinks (tag registry) learn tags without sharing files."""

    plant: str
    tag: str
    equipment: str
    unit: str
    datatype: str = "float"  # float | int | bool | str
    lo: float | None = None  # engineering range
    hi: float | None = None
    roc_limit: float | None = None  # max |d value / d t| per second, where configured
    # Fail closed: a tag whose grade was never stated is core (GB/T 43697-2024's strictest).
    grade: Grade = Grade.CORE
    description: str = ""
    source_address: str = ""  # node id or topic, for operators
    spec_property: str = ""  # material-spec property this tag is checked against, if any
    # Standard property id from the shared vocabulary (plantstream.domain.vocabulary), "" for none:
    # the same quantity in two plants lines up by it, not by tag name.
    std_property: str = ""

    @property
    def key(self) -> str:
        return f"{self.plant}/{self.tag}"
