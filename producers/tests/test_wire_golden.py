"""The wire format as docs/wire-format.md specifies it, pinned by golden files both ways: the
codec encodes these messages to exactly the committed bytes, the committed bytes decode to the
committed JSON view, and a plain msgpack reader (no plantstream code) finds every field where the
document says it is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgpack
import orjson
import pytest

from plantstream.contract import (
    DEVIATION_KEYS,
    Aggregate,
    ContextEvent,
    ContextKind,
    Deviation,
    DeviationKind,
    DeviationStatus,
    Grade,
    Origin,
    Quality,
    Reading,
    TagMeta,
)
from plantstream.producers import codec
from plantstream.producers.jsonview import record_objects

GOLDEN = Path(__file__).parent / "golden"
EQ = "acme/works/melt/lf/lf1"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def _readings() -> bytes:
    rs = [
        Reading("steel", EQ, "lf1.temp", T0, 1592.5, "degC", Quality.GOOD, Origin.OPCUA, "opcua-1", 41),
        Reading("steel", EQ, "lf1.temp", T0 + 1_000_000, 1593.0, "degC", Quality.GOOD, Origin.OPCUA, "opcua-1", 42),
        Reading(
            "steel", EQ, "lf1.power_on", T0 + 1_000_000, True, "", Quality.UNCERTAIN, Origin.OPCUA, "opcua-1", 43,
            status_code=0x40000000, server_ts_us=T0 + 1_000_250, lot="H-1001", reason="sensor calibration due",
        ),
    ]  # fmt: skip
    return codec.encode_readings(rs)


def _aggregates() -> bytes:
    a = Aggregate(
        "steel", EQ, "lf1.temp", "1s", start_us=T0, count=2, bad_count=0, min=1592.5, max=1593.0, mean=1592.75,
        last=1593.0, stddev=0.25, twa=1592.75, unit="degC", lot="H-1001",
    )  # fmt: skip
    return codec.encode_aggregates([a])


def _context() -> bytes:
    ev = ContextEvent(
        ContextKind.LAB_RESULT, "steel", EQ, T0, "H-1001", lot_kind="heat", material="EN10025-2:S355J2",
        results={"C": (0.18, "percent"), "Mn": (1.42, "percent")},
    )  # fmt: skip
    return codec.encode_context(ev)


def _tag() -> bytes:
    m = TagMeta(
        "steel", "lf1.temp", EQ, "degC", "float", lo=0.0, hi=1800.0, roc_limit=50.0, grade=Grade.IMPORTANT,
        description="ladle furnace bath temperature", source_address="ns=2;s=lf1.temp", spec_property="",
    )  # fmt: skip
    return codec.encode_tag_meta(m)


def _tag_property() -> bytes:
    # The optional key std_property (issue 18): written only when set.
    m = TagMeta(
        "fiber", "poy1.melt_temperature", "acme/nantong/spinning/poy1/extruder", "degC", "float", lo=250.0,
        hi=320.0, grade=Grade.CORE, source_address="ns=2;s=poy1.melt_temperature",
        spec_property="melt_temperature", std_property="ps:temperature.melt",
    )  # fmt: skip
    return codec.encode_tag_meta(m)


def _deviation() -> bytes:
    return codec.encode_deviation(
        Deviation("d-1", DeviationKind.PROCESS, DeviationStatus.OPEN, "steel", EQ, T0, lot="H-1001",
                  spec="EN10025-2:S355J2", property="tap_temperature", tag="lf1.temp", peak=1650.0, limit=1640.0,
                  unit="degC", limit_min=1580.0, limit_max=1640.0, details={"duration_s": None})
    )  # fmt: skip


MESSAGES: dict[str, Callable[[], bytes]] = {
    "readings": _readings,
    "aggregates": _aggregates,
    "context": _context,
    "tag": _tag,
    "tag_property": _tag_property,
    "deviation": _deviation,
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_the_codec_writes_the_golden_bytes(name: str) -> None:
    assert MESSAGES[name]() == (GOLDEN / f"{name}.bin").read_bytes(), f"{name}: the wire format changed"


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_the_golden_bytes_read_as_the_golden_json(name: str) -> None:
    objs = list(record_objects((GOLDEN / f"{name}.bin").read_bytes()))
    assert objs == orjson.loads((GOLDEN / f"{name}.json").read_bytes())


def test_a_deviation_map_of_an_older_producer_reads_as_the_same_record() -> None:
    # Before the contract typed it, streams sent ``state`` beside ``status`` and left unset keys out.
    old = {"id": "d-1", "kind": "process", "state": "open", "status": "open", "plant": "steel", "equipment": EQ,
           "lot": "H-1001", "spec": "EN10025-2:S355J2", "property": "tap_temperature", "tag": "lf1.temp",
           "start_us": T0, "end_us": None, "peak": 1650.0, "limit": 1640.0, "unit": "degC", "limit_min": 1580.0,
           "limit_max": 1640.0, "duration_s": None}  # fmt: skip
    golden = codec.decode_deviation((GOLDEN / "deviation.bin").read_bytes())
    assert codec.decode_deviation(codec.encode_deviation_map(old)) == golden
    assert codec.decode_deviation(codec.encode_deviation(golden)) == golden


def test_a_plain_msgpack_reader_finds_the_documented_fields() -> None:
    data = (GOLDEN / "readings.bin").read_bytes()
    assert data[:2] == b"PS" and data[2] == 1 and data[3] == 1  # magic, schema version 1, kind READINGS
    body = msgpack.unpackb(data[4:], raw=False)
    plant, equipment, origin, source, tags, tag_codes, units, unit_codes, ts_us, values, quality = body[:11]
    status, seq, server_ts, lot, reason = body[11:]
    assert (plant, equipment, origin, source) == ("steel", EQ, 1, "opcua-1")
    assert [tags[c] for c in tag_codes] == ["lf1.temp", "lf1.temp", "lf1.power_on"]
    assert [units[c] for c in unit_codes] == ["degC", "degC", ""]
    assert ts_us == [T0, T0 + 1_000_000, T0 + 1_000_000] and values == [1592.5, 1593.0, True]
    assert quality == [0, 0, 1] and seq == [41, 42, 43]
    assert status == [None, None, 0x40000000] and server_ts == [None, None, T0 + 1_000_250]
    assert lot == [None, None, "H-1001"] and reason == [None, None, "sensor calibration due"]
    # A column that is None everywhere is sent as one nil, not a list.
    one = msgpack.unpackb(
        codec.encode_readings([Reading("p", "a", "t", T0, 1.0, "", Quality.GOOD, Origin.MQTT, "s", 1)])[4:]
    )
    assert one[11] is None and one[13:] == [None, None, None]

    agg = msgpack.unpackb((GOLDEN / "aggregates.bin").read_bytes()[4:], raw=False)
    assert agg == [
        ["steel", EQ, "lf1.temp", "1s", T0, 2, 0, 1592.5, 1593.0, 1592.75, 1593.0, 0.25, 1592.75, "degC", "H-1001"]
    ]
    dev = msgpack.unpackb((GOLDEN / "deviation.bin").read_bytes()[4:], raw=False)
    assert list(dev)[:13] == list(DEVIATION_KEYS) and dev["status"] == "open" and "state" not in dev
    assert (dev["unit"], dev["limit_min"], dev["duration_s"]) == ("degC", 1580.0, None)
    for name, kind in (("context", 4), ("tag", 5), ("deviation", 3)):
        raw = (GOLDEN / f"{name}.bin").read_bytes()
        assert raw[3] == kind and isinstance(msgpack.unpackb(raw[4:], raw=False), dict), name
    tag = msgpack.unpackb((GOLDEN / "tag.bin").read_bytes()[4:], raw=False)
    assert tag["grade"] == "important" and tag["hi"] == 1800.0
    assert "std_property" not in tag  # optional: absent when the tag has none (bytes as before issue 18)
    tagp = msgpack.unpackb((GOLDEN / "tag_property.bin").read_bytes()[4:], raw=False)
    assert tagp["std_property"] == "ps:temperature.melt" and tagp["spec_property"] == "melt_temperature"
    ctx = msgpack.unpackb((GOLDEN / "context.bin").read_bytes()[4:], raw=False)
    assert ctx["kind"] == "lab_result" and ctx["results"] == {"C": [0.18, "percent"], "Mn": [1.42, "percent"]}
