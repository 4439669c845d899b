"""Sparkplug B state machine without a broker: exact datatypes, aliases, seq gaps, bdSeq, deaths."""

from __future__ import annotations

import math
from typing import Any

import pytest

from plantstream.edge.config import SparkplugSource
from plantstream.edge.sparkplug import sparkplug_b_pb2 as pb
from plantstream.edge.sparkplug.decode import (
    BOOLEAN,
    DATETIME,
    DOUBLE,
    FLOAT,
    INT8,
    INT16,
    INT32,
    INT64,
    REBIRTH_METRIC,
    STRING,
    UINT8,
    UINT32,
    UINT64,
    Malformed,
    SparkplugDecoder,
    rebirth_request,
)

G, N, D = "plant1", "gw1", "press"
T0 = 1_700_000_000_000  # ms
RECEIVED_US = T0 * 1000  # the payloads' timestamps lie inside the window around the receiving clock


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _decoder(clock: Clock | None = None, **kw: Any) -> SparkplugDecoder:
    cfg = SparkplugSource.model_validate(
        {
            "type": "sparkplug",
            "id": "spb",
            "url": "mqtt://127.0.0.1:1883",
            "equipment_prefix": "acme/site",
            "max_payload_bytes": 4096,
            **kw,
        }
    )
    return SparkplugDecoder(cfg, clock or Clock())


def _payload(seq: int | None, metrics: list[dict[str, Any]], ts: int = T0) -> bytes:
    p = pb.Payload(timestamp=ts)
    if seq is not None:
        p.seq = seq
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


def _topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{G}/{kind}/{N}" + (f"/{device}" if device else "")


BIRTH = [
    # Signed values on the wire are two's complement in uint32 / uint64 fields.
    {"name": "i8", "alias": 1, "datatype": INT8, "int_value": (-5) & 0xFFFFFFFF},
    {"name": "i16", "alias": 2, "datatype": INT16, "int_value": (-300) & 0xFFFF},  # 16-bit form also accepted
    {"name": "i32", "alias": 3, "datatype": INT32, "int_value": (-70000) & 0xFFFFFFFF},
    {"name": "i64", "alias": 4, "datatype": INT64, "long_value": (-5_000_000_000) & (2**64 - 1)},
    {"name": "u8", "alias": 5, "datatype": UINT8, "int_value": 250},
    {"name": "u32", "alias": 6, "datatype": UINT32, "long_value": 4_000_000_000},  # some peers use long_value
    {"name": "u64", "alias": 7, "datatype": UINT64, "long_value": 2**64 - 1},
    {"name": "f", "alias": 8, "datatype": FLOAT, "float_value": 1.1},
    {"name": "d", "alias": 9, "datatype": DOUBLE, "double_value": 3.141592653589793},
    {"name": "b", "alias": 10, "datatype": BOOLEAN, "boolean_value": False},
    {"name": "s", "alias": 11, "datatype": STRING, "string_value": "héllo"},
    {"name": "dt", "alias": 12, "datatype": DATETIME, "long_value": T0},
    {"name": "bdSeq", "datatype": UINT64, "long_value": 7},
    {"name": "Node Control/Rebirth", "datatype": BOOLEAN, "boolean_value": False},
]


def _values(samples: list[Any]) -> dict[str, Any]:
    return {s[1]: s[3] for s in samples}


def test_birth_and_data_keep_every_datatype_exact() -> None:
    dec = _decoder()
    out = dec.handle(_topic("NBIRTH"), _payload(0, BIRTH), RECEIVED_US)
    vals = _values(out.samples)
    assert vals == {
        "gw1.i8": -5,
        "gw1.i16": -300,
        "gw1.i32": -70000,
        "gw1.i64": -5_000_000_000,
        "gw1.u8": 250,
        "gw1.u32": 4_000_000_000,
        "gw1.u64": 2**64 - 1,
        "gw1.f": pytest.approx(1.1, rel=1e-7),
        "gw1.d": 3.141592653589793,
        "gw1.b": False,
        "gw1.s": "héllo",
        "gw1.dt": T0,
    }, "bdSeq and Node Control metrics are not readings"
    assert type(vals["gw1.b"]) is bool and type(vals["gw1.i8"]) is int and type(vals["gw1.f"]) is float
    eq = {s[0] for s in out.samples}
    assert eq == {"acme/site/plant1/gw1"}
    assert all(s[2] == T0 * 1000 and s[5] == 0 for s in out.samples)

    # NDATA by alias only, metric timestamps win over the payload's.
    data = [
        {"alias": 1, "timestamp": T0 + 5, "int_value": (-128) & 0xFFFFFFFF},
        {"alias": 4, "long_value": (-1) & (2**64 - 1)},
        {"alias": 10, "boolean_value": True},
    ]
    out = dec.handle(_topic("NDATA"), _payload(1, data, T0 + 10), RECEIVED_US)
    assert [(s[1], s[2], s[3]) for s in out.samples] == [
        ("gw1.i8", (T0 + 5) * 1000, -128),
        ("gw1.i64", (T0 + 10) * 1000, -1),
        ("gw1.b", (T0 + 10) * 1000, True),
    ]
    assert out.rebirth is None and not out.deadletters


