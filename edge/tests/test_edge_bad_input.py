"""Bad input on MQTT JSON and Sparkplug B at once, through real Mosquitto and Kafka: every bad
payload is counted (status file and /metrics), dead-lettered with its reason and original bytes,
and good data keeps flowing around it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import cast

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Message
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.edge.agent import read_status
from plantstream.edge.config import EdgeConfig
from plantstream.edge.sparkplug import sparkplug_b_pb2 as pb
from plantstream.edge.sparkplug.decode import DOUBLE, UINT64
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, batches, metric, read_topic, scrape
from plantstream.testing.plugin import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

T0_MS = 1_700_000_000_000


def _spb(seq: int, metrics: list[dict[str, object]], ts_ms: int) -> bytes:
    p = pb.Payload(timestamp=ts_ms, seq=seq)
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


def test_bad_json_and_sparkplug_are_counted_dead_lettered_and_good_data_flows(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    root, group = f"bad-{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    url = f"mqtt://127.0.0.1:{mqtt_port}"
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": "bad-input",
            "plant": "steel",
            "metrics_port": 0,
            "sources": [
                {
                    "type": "mqtt",
                    "id": "m1",
                    "url": url,
                    "client_id": f"edge-{root}",
                    "session_expiry_s": 60,
                    "max_payload_bytes": 4096,
                    "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
                },
                {
                    "type": "sparkplug",
                    "id": "spb",
                    "url": url,
                    "client_id": f"edge-spb-{root}",
                    "session_expiry_s": 60,
                    "group_ids": [group],
                    "equipment_prefix": "acme/site",
                },
            ],
            "batch": {"max_delay_ms": 20},
            "kafka": {"partitions": 2},
            "buffer": {"path": str(tmp_path / "buffer.db"), "synchronous": "normal"},
        }
    )
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "state_dir": tmp_path / "state"}
    )
    topics = Topics(topic_prefix, 2)
    json_topic = f"{root}/acme/site/area/temp"
    ndata = f"spBv1.0/{group}/NDATA/gw1"
    bad_json = [
        (b"{not json", "payload is not JSON"),
        (b'{"ts_us": 5, "value": {"x": 1}}', "value is dict"),
        (b'{"ts_us": "yesterday", "value": 1.0}', "timestamp is str"),
        (b"x" * 5000, "exceeds max_payload_bytes 4096"),
        (b'{"ts_us": 5, "value": "\xff\xfe"}', "payload is not UTF-8"),
    ]
    unknown_alias = _spb(2, [{"alias": 1, "datatype": DOUBLE, "double_value": 2.5}, {"alias": 99, "datatype": DOUBLE,
                                                                                       "double_value": 9.0}], T0_MS + 2)  # fmt: skip
    bad_spb = [
        (unknown_alias, "unknown alias 99"),
        (b"\x0f\x0f\x0f not a protobuf", "payload is not a Sparkplug B protobuf"),
    ]
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{root}")
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    try:
        with AgentThread(cfg, settings) as at:
            a = at.agent
            wait_until(lambda: all(s.status.connected for s in a.sources), 20, "both sources subscribed")
            assert a.metrics.port is not None
            birth = [
                {"name": "bdSeq", "datatype": UINT64, "long_value": 0},
                {"name": "speed", "alias": 1, "datatype": DOUBLE, "double_value": 1.5},
            ]
            pub.publish(f"spBv1.0/{group}/NBIRTH/gw1", _spb(0, birth, T0_MS), qos=1)
            pub.publish(ndata, _spb(1, [{"alias": 1, "datatype": DOUBLE, "double_value": 2.0}], T0_MS + 1), qos=1)
            ts0 = 1_700_000_000_000_000
            good: set[tuple[int, float]] = set()
            for i in range(30):
                if i < len(bad_json):
                    pub.publish(json_topic, bad_json[i][0], qos=1)
                if i < len(bad_spb):
                    pub.publish(ndata, bad_spb[i][0], qos=1)
                good.add((ts0 + i, float(i)))
                pub.publish(json_topic, json.dumps({"ts_us": ts0 + i, "value": float(i)}), qos=1)
            # After all of it, the agent still takes good data on both sources.
            pub.publish(ndata, _spb(3, [{"alias": 1, "datatype": DOUBLE, "double_value": 3.0}], T0_MS + 3), qos=1)
            want_spb = {(T0_MS * 1000, 1.5), ((T0_MS + 1) * 1000, 2.0), ((T0_MS + 2) * 1000, 2.5),
                        ((T0_MS + 3) * 1000, 3.0)}  # fmt: skip

            def rows(ms: list[Message], tag: str) -> set[tuple[int, float]]:
                return {
                    (ts, float(v))
                    for b in batches(ms)
                    for t, ts, v in zip(b.tag, b.ts_us, b.value, strict=True)
                    if t == tag
                }

            raw = read_topic(kafka_bootstrap, topics.raw,
                             lambda ms: good <= rows(ms, "temp") and want_spb <= rows(ms, "gw1.speed"), 40)  # fmt: skip
            n_bad = len(bad_json) + len(bad_spb)
            dl = read_topic(kafka_bootstrap, topics.deadletter, lambda ms: len(ms) >= n_bad, 30)
            # Counted: the status file (rewritten every 2 s) and /metrics.
            wait_until(
                lambda: (
                    {s["id"]: s["deadletters"] for s in (read_status(cfg, settings) or {}).get("sources", [])}
                    == {"m1": len(bad_json), "spb": len(bad_spb)}
                ),
                10,
                "dead letters in the status file",
            )
            samples = scrape(a.metrics.port)
            assert all(s.status.connected for s in a.sources), "still running after the bad input"
            st = read_status(cfg, settings) or {}
    finally:
        pub.loop_stop()
        pub.disconnect()

    assert rows(raw, "temp") == good, "exactly the good JSON readings"
    assert rows(raw, "gw1.speed") == want_spb, "the known alias of the message with an unknown one still delivered"
    dead = "plantstream_deadletters_total"
    assert metric(samples, dead, source="m1") == len(bad_json)
    assert metric(samples, dead, source="spb") == len(bad_spb)
    assert metric(samples, dead, source="m1", reason="payload is not JSON") == 1
    assert metric(samples, dead, source="spb", reason="payload is not a Sparkplug B protobuf") == 1
    assert metric(samples, "plantstream_edge_protocol_events_total", source="spb", event="unknown_alias") == 1
    spb_status = next(s for s in st["sources"] if s["id"] == "spb")
    assert spb_status["events"]["unknown_alias"] == 1
    assert len(dl) == n_bad, "one dead letter per bad payload"
    letters = []
    for m in dl:
        # Consumed headers are (str, bytes) pairs at runtime; the stub shares the produce-side type.
        h = dict(cast("list[tuple[str, bytes]]", m.headers() or []))
        assert h["plantstream-stage"] == b"edge"
        letters.append((bytes(m.value() or b""), h["plantstream-reason"].decode(), h["plantstream-origin"].decode()))
    for payload, why in bad_json:
        assert any(v == payload and why in r and o == f"m1:{json_topic}" for v, r, o in letters), (why, letters)
    for payload, why in bad_spb:
        assert any(v == payload and why in r and o == f"spb:{ndata}" for v, r, o in letters), (why, letters)
