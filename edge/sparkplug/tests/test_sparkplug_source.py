"""Sparkplug B connector alone (no Kafka) against the stack's Mosquitto with the in-memory kit: a
birth then data by alias, data before any birth (dead-lettered with its bytes, a Rebirth NCMD sent),
hostile metrics, acks handed back, stop() ending run() promptly."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.edge.config import SparkplugSource
from plantstream.edge.sparkplug import sparkplug_b_pb2 as pb
from plantstream.edge.sparkplug.decode import DOUBLE, REBIRTH_METRIC, STRING
from plantstream.testing.sources import SourceRun, run_source

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def payload(seq: int, ts_ms: int, metrics: list[dict[str, Any]]) -> bytes:
    p = pb.Payload(timestamp=ts_ms, seq=seq)
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


class Node:
    """A Sparkplug edge node as a paho client; records the NCMDs the host sends it."""

    def __init__(self, port: int, group: str) -> None:
        self.group = group
        self.ncmds: list[tuple[str, pb.Payload]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"node-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"spBv1.0/{group}/NCMD/#", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.ncmds.append((msg.topic, pb.Payload.FromString(bytes(msg.payload))))

    def rebirths(self, node: str) -> int:
        with self._lock:
            return sum(
                1
                for t, p in self.ncmds
                if t.endswith(f"/NCMD/{node}") and any(m.name == REBIRTH_METRIC and m.boolean_value for m in p.metrics)
            )

    def publish(self, kind: str, node: str, body: bytes) -> None:
        self.client.publish(f"spBv1.0/{self.group}/{kind}/{node}", body, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def config(port: int, group: str) -> SparkplugSource:
    return SparkplugSource.model_validate(
        {
            "type": "sparkplug",
            "id": "spb",
            "url": f"mqtt://127.0.0.1:{port}",
            "client_id": f"edge-{group}",
            "qos": 1,
            "group_ids": [group],
            "equipment_prefix": "acme/site",
            "max_payload_bytes": 4096,
            "reconnect": {"min_s": 0.2, "max_s": 1},
        }
    )


async def subscribed(r: SourceRun, node: Node) -> None:
    """Births of a probe node until one is seen: the subscription is active from then on."""
    deadline = time.monotonic() + 10
    probe = [{"name": "p", "alias": 1, "datatype": DOUBLE, "double_value": 0.0}]
    while not r.collect().samples("probe.p"):
        if time.monotonic() > deadline:
            raise AssertionError(f"no probe birth seen: not subscribed; {r.deliveries!r}")
        node.publish("NBIRTH", "probe", payload(0, int(time.time() * 1000), probe))
        await r.inbox.wait(0.2)


def test_birth_then_data_by_alias_and_data_before_birth(mqtt_port: int, tmp_path: Path) -> None:
    group = f"g{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)

    async def body() -> None:
        node = Node(mqtt_port, group)
        try:
            async with run_source(config(mqtt_port, group), buffer_path=tmp_path / "buffer.db") as r:
                await subscribed(r, node)
                early = payload(1, now, [{"alias": 1, "timestamp": now, "datatype": DOUBLE, "double_value": 9.0}])
                node.publish("NDATA", "gw1", early)
                await r.wait_for(lambda r: len(r.deadletters()) >= 1)
                dl = r.deadletters()[0]
                assert dl.payload == early and dl.reason, dl
                deadline = time.monotonic() + 10
                while node.rebirths("gw1") < 1:  # the host asks the unknown node for its birth
                    assert time.monotonic() < deadline, "no Rebirth NCMD after data before a birth"
                    await asyncio.sleep(0.05)

                birth: list[dict[str, Any]] = [
                    {"name": "temp", "alias": 1, "timestamp": now, "datatype": DOUBLE, "double_value": 20.5},
                    {"name": "mode", "alias": 2, "timestamp": now, "datatype": STRING, "string_value": "run"},
                ]
                node.publish("NBIRTH", "gw1", payload(0, now, birth))
                data: list[dict[str, Any]] = [
                    {"alias": 1, "timestamp": now + 1, "datatype": DOUBLE, "double_value": 21.5},
                    {"alias": 2, "timestamp": now + 1, "datatype": STRING, "string_value": "hold"},
                ]
                node.publish("NDATA", "gw1", payload(1, now + 1, data))
                await r.wait_for(lambda r: len(r.samples("gw1.temp")) >= 2 and len(r.samples("gw1.mode")) >= 2)
                temp = r.samples("gw1.temp")
                assert [(s[2], s[3], s[5]) for s in temp[:2]] == [(now * 1000, 20.5, 0), ((now + 1) * 1000, 21.5, 0)]
                assert temp[0][0] == f"acme/site/{group}/gw1", temp[0]
                assert [s[3] for s in r.samples("gw1.mode")[:2]] == ["run", "hold"]
                assert r.acked, "QoS 1 deliveries carry ack tokens the kit hands back"
                t0 = time.monotonic()
            assert time.monotonic() - t0 < 5, "stop() ends run() promptly"
        finally:
            node.close()

    run(body())


def test_hostile_metrics_deadletter_or_flag_and_source_keeps_going(mqtt_port: int, tmp_path: Path) -> None:
    group = f"g{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)

    async def body() -> None:
        node = Node(mqtt_port, group)
        try:
            async with run_source(config(mqtt_port, group), buffer_path=tmp_path / "buffer.db") as r:
                await subscribed(r, node)
                birth: list[dict[str, Any]] = [
                    {"name": "temp", "alias": 1, "timestamp": now, "datatype": DOUBLE, "double_value": 1.0},
                    {"name": "s", "alias": 2, "timestamp": now, "datatype": STRING, "string_value": "ok"},
                ]
                node.publish("NBIRTH", "gw1", payload(0, now, birth))
                await r.wait_for(lambda r: len(r.samples("gw1.temp")) >= 1)
                node.publish("NDATA", "gw1", b"\x0a\xff\xff garbage")  # not a protobuf payload
                nan = [{"alias": 1, "timestamp": now + 1, "datatype": DOUBLE, "double_value": math.nan}]
                node.publish("NDATA", "gw1", payload(1, now + 1, nan))
                unknown = [{"alias": 77, "timestamp": now + 2, "datatype": DOUBLE, "double_value": 3.0}]
                node.publish("NDATA", "gw1", payload(2, now + 2, unknown))
                old = now - 30 * 86400 * 1000
                node.publish("NDATA", "gw1", payload(3, now + 3, [{"alias": 1, "timestamp": old, "double_value": 4.0}]))
                good = [{"alias": 1, "timestamp": now + 4, "datatype": DOUBLE, "double_value": 5.0}]
                node.publish("NDATA", "gw1", payload(4, now + 4, good))
                await r.wait_for(
                    lambda r: len(r.deadletters()) >= 2 and any(s[3] == 5.0 for s in r.samples("gw1.temp"))
                )
                reasons = [d.reason for d in r.deadletters()]
                assert all(reasons) and any("alias 77" in x for x in reasons), reasons
                temp = {s[2]: s for s in r.samples("gw1.temp")}
                assert temp[(now + 1) * 1000][5] == 2 and "not finite" in (temp[(now + 1) * 1000][8] or "")
                assert temp[old * 1000][5] == 2 and "window" in (temp[old * 1000][8] or "")
                assert temp[(now + 4) * 1000][5] == 0
                assert len(r.acked) >= 6, "dead letters are acknowledged too"
        finally:
            node.close()

    run(body())
