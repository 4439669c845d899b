"""Topic templates and JSON payloads -> samples, and every malformed shape named."""

from __future__ import annotations

import json

import pytest

from plantstream.edge.config import MqttSource
from plantstream.edge.mqtt.decode import Malformed, MqttDecoder


def _decoder(**sub: object) -> MqttDecoder:
    cfg = MqttSource.model_validate(
        {
            "type": "mqtt",
            "id": "m",
            "url": "mqtt://127.0.0.1:1883",
            "max_payload_bytes": 200,
            "subscriptions": [{"template": "plantstream-sim/steel/{equipment+}/{tag}", **sub}],
            "tags": [{"tag": "t1", "equipment": "acme/x", "unit": "bar"}],
        }
    )
    return MqttDecoder(cfg)


def test_template_maps_segments_to_equipment_and_tag() -> None:
    d = _decoder()
    s = d.decode(
        "plantstream-sim/steel/acme/site/area/line/unit/mould.level",
        json.dumps({"ts_us": 1_700_000_000_000_001, "value": 12.5, "unit": "mm", "quality": "good"}).encode(),
        1_700_000_000_000_005,
    )
    assert s == ("acme/site/area/line/unit", "mould.level", 1_700_000_000_000_001, 12.5, "mm", 0, None, None, None)


def test_values_keep_their_type_and_quality_maps() -> None:
    d = _decoder()
    base = "plantstream-sim/steel/acme/x/"
    assert d.decode(base + "t1", b'{"ts_us": 5, "value": true, "quality": "bad"}', 0)[3:6] == (True, "bar", 2)
    assert d.decode(base + "t2", b'{"ts_us": 5, "value": 7}', 0)[3] == 7
    assert d.decode(base + "t2", b'{"ts_us": 5, "value": "RUN"}', 0)[3] == "RUN"


@pytest.mark.parametrize(
    ("fmt", "raw", "us"),
    [
        ("epoch_ms", 1_700_000_000_123, 1_700_000_000_123_000),
        ("epoch_s", 1_700_000_000.5, 1_700_000_000_500_000),
        ("iso8601", "2023-11-14T22:13:20.25Z", 1_700_000_000_250_000),
    ],
)
def test_timestamp_formats(fmt: str, raw: object, us: int) -> None:
    d = _decoder(timestamp_format=fmt)
    assert d.decode("plantstream-sim/steel/a/t", json.dumps({"ts_us": raw, "value": 1}).encode(), 0)[2] == us


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("plantstream-sim/steel/a/t", b"{not json", "not JSON"),
        ("plantstream-sim/steel/a/t", b"\xff\xfe", "not UTF-8"),
        ("plantstream-sim/steel/a/t", b'{"ts_us": 1}', "value missing"),
        ("plantstream-sim/steel/a/t", b'{"ts_us": 1, "value": null}', "value is NoneType"),
        ("plantstream-sim/steel/a/t", b'{"ts_us": 1, "value": [1]}', "value is list"),
        ("plantstream-sim/steel/a/t", b'{"ts_us": "x", "value": 1}', "timestamp is str"),
        ("plantstream-sim/steel/a/t", b'{"value": 1}', "timestamp missing"),
        ("plantstream-sim/steel/a/t", b'{"ts_us": 1, "value": 1, "quality": "meh"}', "quality"),
        ("plantstream-sim/steel/a/t", b'{"ts_us": 1, "value": 1, "unit": 3}', "unit is int"),
        ("plantstream-sim/steel/a/t", b"[" + b"1," * 150 + b"1]", "exceeds max_payload_bytes"),
        ("plantstream-sim/steel/a/b/c/d/e/f/t", b'{"ts_us": 1, "value": 1}', "not 1-5 ISA-95 levels"),
        ("other/topic", b'{"ts_us": 1, "value": 1}', "matches no configured"),
    ],
)
def test_malformed_payloads_name_the_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        _decoder().decode(topic, payload, 0)


def test_payloads_the_fast_parser_rejects_read_as_the_standard_parser_reads_them() -> None:
    """orjson refuses NaN / Infinity literals and integers beyond 64 bits; some loggers send the
    literals, so they decode exactly as with the standard parser (then validation decides)."""
    import math

    d = _decoder()
    topic = "plantstream-sim/steel/acme/x/t2"
    nan = d.decode(topic, b'{"ts_us": 5, "value": NaN}', 0)[3]
    assert isinstance(nan, float) and math.isnan(nan)
    assert d.decode(topic, b'{"ts_us": 5, "value": -Infinity}', 0)[3] == -math.inf
    # (an integer beyond 64 bits is then stored as a double)
    assert d.decode(topic, b'{"ts_us": 5, "value": 123456789012345678901234567890}', 0)[3] == 1.2345678901234568e29
    with pytest.raises(Malformed, match=r"not UTF-8 \(invalid start byte at byte 23\)"):
        d.decode(topic, b'{"ts_us": 5, "value": "\xff"}', 0)


def test_json_array_payload_is_many_readings_of_the_topic_tag() -> None:
    d = _decoder(readings_path="$")
    payload = json.dumps([{"ts_us": 10 + i, "value": float(i), "quality": "good"} for i in range(3)]).encode()
    samples, problems = d.decode_all("plantstream-sim/steel/acme/x/t1", payload, 0)
    assert problems == []
    assert [(s[0], s[1], s[2], s[3], s[4]) for s in samples] == [
        ("acme/x", "t1", 10 + i, float(i), "bar") for i in range(3)
    ]


def test_list_inside_an_object_with_tags_per_reading_and_bad_elements_reported() -> None:
    d = _decoder(readings_path="data.readings", tag_path="name", timestamp_path="t", timestamp_format="epoch_ms")
    doc = {
        "gw": "g7",
        "data": {
            "readings": [
                {"name": "press", "t": 1000, "value": 2.5},
                {"name": "temp", "t": 1001, "value": {"bad": 1}},
                {"t": 1002, "value": 7},  # no name: the topic's {tag}
                {"name": 5, "t": 1003, "value": 1},
            ]
        },
    }
    samples, problems = d.decode_all("plantstream-sim/steel/acme/x/gw7", json.dumps(doc).encode(), 0)
    assert [(s[1], s[2], s[3]) for s in samples] == [("press", 1_000_000, 2.5), ("gw7", 1_002_000, 7)]
    assert problems == [
        "reading 1 of 4: value is dict; expected a number, bool or string",
        "reading 3 of 4: tag at 'name' must be a non-empty string",
    ]
    with pytest.raises(Malformed, match=r"no list of readings at 'data\.readings'"):
        d.decode_all("plantstream-sim/steel/acme/x/gw7", b'{"data": {}}', 0)
    with pytest.raises(Malformed, match="are dict, not a list"):
        d.decode_all("plantstream-sim/steel/acme/x/gw7", b'{"data": {"readings": {}}}', 0)


def test_single_reading_subscription_refuses_an_array() -> None:
    with pytest.raises(Malformed, match="value missing"):
        _decoder().decode("plantstream-sim/steel/acme/x/t1", b'[{"ts_us": 1, "value": 1}]', 0)
