"""Samples that cannot be carried are rejected alone at decode, suspect ones kept flagged bad, and
nothing a hostile publisher sends can make the batch encoder raise after acknowledgement (issue 15
items 1, 4, 6, 8). Pure: decoders, vetting and the batcher, no services."""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantstream.config import Settings
from plantstream.contract import Origin
from plantstream.edge.agent import Agent
from plantstream.edge.batcher import Batcher, Sample
from plantstream.edge.buffer import Buffer
from plantstream.edge.config import EdgeConfig, MqttSource, SparkplugSource
from plantstream.edge.mqtt.decode import Malformed, MqttDecoder
from plantstream.edge.source import Delivery
from plantstream.edge.sparkplug import sparkplug_b_pb2 as pb
from plantstream.edge.sparkplug.decode import DOUBLE, INT64, STRING, UINT64, SparkplugDecoder
from plantstream.edge.sparkplug.decode import Malformed as SpbMalformed
from plantstream.edge.vet import Limits, Uncarriable, batch_max_bytes, vet
from plantstream.producers.codec import decode_readings, encode_readings

NOW = 1_760_000_000_000_000  # the receiving clock in these tests (2025-10-09)
DAY = 86_400_000_000


def _s(value: Any = 1.0, ts: int = NOW, tag: str = "temp", srv: int | None = None, unit: str = "degC") -> Sample:
    return ("acme/site/area", tag, ts, value, unit, 0, None, srv, None)


# --- item 1: the known crash, reproduced at the batcher -----------------------------------------


def test_a_reading_the_encoder_refuses_is_rejected_alone_and_its_batch_kept(tmp_path: Path) -> None:
    """Without the defence in Batcher.take, a lone surrogate raised UnicodeEncodeError out of the
    agent loop after the batch was taken, losing the good readings beside it."""
    with Buffer(tmp_path / "b.db") as buf:
        b = Batcher("steel", "t.raw", buf, max_readings=100, max_delay_s=60)
        b.add("m1", Origin.MQTT, [_s(1.0, NOW), _s("\ud800", NOW + 1), _s(1 << 70, NOW + 2), _s(3.0, NOW + 3)])
        entries = b.take(everything=True)
        assert len(entries) == 1
        kept = decode_readings(entries[0].value)
        assert (kept.ts_us, kept.value) == ([NOW, NOW + 3], [1.0, 3.0])
        assert entries[0].count == 2
        assert [r.source for r in b.rejected] == ["m1", "m1"]
        assert "cannot be encoded" in b.rejected[0].reason and "surrogate" in b.rejected[0].reason
        assert b"\\ud800" in b.rejected[0].payload


# --- vetting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "why"),
    [
        (_s("ok\ud800"), r"value: string holds a lone surrogate \(U\+D800\) at index 2"),
        (_s(1.0, tag="t\udfff"), "tag: string holds a lone surrogate"),
        (_s(1.0, unit="\ud83d"), "unit: string holds a lone surrogate"),
        (_s(1 << 64), "value: integer 18446744073709551616 is beyond 64 bits"),
        (_s(-(1 << 63) - 1), "value: integer .* is beyond 64 bits"),
        (_s(10**5000), "value: integer of 16610 bits is beyond 64 bits"),
        (_s(1.0, ts=-1), "ts_us: timestamp -1 us is before 1970"),
        (_s(1.0, ts=253_402_300_800_000_000), "ts_us: timestamp .* is after year 9999"),
        (_s(1.0, ts=(2**64 - 1) * 1000), "ts_us: timestamp .* after year 9999"),
        (_s(1.0, srv=-5), "server_ts_us: timestamp -5 us is before 1970"),
        (_s("x" * 2000), "reading of about 2\\d{3} bytes can never fit"),
    ],
)
def test_uncarriable_samples_are_refused_naming_the_field(sample: Sample, why: str) -> None:
    with pytest.raises(Uncarriable, match=why):
        vet(sample, NOW, Limits(max_reading_bytes=2000))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_kept_flagged_bad_with_the_reason(value: float) -> None:
    out = vet(_s(value), NOW)
    assert out[5] == 2 and out[8] == f"value: not finite ({value})"
    kept = out[3]
    assert isinstance(kept, float) and (kept == value or (math.isnan(value) and math.isnan(kept))), "not replaced"


