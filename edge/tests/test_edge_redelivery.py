"""MQTT redelivery after a reconnect: a copy of a committed reading is dropped at the edge (not
given a new seq), also after the agent restarted; first deliveries are never dropped. Then the
real thing: the agent's broker connection cut mid-stream through a proxy."""

from __future__ import annotations

import json
import uuid
from collections.abc import Hashable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.contract import Origin
from plantstream.edge.agent import Agent
from plantstream.edge.batcher import Batcher, Sample
from plantstream.edge.buffer import Buffer
from plantstream.edge.config import EdgeConfig
from plantstream.edge.source import Delivery
from plantstream.producers.codec import decode_readings
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, batches, read_topic
from plantstream.testing.plugin import wait_until
from plantstream.testing.proxy import TcpProxy


def _cfg(url: str, root: str, tmp: Path) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "agent_id": "redeliver",
            "plant": "steel",
            "sources": [
                {
                    "type": "mqtt",
                    "id": "m1",
                    "url": url,
                    "client_id": f"edge-{root}",
                    "reconnect": {"min_s": 0.2, "max_s": 1},
                    "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
                }
            ],
            "batch": {"max_delay_ms": 20},
            "kafka": {"partitions": 2},
            "buffer": {"path": str(tmp / "buffer.db"), "synchronous": "normal"},
        }
    )


def _sample(ts: int, v: float) -> Sample:
    return ("acme/site/area", "temp", ts, v, "degC", 0, None, None, None)


def _commit(agent: Agent, deliveries: list[Delivery]) -> list[tuple[int, int]]:
    """Run the agent's commit step on ``deliveries``; (ts, seq) of what was stored."""
    assert agent.buffer is not None
    before = {r.id for r in agent.buffer.read(0, 100_000)}
    for d in deliveries:
        agent.inbox.put(d)
    agent._tick(Batcher("steel", "t.raw", agent.buffer, 1000, 0.0), everything=True)
    out = []
    for r in agent.buffer.read(0, 100_000):
        if r.id not in before and r.entry.topic != agent.topics.tags:  # not the new tag's TagMeta
            b = decode_readings(r.entry.value)
            out += list(zip(b.ts_us, b.seq, strict=True))
    return out


def test_redelivered_copies_are_dropped_even_after_restart(tmp_path: Path) -> None:
    cfg = _cfg("mqtt://127.0.0.1:1", "r", tmp_path)
    settings = Settings.model_validate({"state_dir": tmp_path / "state"})
    acked: list[Hashable] = []

    def agent() -> Agent:
        a = Agent(cfg, settings, producer_factory=lambda: None)  # type: ignore[arg-type,return-value]
        a.buffer = Buffer(tmp_path / "buffer.db", synchronous="normal")
        a.sources[0].ack = acked.extend  # type: ignore[method-assign,assignment]
        return a

    a = agent()
    first = _commit(a, [Delivery("m1", Origin.MQTT, [_sample(i, float(i))], ack=(1, i)) for i in range(10)])
    assert [ts for ts, _ in first] == list(range(10))
    # The same readings again, flagged as redelivered: dropped, yet acknowledged.
    again = _commit(
        a, [Delivery("m1", Origin.MQTT, [_sample(i, float(i))], ack=(2, i), redelivered=True) for i in range(5, 12)]
    )
    assert [ts for ts, _ in again] == [10, 11], "only the two never committed are stored"
    assert a.sources[0].status.duplicates_dropped == 5
    assert (2, 5) in acked and (2, 11) in acked
    # Not flagged: a repeat is a new reading (the edge cannot tell), so it is kept.
    assert [ts for ts, _ in _commit(a, [Delivery("m1", Origin.MQTT, [_sample(3, 3.0)], ack=(2, 99))])] == [3]
    # Same time, different value: a different reading even when flagged.
    assert len(_commit(a, [Delivery("m1", Origin.MQTT, [_sample(4, 4.5)], ack=(2, 98), redelivered=True)])) == 1
    assert a.buffer is not None
    a.buffer.close()
    # After a restart (e.g. kill -9 between commit and PUBACK) the window is read back from disk.
    b = agent()
    after = _commit(
        b, [Delivery("m1", Origin.MQTT, [_sample(i, float(i))], ack=(3, i), redelivered=True) for i in range(12)]
    )
    assert after == []
    assert b.sources[0].status.duplicates_dropped == 12
    b.buffer.close()  # type: ignore[union-attr]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_connection_cut_mid_stream_no_reading_gets_two_seqs(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    root = f"rd-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{root}")
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    proxy = TcpProxy(mqtt_port).start()
    n = 3000
    try:
        with AgentThread(_cfg(f"mqtt://127.0.0.1:{proxy.port}", root, tmp_path), settings) as at:
            src = at.agent.sources[0]
            wait_until(lambda: src.status.connected, 20, "subscribed")
            for i in range(n):
                pub.publish(f"{root}/plant/area/temp", json.dumps({"ts_us": 1_000_000 + i, "value": float(i)}), qos=1)
                if i in (1000, 2000):  # cut while messages are in flight, unacknowledged
                    proxy.stop()
                    proxy.start()
            want = set(range(1_000_000, 1_000_000 + n))
            raw = read_topic(
                kafka_bootstrap,
                Topics(topic_prefix, 2).raw,
                lambda ms: want <= {t for b in batches(ms) for t in b.ts_us},
                60,
            )
            reconnects = src.status.reconnects
            dropped = src.status.duplicates_dropped
        pairs = {(t, s) for b in batches(raw) for t, s in zip(b.ts_us, b.seq, strict=True) if t in want}
        assert {t for t, _ in pairs} == want, "nothing lost"
        assert len(pairs) == n, f"{len(pairs) - n} readings got a second seq (dropped at edge: {dropped})"
        assert reconnects >= 1
    finally:
        proxy.stop()
        pub.loop_stop()
        pub.disconnect()
