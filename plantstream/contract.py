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

import enum
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