@pytest.mark.parametrize(
    ("ts", "srv", "reason"),
    [
        (NOW - 8 * DAY, None, r"ts_us: 2025-10-01T\S+ is 691200 s before the receiving clock \(window 604800 s past\)"),
        (NOW + 601_000_000, None, r"ts_us: \S+ is 601 s after the receiving clock \(window 600 s future\)"),
        (0, None, "ts_us: 1970-01-01T00:00:00Z"),
        (253_402_300_799_999_999, None, "ts_us: 9999-12-31T23:59:59Z is"),
        (NOW, NOW + DAY, "server_ts_us: .* after the receiving clock"),
    ],
)
def test_timestamps_outside_the_window_are_kept_flagged_bad(ts: int, srv: int | None, reason: str) -> None:
    out = vet(_s(1.0, ts, srv=srv), NOW)
    assert out[2] == ts and out[7] == srv, "kept as sent"
    assert out[5] == 2
    assert out[8] is not None
    assert __import__("re").search(reason, out[8]), out[8]


def test_timestamps_inside_the_window_stay_good_and_the_window_is_configurable() -> None:
    assert vet(_s(1.0, NOW - 6 * DAY), NOW)[5] == 0
    assert vet(_s(1.0, NOW + 599_000_000), NOW)[5] == 0
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": "a",
            "plant": "steel",
            "timestamps": {"max_past_s": 60, "max_future_s": 0},
            "batch": {"max_bytes": 50_000},
            "sources": [{"type": "mqtt", "id": "m", "subscriptions": [{"template": "x/{equipment+}/{tag}"}]}],
        }
    )
    lim = Limits.of(cfg)
    assert vet(_s(1.0, NOW - 61_000_000), NOW, lim)[5] == 2
    assert vet(_s(1.0, NOW + 1), NOW, lim)[5] == 2
    assert lim.max_reading_bytes < batch_max_bytes(cfg) < 50_000
    with pytest.raises(Exception, match="max_past_s"):
        EdgeConfig.model_validate({**cfg.model_dump(mode="json"), "timestamps": {"max_past_s": 0}})


# --- MQTT JSON ------------------------------------------------------------------------------------


def _mqtt(**sub: object) -> MqttDecoder:
    cfg = MqttSource.model_validate(
        {
            "type": "mqtt",
            "id": "m",
            "url": "mqtt://127.0.0.1:1883",
            "max_payload_bytes": 1 << 20,
            "subscriptions": [{"template": "p/{equipment+}/{tag}", **sub}],
        }
    )
    return MqttDecoder(cfg, Limits(max_reading_bytes=100_000))


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b'{"ts_us": 1760000000000000, "value": "\\ud800"}', "value: string holds a lone surrogate"),
        (b'{"ts_us": 1760000000000000, "value": 1, "unit": "\\udc00"}', "unit: string holds a lone surrogate"),
        (b'{"ts_us": -5, "value": 1}', "ts_us: timestamp -5 is before 1970"),
        (b'{"ts_us": 1e300, "value": 1}', "ts_us: timestamp 1e[+]?300 is after year 9999"),
        (b'{"ts_us": 1' + b"0" * 400 + b', "value": 1}', "ts_us: timestamp of 1329 bits is after year 9999"),
        (b'{"ts_us": 1760000000000000, "value": 1' + b"0" * 400 + b"}", "value: integer of 1329 bits"),
        (b'{"ts_us": 1760000000000000, "value": "' + b"x" * 200_000 + b'"}', "can never fit one Kafka message"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_mqtt_uncarriable_messages_are_malformed_naming_the_field(payload: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why):
        _mqtt().decode("p/acme/site/t", payload, NOW)


@pytest.mark.parametrize(
    ("fmt", "raw", "why"),
    [
        ("iso8601", "1969-12-31T23:59:59Z", "ts: timestamp '1969-12-31T23:59:59Z' is before 1970"),
        ("iso8601", "0001-01-01T00:00:00+00:00", "before 1970"),
        ("iso8601", "9999-12-31T23:59:59-05:00", "after year 9999"),
        ("epoch_ms", 2**64, "after year 9999 \\(epoch_ms\\)"),
        ("epoch_s", -1.5, "before 1970 \\(epoch_s\\)"),
        ("epoch_s", "noon", "ts: timestamp is str, not a number"),
    ],
)
def test_mqtt_unrepresentable_timestamps_in_every_format_are_malformed(fmt: str, raw: object, why: str) -> None:
    d = _mqtt(timestamp_path="ts", timestamp_format=fmt)
    with pytest.raises(Malformed, match=why):
        d.decode("p/acme/site/t", json.dumps({"ts": raw, "value": 1.0}).encode(), NOW)


@pytest.mark.parametrize(
    ("fmt", "raw"),
    [("iso8601", "2025-09-01T00:00:00Z"), ("epoch_ms", 1_756_684_800_000), ("epoch_s", 1_756_684_800)],
)
def test_mqtt_old_timestamps_in_every_format_are_kept_flagged_bad(fmt: str, raw: object) -> None:
    d = _mqtt(timestamp_path="ts", timestamp_format=fmt)
    s = d.decode("p/acme/site/t", json.dumps({"ts": raw, "value": 1.0}).encode(), NOW)
    assert s[2] == 1_756_684_800_000_000 and s[5] == 2 and s[8] is not None and "before the receiving clock" in s[8]


def test_mqtt_list_rejects_only_the_hostile_element() -> None:
    d = _mqtt(readings_path="$")
    doc = b'[{"ts_us": 1760000000000000, "value": 1.5}, {"ts_us": 1760000000000001, "value": "\\ud800"}, ' + (
        b'{"ts_us": 1760000000000002, "value": NaN}]'
    )
    samples, problems = d.decode_all("p/acme/site/t", doc, NOW)
    assert [(s[2], s[5]) for s in samples] == [(NOW, 0), (NOW + 2, 2)]
    assert samples[1][8] == "value: not finite (nan)"
    assert problems == [
        "reading 1 of 3: value: string holds a lone surrogate (U+D800) at index 0, not encodable as UTF-8"
    ]


_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=30),
    st.sampled_from(["\ud800", "a\udfffb", "x" * 3000]),
)
_ts = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=NOW - 30 * DAY, max_value=NOW + DAY),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["2025-10-09T08:00:00Z", "1969-01-01T00:00:00Z", "9999-12-31T23:59:59.999999-14:00"]),
)


