"""Real Mosquitto -> edge agent -> real Kafka: dead letters, persistent session across restarts."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.edge.config import EdgeConfig
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, batches, one_source_agent, read_topic
from plantstream.testing.plugin import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _setup(tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, prefix: str) -> tuple[EdgeConfig, Settings, str]:
    root = f"ps-test-{uuid.uuid4().hex[:8]}"
    source = {
        "type": "mqtt",
        "id": "m1",
        "url": f"mqtt://127.0.0.1:{mqtt_port}",
        "client_id": f"edge-{root}",
        "qos": 1,
        "max_payload_bytes": 4096,
        "reconnect": {"min_s": 0.2, "max_s": 1},
        "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
        "tags": [{"tag": "temp", "equipment": "acme/site/area", "unit": "degC", "lo": 0, "hi": 100}],
    }
    setup = one_source_agent(tmp_path, kafka_bootstrap, prefix, source, agent_id="mqtt-test")
    return setup.cfg, setup.settings, root


def _publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _good(root: str, ts: int, value: Any) -> tuple[str, bytes]:
    return f"{root}/acme/site/area/temp", json.dumps(
        {"ts_us": ts, "value": value, "unit": "degC", "quality": "good"}
    ).encode()


def _wait_subscribed(agent: AgentThread, pub: mqtt.Client, root: str) -> None:
    """Probe until the agent has a reading: the subscription is active from then on."""

    def probe() -> bool:
        pub.publish(*_good(root, 1, -1.0), qos=1)
        return bool(agent.agent.readings_in > 0)

    wait_until(probe, 20, "agent subscribed", interval=0.3)


def test_malformed_payloads_go_to_deadletter_and_agent_keeps_running(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    cfg, settings, root = _setup(tmp_path, kafka_bootstrap, mqtt_port, topic_prefix)
    topics = Topics(topic_prefix, 2)
    pub = _publisher(mqtt_port)
    bad = [
        (f"{root}/acme/site/area/temp", b"{not json", "not JSON"),
        (f"{root}/acme/site/area/temp", b"\xff\xfe\xfd", "not UTF-8"),
        (f"{root}/acme/site/area/temp", b'{"ts_us": 5}', "value missing"),
        (f"{root}/acme/site/area/temp", b'{"ts_us": 5, "value": {"x": 1}}', "value is dict"),
        (f"{root}/acme/site/area/temp", b"x" * 5000, "exceeds max_payload_bytes"),
    ]
    try:
        with AgentThread(cfg, settings) as agent:
            _wait_subscribed(agent, pub, root)
            ts0 = 1_700_000_000_000_000
            sent = []
            for i in range(40):
                if i % 8 == 3:
                    t, payload, _ = bad[(i // 8) % len(bad)]
                    pub.publish(t, payload, qos=1)
                sent.append((ts0 + i, float(i)))
                pub.publish(*_good(root, ts0 + i, float(i)), qos=1)
            for t, payload, _ in bad:
                pub.publish(t, payload, qos=1)
            want = {ts for ts, _ in sent}

            def got_all(ms: list[Any]) -> bool:
                return want <= {ts for b in batches(ms) for ts in b.ts_us}

            raw = read_topic(kafka_bootstrap, topics.raw, got_all, 40)
            rows = {(ts, v) for b in batches(raw) for ts, v in zip(b.ts_us, b.value, strict=True) if ts >= ts0}
            assert rows == set(sent)
            dl = read_topic(kafka_bootstrap, topics.deadletter, lambda ms: len(ms) >= 10, 30)
            assert agent.agent.sources[0].status.deadletters >= 10
            assert agent.agent.sources[0].status.connected, "agent still running after malformed input"
        reasons = []
        for m in dl:
            # Consumed headers are a list of (str, bytes) at runtime; the stub reuses the wider produce-side type.
            h = {k: bytes(v) for k, v in cast("list[tuple[str, bytes]]", m.headers() or [])}
            assert h["plantstream-stage"] == b"edge"
            assert h["plantstream-origin"] == f"m1:{root}/acme/site/area/temp".encode()
            reasons.append((bytes(m.value() or b""), h["plantstream-reason"].decode()))
        for _t, payload, why in bad:
            assert any(v == payload and why in r for v, r in reasons), (why, reasons)
        metas = read_topic(kafka_bootstrap, topics.tags, lambda ms: len(ms) >= 1, 20)
        assert [m.key() for m in metas] == [b"steel/temp"]
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_messages_published_while_agent_is_down_arrive_after_restart(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    cfg, settings, root = _setup(tmp_path, kafka_bootstrap, mqtt_port, topic_prefix)
    topics = Topics(topic_prefix, 2)
    pub = _publisher(mqtt_port)
    try:
        with AgentThread(cfg, settings) as agent:
            _wait_subscribed(agent, pub, root)
            first_seq = agent.agent.buffer.last_seq("m1") if agent.agent.buffer else 0
        ts0 = int(time.time() * 1e6)
        offline = [(ts0 + i, i) for i in range(200)]
        infos = [pub.publish(*_good(root, ts, v), qos=1) for ts, v in offline]
        for info in infos:
            info.wait_for_publish(10)  # the broker has them (for our persistent session)
        with AgentThread(cfg, settings):
            want = {ts for ts, _ in offline}
            raw = read_topic(
                kafka_bootstrap, topics.raw, lambda ms: want <= {ts for b in batches(ms) for ts in b.ts_us}, 40
            )
        got = [(ts, v, s) for b in batches(raw) for ts, v, s in zip(b.ts_us, b.value, b.seq, strict=True)]
        assert {(ts, v) for ts, v, _ in got if ts >= ts0} == set(offline)
        seqs = [s for ts, _, s in sorted(got, key=lambda r: r[2]) if ts >= ts0]
        assert min(seqs) > first_seq, "seq continues across restart"
        assert len(set(seqs)) == len(seqs)
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_json_arrays_many_readings_per_message_counted_as_readings(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    cfg, settings, root = _setup(tmp_path, kafka_bootstrap, mqtt_port, topic_prefix)
    data = cfg.model_dump(mode="json")
    data["sources"][0]["url"] = f"mqtt://127.0.0.1:{mqtt_port}"
    data["sources"][0]["subscriptions"][0]["readings_path"] = "$"
    cfg = EdgeConfig.model_validate(data)
    topics = Topics(topic_prefix, 2)
    topic = f"{root}/acme/site/area/temp"
    pub = _publisher(mqtt_port)
    ts0 = 1_700_000_000_000_000
    try:
        with AgentThread(cfg, settings) as agent:
            src = agent.agent.sources[0]
            wait_until(lambda: src.status.connected, 20, "subscribed")
            want = set()
            for m in range(20):
                rows = [(ts0 + m * 25 + k, float(m * 25 + k)) for k in range(25)]
                want.update(rows)
                pub.publish(topic, json.dumps([{"ts_us": t, "value": v} for t, v in rows]), qos=1)
            bad = json.dumps([{"ts_us": ts0 - 1, "value": 1.0}, {"ts_us": ts0 - 2, "value": None}, {"ts_us": ts0 - 3,
                                                                                                      "value": 3.0}])  # fmt: skip
            want.update({(ts0 - 1, 1.0), (ts0 - 3, 3.0)})
            pub.publish(topic, bad, qos=1)
            raw = read_topic(
                kafka_bootstrap,
                topics.raw,
                lambda ms: want <= {(t, v) for b in batches(ms) for t, v in zip(b.ts_us, b.value, strict=True)},
                30,
            )
            dl = read_topic(kafka_bootstrap, topics.deadletter, lambda ms: len(ms) >= 1, 20)
            assert src.status.readings_in == len(want), "readings counted, not messages"
            assert src.status.deadletters == 1
        got = [(t, v) for b in batches(raw) for t, v in zip(b.ts_us, b.value, strict=True)]
        assert sorted(got) == sorted(want), "each reading once"
        (letter,) = dl
        h = dict(cast("list[tuple[str, bytes]]", letter.headers() or []))
        assert h["plantstream-reason"] == b"reading 1 of 3: value is NoneType; expected a number, bool or string"
        assert letter.value() == bad.encode()
    finally:
        pub.loop_stop()
        pub.disconnect()
