"""An agent restart keeps the Sparkplug births: data queued in the persistent MQTT session while
the agent was down is decoded from the persisted alias table, not dead-lettered until the next
birth. Real Mosquitto and the Kafka-protocol broker; the edge node is a paho publisher writing
Sparkplug B protobufs (QoS 1)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.edge.config import EdgeConfig
from plantstream.edge.sparkplug import sparkplug_b_pb2 as pb
from plantstream.edge.sparkplug.decode import DOUBLE, UINT64
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, batches, read_topic
from plantstream.testing.plugin import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _payload(seq: int, ts_ms: int, metrics: list[dict[str, Any]]) -> bytes:
    p = pb.Payload(timestamp=ts_ms, seq=seq)
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


def test_backlog_after_restart_is_decoded_with_the_persisted_births(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    group = f"g{uuid.uuid4().hex[:8]}"
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": "spb-restart",
            "plant": "steel",
            "sources": [
                {
                    "type": "sparkplug",
                    "id": "spb",
                    "url": f"mqtt://127.0.0.1:{mqtt_port}",
                    "client_id": f"edge-{group}",  # fixed: the broker keeps the session while we are down
                    "qos": 1,
                    "group_ids": [group],
                    "equipment_prefix": "acme/site",
                }
            ],
            "batch": {"max_delay_ms": 20},
            "kafka": {"partitions": 2},
            "buffer": {"path": str(tmp_path / "buf.db")},
        }
    )
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )
    topics = Topics(topic_prefix, 2)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"node-{group}")
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    t0 = int(time.time() * 1000)
    try:
        with AgentThread(cfg, settings) as agent:
            src = agent.agent.sources[0]
            wait_until(lambda: src.status.connected, 20, "sparkplug source subscribed")
            birth = [
                {"name": "bdSeq", "datatype": UINT64, "long_value": 0},
                {"name": "press/force", "alias": 7, "datatype": DOUBLE, "double_value": 1.0},
            ]
            pub.publish(f"spBv1.0/{group}/NBIRTH/gw1", _payload(0, t0, birth), qos=1).wait_for_publish(10)
            wait_until(lambda: src.status.events.get("birth", 0) == 1, 20, "the birth")
        births = tmp_path / "buf.sparkplug-spb.json"
        assert births.is_file() and '"press/force"' in births.read_text()
        # Agent down: the node goes on publishing by alias; the broker queues it in our session.
        for i in range(1, 6):
            data = [{"alias": 7, "double_value": 10.0 + i}]
            pub.publish(f"spBv1.0/{group}/NDATA/gw1", _payload(i, t0 + i, data), qos=1).wait_for_publish(10)
        with AgentThread(cfg, settings) as agent:
            raw = read_topic(
                kafka_bootstrap,
                topics.raw,
                lambda ms: {11.0, 12.0, 13.0, 14.0, 15.0} <= {v for b in batches(ms) for v in b.value},
                40,
            )
            ev = dict(agent.agent.sources[0].status.events)
        dead = read_topic(kafka_bootstrap, topics.deadletter, lambda ms: False, 2)
    finally:
        pub.loop_stop()
        pub.disconnect()
    values = sorted(v for b in batches(raw) for v, t in zip(b.value, b.tag, strict=True) if t == "gw1.press/force")
    assert values == [1.0, 11.0, 12.0, 13.0, 14.0, 15.0]  # each exactly once
    assert dead == [] and ev.get("rebirth_requested", 0) == 0 and ev.get("unknown_alias", 0) == 0