def _check_carried(samples: list[Sample]) -> None:
    """What a decoder returned encodes, and anything suspect is flagged bad with a reason."""
    for s in samples:
        encode_readings(_batch([s]))
        v = s[3]
        if isinstance(v, float) and not math.isfinite(v):
            assert s[5] == 2 and s[8]
        if not NOW - 7 * DAY <= s[2] <= NOW + 600_000_000:
            assert s[5] == 2 and s[8] and "receiving clock" in s[8]


def _batch(samples: list[Sample]) -> Any:
    from plantstream.producers.codec import ReadingBatch

    b = ReadingBatch("steel", "acme/site", Origin.MQTT, "m")
    for i, (_eq, tag, ts, value, unit, q, status, srv, reason) in enumerate(samples):
        b.tag.append(tag)
        b.unit.append(unit)
        b.ts_us.append(ts)
        b.value.append(value)
        b.quality.append(q)
        b.status_code.append(status)
        b.seq.append(i)
        b.server_ts_us.append(srv)
        b.lot.append(None)
        b.reason.append(reason)
    return b


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {"ts_us": _ts, "value": _json_scalar}, optional={"unit": _json_scalar, "quality": _json_scalar}
        ),
        max_size=6,
    ),
    st.sampled_from(["epoch_us", "epoch_ms", "epoch_s", "iso8601"]),
)
def test_mqtt_decoder_fuzz_never_raises_and_whatever_it_returns_can_be_carried(
    docs: list[dict[str, Any]], fmt: str
) -> None:
    d = _mqtt(readings_path="$", timestamp_format=fmt)
    payload = json.dumps(docs, ensure_ascii=True).encode()  # ensure_ascii: lone surrogates as \\ud800 escapes
    try:
        samples, problems = d.decode_all("p/acme/site/t", payload, NOW)
    except Malformed:
        return
    assert len(samples) + len(problems) == len(docs)
    _check_carried(samples)


# --- Sparkplug B --------------------------------------------------------------------------------


def _spb() -> SparkplugDecoder:
    cfg = SparkplugSource.model_validate({"type": "sparkplug", "id": "s", "url": "mqtt://127.0.0.1:1883"})
    return SparkplugDecoder(cfg, limits=Limits(max_reading_bytes=100_000))


def _payload(seq: int, metrics: list[dict[str, Any]], ts_ms: int | None = None) -> bytes:
    p = pb.Payload(seq=seq)
    if ts_ms is not None:
        p.timestamp = ts_ms
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