def test_seq_wraps_without_a_gap_and_a_gap_requests_one_rebirth_per_interval() -> None:
    clock = Clock()
    dec = _decoder(clock, rebirth_interval_s=5, reorder_timeout_s=0)  # a gap asks at once
    dec.handle(_topic("NBIRTH"), _payload(250, BIRTH), RECEIVED_US)
    for seq in [251, 252, 253, 254, 255, 0, 1]:
        out = dec.handle(_topic("NDATA"), _payload(seq, [{"alias": 5, "int_value": seq}]), RECEIVED_US)
        assert out.rebirth is None, seq
    out = dec.handle(_topic("NDATA"), _payload(5, [{"alias": 5, "int_value": 5}]), RECEIVED_US)
    assert out.rebirth == (G, N) and "expected 2, got 5" in out.note
    assert _values(out.samples) == {"gw1.u8": 5}, "the message itself still delivers"
    out = dec.handle(_topic("NDATA"), _payload(9, [{"alias": 5, "int_value": 9}]), RECEIVED_US)
    assert out.rebirth is None, "throttled"
    clock.t = 6
    out = dec.handle(_topic("NDATA"), _payload(20, [{"alias": 5, "int_value": 9}]), RECEIVED_US)
    assert out.rebirth == (G, N)
    assert dec.counters.seq_gaps == 3 and dec.counters.rebirths_requested == 2
    # A redelivered copy (MQTT DUP) is not a gap.
    out = dec.handle(_topic("NDATA"), _payload(20, [{"alias": 5, "int_value": 9}]), RECEIVED_US, redelivered=True)
    assert out.rebirth is None and dec.counters.seq_gaps == 3


def _ndata(seq: int) -> bytes:
    return _payload(seq, [{"alias": 5, "int_value": seq}])


def test_reordered_messages_within_the_reorder_timeout_are_no_reason_for_a_rebirth() -> None:
    clock = Clock()
    dec = _decoder(clock, reorder_timeout_s=2, rebirth_interval_s=1)
    dec.handle(_topic("NBIRTH"), _payload(0, BIRTH), RECEIVED_US)
    dec.handle(_topic("NDATA"), _ndata(1), RECEIVED_US)
    out = dec.handle(_topic("NDATA"), _ndata(4), RECEIVED_US)  # 2 and 3 missing
    assert out.rebirth is None and "expected 2, got 4" in out.note
    assert _values(out.samples) == {"gw1.u8": 4}, "delivered when it comes, not held back"
    clock.t = 1.0
    for seq in (3, 2):  # the missing ones, out of order, inside the timeout
        out = dec.handle(_topic("NDATA"), _ndata(seq), RECEIVED_US)
        assert out.rebirth is None and _values(out.samples) == {"gw1.u8": seq}
    out = dec.handle(_topic("NDATA"), _ndata(5), RECEIVED_US)  # the sequence goes on from 4
    assert out.rebirth is None and not out.note
    clock.t = 10.0
    assert dec.due_rebirths() == []
    assert (dec.counters.seq_gaps, dec.counters.reordered, dec.counters.rebirths_requested) == (1, 2, 0)


def test_a_gap_still_open_when_the_reorder_timeout_expires_requests_a_rebirth() -> None:
    clock = Clock()
    dec = _decoder(clock, reorder_timeout_s=2, rebirth_interval_s=1)
    dec.handle(_topic("NBIRTH"), _payload(254, BIRTH), RECEIVED_US)
    dec.handle(_topic("NDATA"), _ndata(1), RECEIVED_US)  # 255 and 0 missing (across the wrap)
    clock.t = 1.0
    dec.handle(_topic("NDATA"), _ndata(255), RECEIVED_US)  # one of them arrives
    dec.handle(_topic("NDATA"), _ndata(2), RECEIVED_US)
    clock.t = 1.9
    assert dec.due_rebirths() == [], "not before the timeout"
    clock.t = 2.0
    assert dec.due_rebirths() == [(G, N)]
    assert dec.due_rebirths() == [], "asked once per gap"
    # An old copy behind the sequence (not missing any more) is neither a gap nor a new position.
    out = dec.handle(_topic("NDATA"), _ndata(1), RECEIVED_US)
    assert out.rebirth is None and "old copy" in out.note
    out = dec.handle(_topic("NDATA"), _ndata(3), RECEIVED_US)
    assert not out.note
    assert (dec.counters.seq_gaps, dec.counters.reordered, dec.counters.rebirths_requested) == (1, 1, 1)


