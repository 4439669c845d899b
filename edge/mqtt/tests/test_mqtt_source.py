"""MQTT JSON connector alone (no buffer, no Kafka) against the stack's Mosquitto with the in-memory
kit: good readings become samples, hostile payloads dead letters or flagged samples, acks are
handed back and stop() ends run() promptly."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.edge.config import MqttSource
from plantstream.testing.sources import SourceRun, run_source

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EQ = "acme/site/area"


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    """The test body on a fresh loop, bounded in time."""
    asyncio.run(asyncio.wait_for(coro, timeout))


def config(port: int, root: str) -> MqttSource:
    return MqttSource.model_validate(
        {
            "type": "mqtt",
            "id": "m1",
            "url": f"mqtt://127.0.0.1:{port}",
            "client_id": f"edge-{root}",
            "qos": 1,
            "max_payload_bytes": 4096,
            "reconnect": {"min_s": 0.2, "max_s": 1},
            "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
            "tags": [{"tag": "temp", "equipment": EQ, "unit": "degC", "lo": 0, "hi": 100}],
        }
    )


def publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


async def subscribed(r: SourceRun, pub: mqtt.Client, root: str) -> None:
    """Probe on a separate tag until one arrives: the subscription is active from then on."""
    deadline = time.monotonic() + 10
    while not r.collect().samples("probe"):
        if time.monotonic() > deadline:
            raise AssertionError("the source never received a probe: not subscribed")
        pub.publish(f"{root}/{EQ}/probe", b'{"ts_us": 1, "value": 0}', qos=1)
        await r.inbox.wait(0.2)


def test_good_values_arrive_as_samples_and_are_acked(mqtt_port: int) -> None:
    root = f"ps-src-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1e6)

    async def body() -> None:
        pub = publisher(mqtt_port)
        try:
            async with run_source(config(mqtt_port, root)) as r:
                await subscribed(r, pub, root)
                for i in range(5):
                    payload = {"ts_us": now + i, "value": 20.0 + i, "unit": "degC", "quality": "good"}
                    pub.publish(f"{root}/{EQ}/temp", json.dumps(payload).encode(), qos=1)
                pub.publish(f"{root}/{EQ}/temp", json.dumps({"ts_us": now + 9, "value": 7, "quality": "bad"}), qos=1)
                await r.wait_for(lambda r: len(r.samples("temp")) >= 6)
                got = r.samples("temp")
                assert [s[3] for s in got[:5]] == [20.0, 21.0, 22.0, 23.0, 24.0]
                assert all(s[0] == EQ and s[4] == "degC" and s[5] == 0 for s in got[:5])
                assert [s[2] for s in got[:5]] == [now + i for i in range(5)]
                assert got[5][3] == 7 and isinstance(got[5][3], int) and got[5][5] == 2
                assert r.acked, "QoS 1 deliveries carry ack tokens the kit hands back"
                assert not r.deadletters()
                t0 = time.monotonic()
            # leaving the block stops the source; the kit fails if run() takes over 10 s
            assert time.monotonic() - t0 < 5
        finally:
            pub.loop_stop()
            pub.disconnect()

    run(body())


def test_hostile_payloads_become_deadletters_or_flagged_and_source_keeps_going(mqtt_port: int) -> None:
    root = f"ps-src-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1e6)
    topic = f"{root}/{EQ}/temp"

    async def body() -> None:
        pub = publisher(mqtt_port)
        try:
            async with run_source(config(mqtt_port, root)) as r:
                await subscribed(r, pub, root)
                pub.publish(topic, b"{not json", qos=1)
                pub.publish(topic, b'{"ts_us": 1, "value": "\\ud800"}', qos=1)  # lone surrogate
                pub.publish(topic, b"\xff\xfe", qos=1)  # not UTF-8
                pub.publish(topic, b"x" * 5000, qos=1)  # over max_payload_bytes
                pub.publish(topic, b'{"ts_us": %d, "value": NaN}' % now, qos=1)
                old = now - 30 * 86400 * 10**6
                pub.publish(topic, json.dumps({"ts_us": old, "value": 1.0}).encode(), qos=1)
                pub.publish(topic, json.dumps({"ts_us": now, "value": 42.0, "unit": "degC"}).encode(), qos=1)
                await r.wait_for(lambda r: len(r.deadletters()) >= 4 and len(r.samples("temp")) >= 3)
                reasons = [d.reason for d in r.deadletters()]
                assert all(reasons), reasons
                assert any("surrogate" in x for x in reasons), reasons
                assert all(d.origin.startswith("m1:") for d in r.deadletters())
                nan = [s for s in r.samples("temp") if isinstance(s[3], float) and math.isnan(s[3])]
                assert nan and nan[0][5] == 2 and "not finite" in (nan[0][8] or ""), nan
                stale = [s for s in r.samples("temp") if s[2] == old]
                assert stale and stale[0][5] == 2 and "window" in (stale[0][8] or ""), stale
                good = [s for s in r.samples("temp") if s[3] == 42.0]
                assert good and good[0][5] == 0, "a good reading after the poison still arrives good"
                assert len(r.acked) >= 7, "dead letters are acknowledged too"
        finally:
            pub.loop_stop()
            pub.disconnect()

    run(body())