def test_sparkplug_hostile_timestamps_are_dead_lettered_alone_and_old_ones_flagged() -> None:
    d = _spb()
    birth = [
        {"name": "a", "alias": 1, "datatype": DOUBLE, "double_value": 1.0},
        {"name": "b", "alias": 2, "datatype": DOUBLE, "double_value": 2.0, "timestamp": 2**64 - 1},
        {"name": "c", "alias": 3, "datatype": DOUBLE, "double_value": math.nan},
        {"name": "d", "alias": 4, "datatype": DOUBLE, "double_value": 4.0, "timestamp": NOW // 1000 - 30 * 86_400_000},
    ]
    out = d.handle("spBv1.0/g/NBIRTH/n", _payload(0, birth, NOW // 1000), NOW)
    got = {s[1]: (s[3], s[5], s[8]) for s in out.samples}
    assert got["n.a"] == (1.0, 0, None)
    assert "n.b" not in got
    assert got["n.c"][1:] == (2, "value: not finite (nan)")
    assert got["n.d"][1] == 2 and "before the receiving clock" in str(got["n.d"][2])
    assert out.deadletters == [
        "metric 'b': ts_us: timestamp 18446744073709551615000 us is after year 9999, not representable"
    ]
    # A whole payload stamped beyond the range: every metric alone, the node stays born.
    out = d.handle("spBv1.0/g/NDATA/n", _payload(1, [{"alias": 1, "double_value": 5.0}], 2**63), NOW)
    assert out.samples == [] and len(out.deadletters) == 1 and "after year 9999" in out.deadletters[0]
    out = d.handle("spBv1.0/g/NDATA/n", _payload(2, [{"alias": 1, "double_value": 6.0}], NOW // 1000), NOW)
    assert [s[3] for s in out.samples] == [6.0]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([DOUBLE, INT64, UINT64, STRING]),
            st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True),
                st.integers(min_value=-(2**63), max_value=2**64 - 1),
                st.text(max_size=20),
            ),
        ),
        min_size=1,
        max_size=5,
    ),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
)
def test_sparkplug_decoder_fuzz_never_raises_and_whatever_it_returns_can_be_carried(
    metrics: list[tuple[int, int | None, Any]], payload_ts: int | None
) -> None:
    birth: list[dict[str, Any]] = []
    for i, (dt, ts, v) in enumerate(metrics):
        m: dict[str, Any] = {"name": f"m{i}", "alias": i, "datatype": dt}
        if ts is not None:
            m["timestamp"] = ts
        if dt == DOUBLE:
            m["double_value"] = float(v) if not isinstance(v, str) else 0.5
        elif dt == STRING:
            m["string_value"] = str(v)
        elif isinstance(v, int):
            m["long_value"] = v if v >= 0 else v & (2**64 - 1)
        birth.append(m)
    try:
        out = _spb().handle("spBv1.0/g/NBIRTH/n", _payload(0, birth, payload_ts), NOW)
    except SpbMalformed:
        return
    _check_carried(out.samples)


# --- the agent loop -------------------------------------------------------------------------------


def test_agent_tick_survives_a_delivery_it_cannot_process_and_acknowledges_it_as_a_dead_letter(
    tmp_path: Path,
) -> None:
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": "poison",
            "plant": "steel",
            "sources": [
                {
                    "type": "mqtt",
                    "id": "m1",
                    "url": "mqtt://127.0.0.1:1",
                    "subscriptions": [{"template": "r/{equipment+}/{tag}"}],
                }
            ],
            "buffer": {"path": str(tmp_path / "buffer.db"), "synchronous": "normal"},
        }
    )
    agent = Agent(cfg, Settings.model_validate({"state_dir": tmp_path / "state"}), producer_factory=lambda: None)  # type: ignore[arg-type,return-value]
    acked: list[Hashable] = []
    agent.sources[0].ack = acked.extend  # type: ignore[method-assign,assignment]
    with Buffer(tmp_path / "buffer.db", synchronous="normal") as buf:
        agent.buffer = buf
        broken: Any = [("acme/site", "t", NOW)]  # a connector bug: a sample of the wrong shape
        agent.inbox.put(Delivery("m1", Origin.MQTT, [_s(1.0)], ack=(0, 1)))
        agent.inbox.put(Delivery("m1", Origin.MQTT, broken, ack=(0, 2)))
        # A reading no decoder vetted (the encoder would raise on it) beside a good one.
        agent.inbox.put(Delivery("m1", Origin.MQTT, [_s("\ud800", NOW + 1), _s(2.0, NOW + 2)], ack=(0, 3)))
        agent._tick(Batcher("steel", "t.raw", buf, 1000, 0.0), everything=True)
        rows = [r.entry for r in buf.read(0, 100)]
    assert acked == [(0, 1), (0, 2), (0, 3)], "everything committed is acknowledged"
    readings = [decode_readings(e.value) for e in rows if e.topic == "t.raw"]
    assert [v for b in readings for v in b.value] == [1.0, 2.0]
    dead = [
        bytes(dict(e.headers or [])["plantstream-reason"]).decode()
        for e in rows
        if e.topic != "t.raw" and e.count == 0 and e.headers
    ]
    assert len(dead) == 2
    assert any(r.startswith("internal error: ValueError") for r in dead), dead
    assert any("cannot be encoded" in r and "surrogate" in r for r in dead), dead
    assert agent.sources[0].status.deadletters == 2
    assert agent.sources[0].status.readings_in == 2