def test_unknown_alias_and_data_before_birth_are_dead_letters_with_reasons() -> None:
    clock = Clock()
    dec = _decoder(clock)
    out = dec.handle(_topic("DDATA", D), _payload(3, [{"alias": 1, "int_value": 1}]), RECEIVED_US)
    assert out.deadletters == [f"no NBIRTH seen for node {G}/{N}; rebirth requested"] and out.rebirth == (G, N)
    clock.t = 100
    dec.handle(_topic("NBIRTH"), _payload(0, BIRTH), RECEIVED_US)
    out = dec.handle(_topic("DDATA", D), _payload(1, [{"alias": 1, "int_value": 1}]), RECEIVED_US)
    assert out.deadletters == [f"no DBIRTH seen for device {G}/{N}/{D}; rebirth requested"]
    dec.handle(
        _topic("DBIRTH", D),
        _payload(2, [{"name": "Inputs/Force", "alias": 100, "datatype": DOUBLE, "double_value": 1.5}]),
        0,
    )
    clock.t = 200
    out = dec.handle(
        _topic("DDATA", D), _payload(3, [{"alias": 100, "double_value": 2.5}, {"alias": 999, "double_value": 0}]), 0
    )
    assert _values(out.samples) == {"gw1.press.Inputs/Force": 2.5}
    assert out.deadletters == [f"unknown alias 999 for {G}/{N}/{D} (not in its birth)"]
    assert out.rebirth == (G, N) and dec.counters.unknown_aliases == 1
    assert {s[0] for s in out.samples} == {"acme/site/plant1/gw1/press"}


def test_deaths_mark_tags_bad_and_stale_ndeath_is_ignored() -> None:
    dec = _decoder()
    dec.handle(_topic("NBIRTH"), _payload(0, BIRTH), RECEIVED_US)
    dec.handle(
        _topic("DBIRTH", D), _payload(1, [{"name": "t", "alias": 50, "datatype": FLOAT, "float_value": 2}]), RECEIVED_US
    )
    dec.handle(
        _topic("DBIRTH", "other"), _payload(2, [{"name": "x", "alias": 60, "datatype": INT8, "int_value": 1}]), 0
    )
    out = dec.handle(_topic("DDEATH", "other"), _payload(3, [], T0 + 1), RECEIVED_US)
    assert [(s[1], s[2], s[5]) for s in out.samples] == [("gw1.other.x", (T0 + 1) * 1000, 2)]
    assert math.isnan(float(out.samples[0][3]))
    stale = dec.handle(
        _topic("NDEATH"), _payload(None, [{"name": "bdSeq", "datatype": UINT64, "long_value": 6}]), RECEIVED_US
    )
    assert not stale.samples and "stale" in stale.note and dec.counters.stale_deaths == 1
    out = dec.handle(
        _topic("NDEATH"), _payload(None, [{"name": "bdSeq", "datatype": UINT64, "long_value": 7}], T0 + 2), 0
    )
    bad = {s[1] for s in out.samples}
    assert bad == {f"gw1.{m['name']}" for m in BIRTH[:12]} | {"gw1.press.t"}, "node and live device metrics"
    assert all(s[5] == 2 and math.isnan(float(s[3])) and s[2] == (T0 + 2) * 1000 for s in out.samples)
    out = dec.handle(_topic("NDATA"), _payload(4, [{"alias": 5, "int_value": 1}]), RECEIVED_US)
    assert out.deadletters and not out.samples, "a dead node's data needs a new birth"


