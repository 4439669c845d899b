"""Sparkplug 3.0 primary-host rules through a real Mosquitto, with the agent behind a stoppable
proxy so its connection can really break: STATE birth and will carry the same timestamp, the
birth comes after the subscriptions, a stale "offline" on its own topic is answered with the
birth again, and a sequence gap waits the reorder timeout: missing messages that arrive in time
cost no rebirth, a gap still open when it expires gets one (with nothing else sent by the node)."""

from __future__ import annotations

import json
import threading
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
from plantstream.edge.sparkplug.decode import DOUBLE, REBIRTH_METRIC, UINT64
from plantstream.testing.edge import AgentThread
from plantstream.testing.plugin import free_port, wait_until
from plantstream.testing.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _payload(seq: int, ts_ms: int, metrics: list[dict[str, Any]]) -> bytes:
    p = pb.Payload(timestamp=ts_ms, seq=seq)
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


class Observer:
    """A second MQTT client: sees STATE and NCMD as the edge nodes would, and publishes as a node."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        for t in topics:
            self.client.subscribe(t, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.append((msg.topic, bytes(msg.payload)))

    def states(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p in self.seen if t == topic and p]

    def ncmds(self) -> list[pb.Payload]:
        with self._lock:
            return [pb.Payload.FromString(p) for t, p in self.seen if "/NCMD/" in t]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_primary_host_state_and_reorder_timeout(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    group, host = f"g{uuid.uuid4().hex[:8]}", f"h{uuid.uuid4().hex[:8]}"
    state_topic = f"spBv1.0/STATE/{host}"
    proxy = TcpProxy(mqtt_port, listen_port=free_port()).start()
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": "spb-host",
            "plant": "steel",
            "sources": [
                {
                    "type": "sparkplug",
                    "id": "spb",
                    "url": f"mqtt://127.0.0.1:{proxy.port}",
                    "client_id": f"edge-{group}",
                    "qos": 1,
                    "keepalive_s": 5,
                    "group_ids": [group],
                    "host_id": host,
                    "reorder_timeout_s": 1.0,
                    "rebirth_interval_s": 0.5,
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
    obs = Observer(mqtt_port, [state_topic, f"spBv1.0/{group}/NCMD/#"])
    node = f"spBv1.0/{group}/{{}}/gw1"
    t0 = int(time.time() * 1000)
    birth = [
        {"name": "bdSeq", "datatype": UINT64, "long_value": 0},
        {"name": "press/force", "alias": 7, "datatype": DOUBLE, "double_value": 1.0},
    ]

    def data(seq: int) -> bytes:
        return _payload(seq, t0 + seq, [{"alias": 7, "double_value": float(seq)}])

    try:
        with AgentThread(cfg, settings) as agent:
            src: Any = agent.agent.sources[0]
            wait_until(lambda: any(s["online"] for s in obs.states(state_topic)), 20, "the STATE birth")
            ts = obs.states(state_topic)[0]["timestamp"]
            assert isinstance(ts, int) and abs(ts - t0) < 60_000

            # A stale offline STATE on our own topic: the birth again, same timestamp.
            obs.publish(state_topic, json.dumps({"online": False, "timestamp": ts - 5}).encode(), retain=True)
            wait_until(lambda: [s["online"] for s in obs.states(state_topic)][-1:] == [True], 20, "STATE again")
            assert [s["timestamp"] for s in obs.states(state_topic) if s["online"]] == [ts, ts]

            # Reordered within the timeout: no rebirth.
            obs.publish(node.format("NBIRTH"), _payload(0, t0, birth))
            for seq in (1, 3, 2, 4):
                obs.publish(node.format("NDATA"), data(seq))
            wait_until(lambda: src.status.events.get("reordered", 0) == 1, 20, "the late message")
            wait_until(lambda: all(st.reorder_deadline is None for st in src.decoder.nodes.values()), 20, "closed")
            assert src.status.events.get("seq_gap") == 1 and src.decoder.counters.rebirths_requested == 0

            # A gap that stays open: the rebirth comes when the timeout expires, unprompted.
            obs.publish(node.format("NDATA"), data(6))  # 5 never comes
            wait_until(lambda: len(obs.ncmds()) == 1, 20, "the rebirth request")
            (ncmd,) = obs.ncmds()
            assert [(m.name, m.boolean_value) for m in ncmd.metrics] == [(REBIRTH_METRIC, True)]
            assert src.decoder.counters.seq_gaps == 2 and src.decoder.counters.rebirths_requested == 1

            # The connection breaks: the broker publishes our will, with the birth's timestamp;
            # after the reconnect the birth again.
            proxy.stop()
            wait_until(lambda: obs.states(state_topic)[-1] == {"online": False, "timestamp": ts}, 30, "the will")
            proxy.start()
            wait_until(lambda: obs.states(state_topic)[-1] == {"online": True, "timestamp": ts}, 30, "birth again")
    finally:
        obs.publish(state_topic, b"", retain=True)  # clear the retained STATE for other runs
        obs.close()
        proxy.stop()
