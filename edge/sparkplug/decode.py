"""Sparkplug B messages -> samples: a pure state machine of births, deaths, aliases and sequence
numbers (no broker needed; the MQTT wiring is in ``source.py``).

Contracts:

* NBIRTH / DBIRTH register every metric's name, alias and datatype; NDATA / DDATA resolve
  aliases from them. A metric whose alias no birth announced is a dead letter (reason names the
  alias and node) and triggers a rebirth request; the message's other metrics still deliver.
* ``seq`` (0..255, wrapping) is checked per edge node over NBIRTH, DBIRTH, NDATA, DDATA and DDEATH.
  A gap starts the node's reorder timeout (``reorder_timeout_s``): the missing numbers may still
  arrive out of order (every message is decoded and delivered when it comes, whatever its place);
  if some are still missing when it expires (:meth:`SparkplugDecoder.due_rebirths`), a rebirth is
  requested (``NCMD`` ``Node Control/Rebirth``), at most once per ``rebirth_interval_s`` per node.
  With a timeout of 0 a gap requests it at once. A copy behind the expected number that is not
  missing (an old duplicate) is neither a gap nor a new position. Data of a node or device never
  born is dead-lettered and a rebirth requested.
* ``bdSeq``: an NDEATH whose bdSeq differs from the current NBIRTH's is stale (the will of an
  earlier session, delivered late) and is ignored.
* NDEATH marks every metric of the node and of its devices bad, DDEATH those of the device:
  one sample per metric, quality bad, value NaN, at the death's timestamp.
* Values keep their Sparkplug datatype exactly: Int8..Int64 are sign-extended from their
  two's-complement wire form (peers that decode them as unsigned report -1 as 255 or 2**64-1),
  UInt* stay unsigned, Float is the float32 value, Boolean a bool, String/Text/UUID a str,
  DateTime epoch milliseconds (int). ``is_null`` gives a bad sample. DataSet, Bytes, File,
  Template and arrays are not readings: skipped and reported once per metric.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from plantstream.contract import Quality, Value
from plantstream.edge.batcher import Sample
from plantstream.edge.config import SparkplugSource, SparkplugTag
from plantstream.edge.sparkplug import sparkplug_b_pb2 as pb
from plantstream.edge.vet import DEFAULT_LIMITS, Limits, Uncarriable, vet

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"

# Sparkplug B datatypes (specification 3.0, 6.4.16)
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15
_SIGNED_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}
_UNSIGNED_BITS = {UINT8: 8, UINT16: 16, UINT32: 32, UINT64: 64}
_TEXT = {STRING, TEXT, UUID}
DATATYPE_NAMES = {
    0: "Unknown",
    1: "Int8",
    2: "Int16",
    3: "Int32",
    4: "Int64",
    5: "UInt8",
    6: "UInt16",
    7: "UInt32",
    8: "UInt64",
    9: "Float",
    10: "Double",
    11: "Boolean",
    12: "String",
    13: "DateTime",
    14: "Text",
    15: "UUID",
    16: "DataSet",
    17: "Bytes",
    18: "File",
    19: "Template",
    20: "PropertySet",
    21: "PropertySetList",
}
MESSAGE_TYPES = {"NBIRTH", "NDEATH", "DBIRTH", "DDEATH", "NDATA", "DDATA", "NCMD", "DCMD", "STATE"}


class Malformed(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _signed(raw: int, bits: int) -> int:
    raw &= (1 << bits) - 1
    return raw - (1 << bits) if raw >> (bits - 1) else raw


def metric_value(datatype: int, m: Any) -> Value | None:
    """The metric's value as its datatype says; None for a datatype that is not a reading.

    Integers are read from whichever of int_value / long_value the sender used (the spec puts
    UInt32 in int_value; some implementations put it in long_value), then sized to the datatype.
    Raises Malformed when the value field does not fit the datatype.
    """
    kind = m.WhichOneof("value")
    if datatype in _SIGNED_BITS or datatype in _UNSIGNED_BITS or datatype == DATETIME:
        if kind not in ("int_value", "long_value"):
            raise Malformed(f"{DATATYPE_NAMES[datatype]} metric carries {kind or 'no value'}")
        raw = int(getattr(m, kind))
        if datatype in _SIGNED_BITS:
            return _signed(raw, _SIGNED_BITS[datatype])
        if datatype == DATETIME:
            return raw & ((1 << 64) - 1)
        return raw & ((1 << _UNSIGNED_BITS[datatype]) - 1)
    if datatype in (FLOAT, DOUBLE):
        if kind not in ("float_value", "double_value"):
            raise Malformed(f"{DATATYPE_NAMES[datatype]} metric carries {kind or 'no value'}")
        return float(getattr(m, kind))
    if datatype == BOOLEAN:
        if kind != "boolean_value":
            raise Malformed(f"Boolean metric carries {kind or 'no value'}")
        return bool(m.boolean_value)
    if datatype in _TEXT:
        if kind != "string_value":
            raise Malformed(f"{DATATYPE_NAMES[datatype]} metric carries {kind or 'no value'}")
        if not isinstance(m.string_value, str):  # proto2 strings with invalid UTF-8 come back as bytes
            raise Malformed(f"{DATATYPE_NAMES[datatype]} value is not UTF-8")
        return str(m.string_value)
    return None


@dataclass(slots=True)
class MetricInfo:
    name: str
    datatype: int
    equipment: str
    tag: str
    unit: str


@dataclass(slots=True)
class _Scope:
    """The metrics one birth announced (a node's own, or one device's)."""

    online: bool = False
    by_name: dict[str, MetricInfo] = field(default_factory=dict)
    by_alias: dict[int, MetricInfo] = field(default_factory=dict)


@dataclass(slots=True)
class _Node:
    scope: _Scope = field(default_factory=_Scope)
    devices: dict[str, _Scope] = field(default_factory=dict)
    bdseq: int | None = None
    expected_seq: int | None = None
    last_rebirth: float = -1e18
    missing: set[int] = field(default_factory=set)  # seq numbers skipped by a gap, not yet seen
    reorder_deadline: float | None = None  # when the missing ones are given up (rebirth)


@dataclass(slots=True)
class Outcome:
    """What one MQTT message produced."""

    samples: list[Sample] = field(default_factory=list)
    deadletters: list[str] = field(default_factory=list)  # reasons; the message itself is the payload
    rebirth: tuple[str, str] | None = None  # (group, node) to send NCMD Node Control/Rebirth to
    note: str = ""  # why a message produced nothing (for counters/logs)


@dataclass(slots=True)
class Counters:
    births: int = 0
    deaths: int = 0
    stale_deaths: int = 0
    seq_gaps: int = 0
    rebirths_requested: int = 0
    unknown_aliases: int = 0
    reordered: int = 0  # missing seq numbers that arrived within the reorder timeout


class SparkplugDecoder:
    """State of every edge node seen on the source. Not thread-safe: feed it from one thread."""

    def __init__(
        self, cfg: SparkplugSource, clock: Callable[[], float] = time.monotonic, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.cfg = cfg
        self.limits = limits
        self._received_us = 0  # of the message being decoded: the timestamp window's reference
        self.tags: dict[str, SparkplugTag] = {t.tag: t for t in cfg.tags}
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.counters = Counters()
        self.unsupported: dict[str, str] = {}  # tag -> why (reported once by the source)
        self._clock = clock

    # --- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The births this decoder knows (aliases, names, online flags, bdSeq), as JSON-able data:
        persisted beside the buffer so a restarted agent decodes the session backlog it finds
        queued in the broker instead of dead-lettering it until the next birth."""

        def scope(sc: _Scope) -> dict[str, Any]:
            alias_of = {id(m): a for a, m in sc.by_alias.items()}  # every aliased metric is also by name
            metrics = [
                [alias_of.get(id(m)), m.name, m.datatype, m.equipment, m.tag, m.unit]
                for _, m in sorted(sc.by_name.items())
            ]
            return {"online": sc.online, "metrics": metrics}

        return {
            "version": 1,
            "nodes": [
                {
                    "group": g,
                    "node": n,
                    "bdseq": st.bdseq,
                    "scope": scope(st.scope),
                    "devices": {d: scope(sc) for d, sc in sorted(st.devices.items())},
                }
                for (g, n), st in sorted(self.nodes.items())
            ],
        }

    def restore(self, data: dict[str, Any]) -> int:
        """Births from :meth:`snapshot`; returns the nodes restored. The sequence is not restored
        (the next message sets it), so a restart neither invents a gap nor requests a rebirth."""
        if data.get("version") != 1:
            raise ValueError(f"unknown Sparkplug state version {data.get('version')!r}")

        def scope(d: dict[str, Any]) -> _Scope:
            sc = _Scope(online=bool(d["online"]))
            for alias, name, datatype, equipment, tag, unit in d["metrics"]:
                info = MetricInfo(str(name), int(datatype), str(equipment), str(tag), str(unit))
                sc.by_name[info.name] = info
                if alias is not None:
                    sc.by_alias[int(alias)] = info
            return sc

        for n in data["nodes"]:
            st = _Node(scope=scope(n["scope"]), devices={str(k): scope(v) for k, v in n["devices"].items()})
            st.bdseq = None if n["bdseq"] is None else int(n["bdseq"])
            self.nodes[(str(n["group"]), str(n["node"]))] = st
        return len(data["nodes"])

    # --- naming -------------------------------------------------------------------------------

    def _names(self, group: str, node: str, device: str | None, metric: str) -> tuple[str, str]:
        fields = {"{group}": group, "{node}": node, "{device}": device or "", "{metric}": metric}
        eq_t = self.cfg.device_equipment if device is not None else self.cfg.node_equipment
        tag_t = self.cfg.device_tag if device is not None else self.cfg.node_tag
        equipment, tag = eq_t, tag_t
        for k, v in fields.items():
            equipment = equipment.replace(k, v)
            tag = tag.replace(k, v)
        if self.cfg.equipment_prefix:
            equipment = f"{self.cfg.equipment_prefix}/{equipment}"
        levels = equipment.split("/")
        if not 1 <= len(levels) <= 5 or not all(levels):
            raise Malformed(f"equipment path {equipment!r} for {group}/{node} is not 1-5 ISA-95 levels")
        return equipment, tag

    def _unit(self, m: Any, tag: str) -> str:
        if m.HasField("properties"):
            for k, v in zip(m.properties.keys, m.properties.values, strict=False):
                # A unit that is not UTF-8 (proto2 gives bytes) is ignored: the configured one applies.
                if (
                    k in ("engUnit", "EngUnit", "engineeringUnits")
                    and v.WhichOneof("value") == "string_value"
                    and isinstance(v.string_value, str)
                ):
                    return str(v.string_value)
        listed = self.tags.get(tag)
        if listed is not None and listed.unit is not None:
            return listed.unit
        return self.cfg.defaults.unit

    @staticmethod
    def _quality(m: Any) -> Quality:
        """Ignition-style ``Quality`` property (OPC DA codes: 192 good, 64 uncertain); default good."""
        if m.HasField("properties"):
            for k, v in zip(m.properties.keys, m.properties.values, strict=False):
                if k == "Quality" and v.WhichOneof("value") in ("int_value", "long_value"):
                    code = int(getattr(v, v.WhichOneof("value"))) & 0xFF
                    return Quality.GOOD if code >= 192 else Quality.UNCERTAIN if code >= 64 else Quality.BAD
        return Quality.GOOD

    # --- entry point ----------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, received_us: int, redelivered: bool = False) -> Outcome:
        """Decode one message. Raises Malformed when the whole message is unusable (bad topic,
        not a Sparkplug B payload, oversized); per-metric problems land in ``Outcome.deadletters``."""
        if len(payload) > self.cfg.max_payload_bytes:
            raise Malformed(f"payload of {len(payload)} bytes exceeds max_payload_bytes {self.cfg.max_payload_bytes}")
        self._received_us = received_us
        parts = topic.split("/")
        if len(parts) < 2 or parts[0] != NAMESPACE:
            raise Malformed(f"topic is not in the {NAMESPACE} namespace")
        if parts[1] == "STATE":
            return Outcome(note="state")
        if len(parts) not in (4, 5) or not all(parts):
            raise Malformed("topic is not spBv1.0/<group>/<type>/<node>[/<device>]")
        group, mtype, node = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else None
        if mtype not in MESSAGE_TYPES:
            raise Malformed(f"unknown Sparkplug message type {mtype!r}")
        if mtype in ("NCMD", "DCMD"):
            return Outcome(note="command")
        if (device is None) != mtype.startswith("N"):
            raise Malformed(f"{mtype} topic must {'not ' if mtype.startswith('N') else ''}name a device")
        try:
            msg = pb.Payload.FromString(payload)
        except DecodeError as exc:
            raise Malformed(f"payload is not a Sparkplug B protobuf: {exc}") from None
        ts_us = msg.timestamp * 1000 if msg.HasField("timestamp") and msg.timestamp else received_us
        key = (group, node)
        st = self.nodes.get(key)
        if mtype == "NBIRTH":
            return self._nbirth(key, msg, ts_us)
        if mtype == "NDEATH":
            return self._ndeath(key, st, msg, ts_us)
        out = Outcome()
        if st is None or not st.scope.online:
            self._rebirth(key, out)
            out.deadletters.append(f"no NBIRTH seen for node {group}/{node}; rebirth requested")
            return out
        self._check_seq(key, st, msg, out, redelivered)
        if mtype == "DBIRTH":
            assert device is not None
            scope = st.devices[device] = _Scope(online=True)
            self.counters.births += 1
            self._birth_metrics(scope, msg, group, node, device, ts_us, out)
            return out
        if mtype == "NDATA":
            self._data(st.scope, msg, f"{group}/{node}", ts_us, out, key)
            return out
        assert device is not None
        dev = st.devices.get(device)
        if (dev is None or not dev.online) and mtype == "DDEATH":
            out.note = "death of a device not online"
            return out
        if dev is None or not dev.online:
            self._rebirth(key, out)
            out.deadletters.append(f"no DBIRTH seen for device {group}/{node}/{device}; rebirth requested")
            return out
        if mtype == "DDATA":
            self._data(dev, msg, f"{group}/{node}/{device}", ts_us, out, key)
        else:  # DDEATH
            self.counters.deaths += 1
            dev.online = False
            self._mark_bad(dev, ts_us, out)
        return out

    # --- message types ------------------------------------------------------------------------

    def _nbirth(self, key: tuple[str, str], msg: Any, ts_us: int) -> Outcome:
        group, node = key
        st = self.nodes[key] = _Node()
        st.scope.online = True
        st.expected_seq = (msg.seq + 1) % 256 if msg.HasField("seq") else None
        self.counters.births += 1
        out = Outcome()
        for m in msg.metrics:
            if m.name == "bdSeq":
                kind = m.WhichOneof("value")
                if kind in ("int_value", "long_value"):
                    st.bdseq = int(getattr(m, kind))
        self._birth_metrics(st.scope, msg, group, node, None, ts_us, out)
        return out

    def _ndeath(self, key: tuple[str, str], st: _Node | None, msg: Any, ts_us: int) -> Outcome:
        out = Outcome()
        if st is None or not st.scope.online:
            out.note = "death of a node not online"
            return out
        bdseq = None
        for m in msg.metrics:
            if m.name == "bdSeq" and m.WhichOneof("value") in ("int_value", "long_value"):
                bdseq = int(getattr(m, m.WhichOneof("value")))
        if st.bdseq is not None and bdseq is not None and bdseq != st.bdseq:
            self.counters.stale_deaths += 1
            out.note = f"stale NDEATH (bdSeq {bdseq}, current birth has {st.bdseq})"
            return out
        self.counters.deaths += 1
        st.scope.online = False
        self._mark_bad(st.scope, ts_us, out)
        for dev in st.devices.values():
            if dev.online:
                dev.online = False
                self._mark_bad(dev, ts_us, out)
        return out

    def _birth_metrics(
        self, scope: _Scope, msg: Any, group: str, node: str, device: str | None, ts_us: int, out: Outcome
    ) -> None:
        for m in msg.metrics:
            name = m.name
            if not isinstance(name, str):  # proto2 strings with invalid UTF-8 come back as bytes
                out.deadletters.append(
                    f"birth of {group}/{node}{'/' + device if device else ''}: a metric name is not UTF-8"
                )
                continue
            if not name:
                out.deadletters.append(
                    f"birth of {group}/{node}{'/' + device if device else ''} has a metric without a name"
                )
                continue
            if name == "bdSeq" or name.startswith(("Node Control/", "Device Control/")):
                continue
            equipment, tag = self._names(group, node, device, name)
            if tag not in self.tags and not self.cfg.accept_unlisted:
                continue
            info = MetricInfo(name, int(m.datatype), equipment, tag, self._unit(m, tag))
            scope.by_name[name] = info
            if m.HasField("alias"):
                scope.by_alias[int(m.alias)] = info
            self._emit(info, m, ts_us, out)

    def _data(self, scope: _Scope, msg: Any, where: str, ts_us: int, out: Outcome, key: tuple[str, str]) -> None:
        for m in msg.metrics:
            info: MetricInfo | None
            if m.HasField("alias"):
                info = scope.by_alias.get(int(m.alias))
                if info is None:
                    self.counters.unknown_aliases += 1
                    out.deadletters.append(f"unknown alias {int(m.alias)} for {where} (not in its birth)")
                    self._rebirth(key, out)
                    continue
            else:
                info = scope.by_name.get(m.name)
                if info is None:
                    if isinstance(m.name, str) and (
                        m.name == "bdSeq" or m.name.startswith(("Node Control/", "Device Control/"))
                    ):
                        continue
                    out.deadletters.append(f"unknown metric {m.name!r} for {where} (not in its birth)")
                    continue
            self._emit(info, m, ts_us, out)

    def _emit(self, info: MetricInfo, m: Any, ts_us: int, out: Outcome) -> None:
        ts = m.timestamp * 1000 if m.HasField("timestamp") and m.timestamp else ts_us
        datatype = int(m.datatype) if m.HasField("datatype") and m.datatype else info.datatype
        if m.is_null:
            self._add(
                out, info, (info.equipment, info.tag, ts, math.nan, info.unit, int(Quality.BAD), None, None, "is_null")
            )
            return
        try:
            value = metric_value(datatype, m)
        except Malformed as exc:
            out.deadletters.append(f"metric {info.name!r}: {exc.reason}")
            return
        if value is None:
            if m.WhichOneof("value") is not None:
                self.unsupported.setdefault(info.tag, f"Sparkplug datatype {DATATYPE_NAMES.get(datatype, datatype)}")
            return
        self._add(out, info, (info.equipment, info.tag, ts, value, info.unit, int(self._quality(m)), None, None, None))

    def _add(self, out: Outcome, info: MetricInfo, sample: Sample) -> None:
        """The sample, vetted: flagged bad if suspect, dead-lettered alone if it cannot be carried."""
        try:
            out.samples.append(vet(sample, self._received_us, self.limits))
        except Uncarriable as exc:
            out.deadletters.append(f"metric {info.name!r}: {exc.reason}")

    def _mark_bad(self, scope: _Scope, ts_us: int, out: Outcome) -> None:
        for info in scope.by_name.values():
            self._add(
                out,
                info,
                (
                    info.equipment,
                    info.tag,
                    ts_us,
                    math.nan,
                    info.unit,
                    int(Quality.BAD),
                    None,
                    None,
                    "death of its node or device",
                ),
            )

    # --- sequence numbers and rebirth ---------------------------------------------------------------

    def _check_seq(self, key: tuple[str, str], st: _Node, msg: Any, out: Outcome, redelivered: bool) -> None:
        if not msg.HasField("seq"):
            return
        seq = int(msg.seq) % 256
        expected = st.expected_seq
        if expected is None or seq == expected:
            st.expected_seq = (seq + 1) % 256
            return
        if redelivered:
            return  # the broker's copy of a message already seen (MQTT DUP)
        if seq in st.missing:  # reordered: it arrived late, within the timeout
            st.missing.discard(seq)
            self.counters.reordered += 1
            if not st.missing:
                st.reorder_deadline = None
            return
        ahead = (seq - expected) % 256
        if ahead >= 128:  # behind the expected number and not missing: an old copy
            out.note = f"seq {seq} behind expected {expected}: an old copy"
            return
        self.counters.seq_gaps += 1
        out.note = f"seq gap: expected {expected}, got {seq}"
        st.missing.update((expected + i) % 256 for i in range(ahead))
        st.expected_seq = (seq + 1) % 256
        if self.cfg.reorder_timeout_s <= 0:
            st.missing.clear()
            self._rebirth(key, out)
        elif st.reorder_deadline is None:
            st.reorder_deadline = self._clock() + self.cfg.reorder_timeout_s

    def due_rebirths(self) -> list[tuple[str, str]]:
        """Nodes whose reorder timeout expired with numbers still missing: the rebirths to request
        now (throttled per node like every rebirth). Called periodically by the source."""
        now = self._clock()
        due: list[tuple[str, str]] = []
        for key, st in self.nodes.items():
            if st.reorder_deadline is not None and now >= st.reorder_deadline:
                st.reorder_deadline = None
                st.missing.clear()
                out = Outcome()
                self._rebirth(key, out)
                if out.rebirth is not None:
                    due.append(out.rebirth)
        return due

    def _rebirth(self, key: tuple[str, str], out: Outcome) -> None:
        st = self.nodes.setdefault(key, _Node())
        now = self._clock()
        if now - st.last_rebirth >= self.cfg.rebirth_interval_s:
            st.last_rebirth = now
            self.counters.rebirths_requested += 1
            out.rebirth = key


def rebirth_request(now_ms: int | None = None) -> bytes:
    """NCMD payload asking an edge node to publish its births again."""
    p = pb.Payload()
    p.timestamp = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    m = p.metrics.add()
    m.name = REBIRTH_METRIC
    m.timestamp = p.timestamp
    m.datatype = BOOLEAN
    m.boolean_value = True
    return bytes(p.SerializeToString())


def ncmd_topic(group: str, node: str) -> str:
    return f"{NAMESPACE}/{group}/NCMD/{node}"
