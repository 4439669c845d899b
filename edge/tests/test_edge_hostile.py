"""Issue 15 item 1 through real Mosquitto and Kafka: good readings interleaved with payloads the
encoder cannot carry (lone surrogates, integers beyond 64 bits, Sparkplug timestamps beyond the
microsecond range, timestamps before 1970) - the agent keeps running, every good reading arrives,
every hostile one is dead-lettered alone with its reason; hostile messages queued in the broker
session while the agent is down are dead-lettered at the next start instead of crash-looping it.
Non-finite values and timestamps outside the window arrive flagged bad (items 4 and 8)."""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import cast

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Message
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.edge.config import EdgeConfig
from plantstream.edge.sparkplug import sparkplug_b_pb2 as pb
from plantstream.edge.sparkplug.decode import DOUBLE, UINT64
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, batches, read_topic
from plantstream.testing.plugin import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def _spb(seq: int, metrics: list[dict[str, object]], ts_ms: int) -> bytes:
    p = pb.Payload(timestamp=ts_ms, seq=seq)
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


def _reasons(ms: list[Message]) -> list[str]:
    # Consumed headers are (str, bytes) pairs at runtime; the stub shares the produce-side type.
    return [dict(cast("list[tuple[str, bytes]]", m.headers() or []))["plantstream-reason"].decode() for m in ms]


def test_hostile_samples_are_dead_lettered_alone_and_never_stop_the_agent(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    root, group = f"hostile-{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    url = f"mqtt://127.0.0.1:{mqtt_port}"
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": "hostile",
            "plant": "steel",
            "sources": [
                {
                    "type": "mqtt",
                    "id": "m1",
                    "url": url,
                    "client_id": f"edge-{root}",
                    "session_expiry_s": 120,
                    "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
                },
                {
                    "type": "sparkplug",
                    "id": "spb",
                    "url": url,
                    "client_id": f"edge-spb-{root}",
                    "session_expiry_s": 120,
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
    topic = f"{root}/acme/site/area/temp"
    ndata = f"spBv1.0/{group}/NDATA/gw1"
    now_us = time.time_ns() // 1000
    now_ms = now_us // 1000
    hostile = [
        b'{"ts_us": %d, "value": "\\ud800"}' % now_us,
        b'{"ts_us": %d, "value": "ok", "unit": "\\udfff"}' % now_us,
        b'{"ts_us": %d, "value": 1%s}' % (now_us, b"0" * 400),
        b'{"ts_us": -1, "value": 1.0}',
        b'{"ts_us": 1%s, "value": 1.0}' % (b"0" * 30),
    ]
    hostile_why = ["value: string holds a lone surrogate", "unit: string holds a lone surrogate",
                   "value: integer of 1329 bits", "ts_us: timestamp -1 is before 1970", "after year 9999"]  # fmt: skip
    spb_bad = _spb(2, [{"alias": 1, "datatype": DOUBLE, "double_value": 9.0, "timestamp": 2**64 - 1}], now_ms)
    flagged = [  # kept, flagged bad
        (now_us + 100_000, b'{"ts_us": %d, "value": NaN}' % (now_us + 100_000), "value: not finite (nan)"),
        (now_us + 200_000, b'{"ts_us": %d, "value": -Infinity}' % (now_us + 200_000), "value: not finite (-inf)"),
        (now_us - 30 * 86_400_000_000, b'{"ts_us": %d, "value": 5.0}' % (now_us - 30 * 86_400_000_000),
         "before the receiving clock"),
    ]  # fmt: skip
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{root}")
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    good: set[tuple[int, float]] = set()
    n_good = 600

    def good_msg(i: int) -> None:
        good.add((now_us + i, float(i)))
        pub.publish(topic, json.dumps({"ts_us": now_us + i, "value": float(i)}), qos=1).wait_for_publish(5)

    def rows(ms: list[Message], tag: str) -> dict[int, tuple[object, int, str | None]]:
        return {
            ts: (v, q, r)
            for b in batches(ms)
            for t, ts, v, q, r in zip(b.tag, b.ts_us, b.value, b.quality, b.reason, strict=True)
            if t == tag
        }

    try:
        with AgentThread(cfg, settings) as at:
            a = at.agent
            wait_until(lambda: all(s.status.connected for s in a.sources), 20, "both sources subscribed")
            birth = [
                {"name": "bdSeq", "datatype": UINT64, "long_value": 0},
                {"name": "speed", "alias": 1, "datatype": DOUBLE, "double_value": 1.5},
            ]
            pub.publish(f"spBv1.0/{group}/NBIRTH/gw1", _spb(0, birth, now_ms), qos=1)
            pub.publish(ndata, _spb(1, [{"alias": 1, "datatype": DOUBLE, "double_value": 2.0}], now_ms + 1), qos=1)
            for i in range(n_good):
                if i % 50 == 7 and i // 50 < len(hostile):
                    pub.publish(topic, hostile[i // 50], qos=1)
                if i == 100:
                    pub.publish(ndata, spb_bad, qos=1)
                if i == 200:
                    for _ts, payload, _why in flagged:
                        pub.publish(topic, payload, qos=1)
                good_msg(i)
            pub.publish(ndata, _spb(3, [{"alias": 1, "datatype": DOUBLE, "double_value": 3.0}], now_ms + 3), qos=1)
            wait_until(lambda: a.deadletters >= len(hostile) + 1, 30, "the hostile payloads dead-lettered")
            assert at._thread.is_alive() and at.error is None, "the agent survived the hostile payloads"
        # Agent down: poison (and good data) queue in its persistent session; the next start
        # must dead-letter the poison, not crash on it again and again.
        for i in range(n_good, n_good + 50):
            if i == n_good + 10:
                pub.publish(topic, hostile[0], qos=1).wait_for_publish(5)
            good_msg(i)
        with AgentThread(cfg, settings) as at:
            wait_until(lambda: at.agent.deadletters >= 1, 30, "the queued poison dead-lettered after the restart")
            raw = read_topic(
                kafka_bootstrap,
                topics.raw,
                lambda ms: len(rows(ms, "temp")) >= len(good) + len(flagged) and len(rows(ms, "gw1.speed")) >= 3,
                40,
            )
            dl = read_topic(kafka_bootstrap, topics.deadletter, lambda ms: len(ms) >= len(hostile) + 2, 30)
            assert at._thread.is_alive() and at.error is None
    finally:
        pub.loop_stop()
        pub.disconnect()

    temp = rows(raw, "temp")
    assert {(ts, v) for ts, (v, q, _r) in temp.items() if q == 0} == good, "every good reading, good"
    for ts, _payload, why in flagged:
        v, q, r = temp[ts]
        assert q == 2 and r is not None and why in r, (ts, v, q, r)
    assert len(temp) == len(good) + len(flagged), "nothing hostile among the readings"
    speed = rows(raw, "gw1.speed")
    assert {v for v, _q, _r in speed.values()} == {1.5, 2.0, 3.0}, "the Sparkplug node survives its bad metric"
    assert not any(isinstance(v, float) and math.isnan(v) for v, _q, _r in speed.values())
    reasons = _reasons(dl)
    assert len(reasons) == len(hostile) + 2, reasons
    for why in hostile_why:
        assert any(why in r for r in reasons), (why, reasons)
    assert any("metric 'speed': ts_us: timestamp" in r and "after year 9999" in r for r in reasons), reasons
    assert sum("lone surrogate" in r and r.startswith("value") for r in reasons) == 2, "the queued poison once"