def test_null_metric_is_bad_and_datatype_mismatch_is_dead_lettered() -> None:
    dec = _decoder()
    dec.handle(_topic("NBIRTH"), _payload(0, BIRTH), RECEIVED_US)
    out = dec.handle(
        _topic("NDATA"), _payload(1, [{"alias": 9, "is_null": True}, {"alias": 11, "int_value": 3}]), RECEIVED_US
    )
    assert [(s[1], s[5]) for s in out.samples] == [("gw1.d", 2)]
    assert out.deadletters == ["metric 's': String metric carries int_value"]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("spAv1.0/g/NDATA/n", b"", "namespace"),
        ("spBv1.0/g/NDATA", b"", "spBv1.0/<group>/<type>/<node>"),
        ("spBv1.0/g/XDATA/n", b"", "unknown Sparkplug message type"),
        ("spBv1.0/g/DDATA/n", b"", "must name a device"),
        ("spBv1.0/g/NDATA/n", b"\xff\xff\xff", "not a Sparkplug B protobuf"),
        ("spBv1.0/g/NDATA/n", b"x" * 5000, "exceeds max_payload_bytes"),
    ],
)
def test_unusable_messages_name_the_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        _decoder().handle(topic, payload, RECEIVED_US)


def test_rebirth_request_is_a_boolean_node_control_metric() -> None:
    p = pb.Payload.FromString(rebirth_request(123))
    (m,) = p.metrics
    assert (m.name, m.datatype, m.boolean_value, p.timestamp) == (REBIRTH_METRIC, BOOLEAN, True, 123)


def test_births_survive_a_restart_through_their_snapshot() -> None:
    """What a restarted agent knows: aliases of node and device births, online flags, bdSeq; the
    sequence starts afresh (no invented gap, no rebirth request)."""
    import json

    dec = _decoder()
    dec.handle(_topic("NBIRTH"), _payload(0, BIRTH), RECEIVED_US)
    dbirth: list[dict[str, Any]] = [{"name": "force", "alias": 100, "datatype": DOUBLE, "double_value": 1.0}]
    dec.handle(_topic("DBIRTH", D), _payload(1, dbirth), RECEIVED_US)
    data: list[dict[str, Any]] = [{"alias": 9, "double_value": 2.5}, {"alias": 11, "string_value": "x"}]
    ddata: list[dict[str, Any]] = [{"alias": 100, "double_value": 7.25}]
    want_n = dec.handle(_topic("NDATA"), _payload(2, data), RECEIVED_US)
    want_d = dec.handle(_topic("DDATA", D), _payload(3, ddata), RECEIVED_US)

    again = _decoder()
    assert again.restore(json.loads(json.dumps(dec.snapshot()))) == 1
    got_n = again.handle(_topic("NDATA"), _payload(17, data), RECEIVED_US)  # any seq: not a gap
    got_d = again.handle(_topic("DDATA", D), _payload(18, ddata), RECEIVED_US)
    assert got_n.samples == want_n.samples and got_d.samples == want_d.samples
    assert not got_n.deadletters and got_n.rebirth is None and got_d.rebirth is None
    # A node that died stays dead across the restart: its data still needs a new birth.
    dec.handle(_topic("NDEATH"), _payload(None, [{"name": "bdSeq", "datatype": UINT64, "long_value": 7}]), RECEIVED_US)
    dead = _decoder()
    dead.restore(dec.snapshot())
    out = dead.handle(_topic("NDATA"), _payload(4, data), RECEIVED_US)
    assert out.samples == [] and out.rebirth == (G, N) and "no NBIRTH" in out.deadletters[0]
    with pytest.raises(ValueError, match="unknown Sparkplug state version"):
        _decoder().restore({"version": 99, "nodes": []})


def test_names_and_strings_that_are_not_utf8_are_rejected_not_crashed() -> None:
    """protobuf gives a proto2 string with invalid UTF-8 back as bytes; found by the fuzzer
    (TypeError in the birth's name check)."""
    dec = _decoder()
    bad_name = bytearray(_payload(0, [{"name": "zzzz", "alias": 1, "datatype": DOUBLE, "double_value": 1.0}]))
    i = bad_name.index(b"zzzz")
    bad_name[i : i + 4] = b"\xffzzz"
    out = dec.handle(_topic("NBIRTH"), bytes(bad_name), RECEIVED_US)
    assert out.samples == [] and out.deadletters == [f"birth of {G}/{N}: a metric name is not UTF-8"]
    ok = dec.handle(
        _topic("NBIRTH"),
        _payload(0, [{"name": "s", "alias": 2, "datatype": STRING, "string_value": "yy"}]),
        RECEIVED_US,
    )
    assert _values(ok.samples) == {"gw1.s": "yy"}
    bad_value = bytearray(_payload(1, [{"alias": 2, "string_value": "yy"}]))
    j = bad_value.index(b"yy")
    bad_value[j : j + 2] = b"\xc3("
    out = dec.handle(_topic("NDATA"), bytes(bad_value), RECEIVED_US)
    assert out.samples == [] and out.deadletters == ["metric 's': String value is not UTF-8"]