# --- OPC-UA ----------------------------------------------------------------------------------------


def _opcua() -> tuple[Any, Any, Any]:
    from asyncua import ua

    from plantstream.edge.config import OpcuaSource
    from plantstream.edge.opcua.source import OpcuaSourceRunner, _Item
    from plantstream.edge.source import Inbox

    cfg = OpcuaSource.model_validate(
        {
            "type": "opcua",
            "id": "o",
            "endpoint": "opc.tcp://127.0.0.1:1",
            "tags": [{"tag": "level", "equipment": "acme/site/caster", "node_id": "ns=2;s=level", "unit": "mm"}],
        }
    )
    inbox = Inbox()
    src = OpcuaSourceRunner(cfg, inbox, Path("/nonexistent"))
    return src, inbox, _Item(cfg.tags[0], ua.NodeId.from_string("ns=2;s=level"))


def _dv(value: Any, src: Any, srv: Any) -> Any:
    from asyncua import ua

    return ua.DataValue(ua.Variant(value), SourceTimestamp=src, ServerTimestamp=srv)


def test_opcua_source_and_server_timestamps_are_checked() -> None:
    from datetime import UTC, datetime, timedelta

    runner, inbox, item = _opcua()
    now = datetime.now(UTC)
    ok = runner._sample(item, _dv(1.5, now, now))
    assert ok is not None and ok[5] == 0 and ok[8] is None
    # Before 1970 (but not OPC-UA's 1601 "no timestamp"): that value alone is dead-lettered.
    assert runner._sample(item, _dv(2.5, datetime(1950, 1, 1, tzinfo=UTC), now)) is None
    [dead] = inbox.drain()
    assert dead.deadletter is not None and dead.samples is None
    assert dead.deadletter.reason.startswith("tag 'level': ts_us: timestamp -631152000000000 us is before 1970")
    assert dead.deadletter.origin == "o:ns=2;s=level"
    # A server timestamp a day ahead of the receiving clock: kept, flagged bad.
    s = runner._sample(item, _dv(3.5, now, now + timedelta(days=1)))
    assert s is not None and s[5] == 2 and s[8] is not None and s[8].startswith("server_ts_us:")
    # A source timestamp a month old: kept, flagged bad.
    s = runner._sample(item, _dv(4.5, now - timedelta(days=30), None))
    assert s is not None and s[5] == 2 and s[8] is not None and "before the receiving clock" in s[8]
    # NaN from the server with a good status: flagged bad, not good.
    s = runner._sample(item, _dv(math.nan, now, None))
    assert s is not None and s[5] == 2 and s[8] == "value: not finite (nan)"
    # A value the conversion itself cannot handle (here: a timestamp type no server sends) is
    # dead-lettered; it does not raise into the subscription loop.
    assert runner._sample(item, _dv(6.5, "yesterday", None)) is None
    [dead] = inbox.drain()
    assert dead.deadletter is not None and "internal error" in dead.deadletter.reason
    # 1601-01-01 is "no timestamp": the server's is taken.
    s = runner._sample(item, _dv(5.5, datetime(1601, 1, 1, tzinfo=UTC), now))
    assert s is not None and s[5] == 0 and abs(s[2] - now.timestamp() * 1e6) < 2
