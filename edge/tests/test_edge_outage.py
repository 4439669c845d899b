"""Kafka unreachable: the agent keeps buffering; the next run replays everything in order."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.edge.agent import read_status
from plantstream.edge.config import EdgeConfig
from plantstream.producers.kafka import ensure_contract_topics
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, batches, read_topic
from plantstream.testing.plugin import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_kafka_outage_buffers_then_replays_in_order(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    root = f"ps-out-{uuid.uuid4().hex[:8]}"

    def cfg(bootstrap: str) -> EdgeConfig:
        return EdgeConfig.model_validate(
            {
                "agent_id": "outage",
                "plant": "chemical",
                "sources": [
                    {
                        "type": "mqtt",
                        "id": "m1",
                        "url": f"mqtt://127.0.0.1:{mqtt_port}",
                        "client_id": f"edge-{root}",
                        "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
                    }
                ],
                "kafka": {
                    "bootstrap": bootstrap,
                    "create_topics": False,
                    "producer": {"message.timeout.ms": 1500, "socket.connection.setup.timeout.ms": 1000},
                },
                "buffer": {"path": str(tmp_path / "buffer.db")},
                "batch": {"max_readings": 7, "max_delay_ms": 10},
            }
        )

    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "state_dir": tmp_path / "state"}
    )
    topics = Topics(topic_prefix, 2)
    ensure_contract_topics(kafka_bootstrap, topics)
    dead_kafka = f"127.0.0.1:{free_port()}"
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    try:
        with AgentThread(cfg(dead_kafka), settings) as agent:
            a = agent.agent

            def probe() -> bool:
                pub.publish(f"{root}/plant/reactor/xmeas_1", json.dumps({"ts_us": 1, "value": 0.0}), qos=1)
                return bool(a.readings_in > 0)

            wait_until(probe, 20, "subscribed", interval=0.3)
            for i in range(100):
                pub.publish(f"{root}/plant/reactor/xmeas_1", json.dumps({"ts_us": 10 + i, "value": float(i)}), qos=1)
            wait_until(lambda: a.readings_in >= 100, 20, "readings buffered")
            wait_until(lambda: a.forwarder is not None and a.forwarder.stats.failures > 0, 20, "deliveries failing")
            assert a.forwarder is not None and a.forwarder.stats.delivered_readings == 0
        status = read_status(cfg(dead_kafka), settings)
        assert status is not None and status["buffer"]["readings"] >= 100, status
        with AgentThread(cfg(kafka_bootstrap), settings) as agent:
            wait_until(
                lambda: (read_status(cfg(kafka_bootstrap), settings) or {})["buffer"]["entries"] == 0,
                30,
                "buffer drained",
            )
        raw = read_topic(kafka_bootstrap, topics.raw, lambda ms: sum(len(b) for b in batches(ms)) >= 100, 20)
        rows = [(s, ts) for b in batches(raw) for s, ts in zip(b.seq, b.ts_us, strict=True) if ts >= 10]
        assert sorted(ts for _, ts in rows) == list(range(10, 110))
        by_seq = [ts for _, ts in sorted(rows)]
        assert by_seq == sorted(by_seq), "replayed in append order"
    finally:
        pub.loop_stop()
        pub.disconnect()
