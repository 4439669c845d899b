"""Tags an MQTT source accepts without listing them (issue 19): their first sighting in a run
publishes TagMeta with the source's defaults (grade above all), once; listed tags keep theirs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.contract import Grade, Origin, TagMeta
from plantstream.edge.agent import Agent
from plantstream.edge.batcher import Batcher, Sample
from plantstream.edge.buffer import Buffer
from plantstream.edge.config import EdgeConfig, MqttSource, unlisted_meta
from plantstream.edge.source import Delivery
from plantstream.producers.codec import decode_tag_meta
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, batches, read_topic
from plantstream.testing.plugin import wait_until


def _cfg(tmp: Path, defaults: dict[str, Any], url: str = "mqtt://127.0.0.1:1", root: str = "u") -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "agent_id": f"unlisted-{root}",
            "plant": "steel",
            "sources": [
                {
                    "type": "mqtt",
                    "id": "m1",
                    "url": url,
                    "client_id": f"edge-{root}",
                    "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
                    "defaults": defaults,
                    "tags": [{"tag": "listed", "equipment": "acme/site/area", "grade": "important"}],
                }
            ],
            "batch": {"max_delay_ms": 20},
            "kafka": {"partitions": 2},
            "buffer": {"path": str(tmp / "buffer.db"), "synchronous": "normal"},
        }
    )


def _sample(tag: str, ts: int, unit: str = "") -> Sample:
    return ("acme/site/area", tag, ts, float(ts), unit, 0, None, None, None)


def test_unlisted_meta_takes_the_source_defaults() -> None:
    src = MqttSource.model_validate(
        {
            "type": "mqtt",
            "id": "m1",
            "subscriptions": [{"template": "x/{equipment+}/{tag}"}],
            "defaults": {"grade": "general", "unit": "bar", "datatype": "int"},
        }
    )
    meta = unlisted_meta("steel", src, "p1", "acme/site/area", "")
    assert (meta.grade, meta.unit, meta.datatype, meta.source_address) == (Grade.GENERAL, "bar", "int", "mqtt:m1")
    assert unlisted_meta("steel", src, "p1", "acme/site/area", "kPa").unit == "kPa", "the reading's unit wins"
    plain = MqttSource.model_validate(
        {"type": "mqtt", "id": "m2", "subscriptions": [{"template": "x/{equipment}/{tag}"}]}
    )
    assert unlisted_meta("steel", plain, "p1", "acme/site/area", "").grade == Grade.CORE, "unset stays core"


def test_sources_that_discover_tags(tmp_path: Path) -> None:
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": "d",
            "plant": "steel",
            "sources": [
                {"type": "sparkplug", "id": "sp", "url": "mqtt://127.0.0.1:1"},
                {"type": "sparkplug", "id": "closed", "url": "mqtt://127.0.0.1:1", "accept_unlisted": False},
                {
                    "type": "opcua",
                    "id": "o",
                    "endpoint": "opc.tcp://127.0.0.1:4840",
                    "tags": [{"tag": "t", "equipment": "acme/site/area", "node_id": "ns=2;s=t"}],
                },
            ],
        }
    )
    assert list(cfg.discovering_sources()) == ["sp"]


def _metas(agent: Agent) -> list[TagMeta]:
    assert agent.buffer is not None
    return [decode_tag_meta(r.entry.value) for r in agent.buffer.read(0, 10_000) if r.entry.topic == agent.topics.tags]


@pytest.mark.parametrize(("defaults", "grade"), [({"grade": "general"}, Grade.GENERAL), ({}, Grade.CORE)])
def test_first_sighting_of_an_unlisted_tag_buffers_its_meta_once(
    tmp_path: Path, defaults: dict[str, Any], grade: Grade
) -> None:
    cfg = _cfg(tmp_path, defaults)
    a = Agent(cfg, Settings.model_validate({"state_dir": tmp_path}), lambda: None)  # type: ignore[arg-type,return-value]
    a.buffer = Buffer(tmp_path / "buffer.db", synchronous="normal")
    batcher = Batcher("steel", a.topics.raw, a.buffer, 1000, 0.0)
    try:
        for i, tag in enumerate(["new1", "new1", "listed", "new2", "new1"]):
            a.inbox.put(Delivery("m1", Origin.MQTT, [_sample(tag, i, "degC" if tag == "new2" else "")]))
            a._tick(batcher, everything=True)
        metas = _metas(a)
        assert [(m.tag, m.grade, m.unit) for m in metas] == [("new1", grade, ""), ("new2", grade, "degC")]
        # Ahead of the tag's readings in the buffer (so downstream knows the tag before its data).
        topics = [r.entry.topic for r in a.buffer.read(0, 10_000)]
        assert topics[0] == a.topics.tags and topics[1] == a.topics.raw
    finally:
        a.buffer.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_unlisted_tag_meta_reaches_kafka_with_the_default_grade(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    root = f"ul-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )
    cfg = _cfg(tmp_path, {"grade": "general"}, f"mqtt://127.0.0.1:{mqtt_port}", root)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{root}")
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    try:
        with AgentThread(cfg, settings) as at:
            wait_until(lambda: at.agent.sources[0].status.connected, 20, "subscribed")
            for i in range(3):
                body = json.dumps({"ts_us": 1_700_000_000_000_000 + i, "value": 1.0, "unit": "degC"})
                pub.publish(f"{root}/acme/site/area/flow", body, qos=1).wait_for_publish(10)
            topics = Topics(topic_prefix, 2)
            raw = read_topic(kafka_bootstrap, topics.raw, lambda ms: sum(len(b) for b in batches(ms)) >= 3, 30)
            assert sum(len(b) for b in batches(raw)) == 3

            def flow_metas(ms: list[Any]) -> list[TagMeta]:
                return [m for m in (decode_tag_meta(x.value() or b"") for x in ms) if m.tag == "flow"]

            tags = read_topic(kafka_bootstrap, topics.tags, lambda ms: len(flow_metas(ms)) >= 1 and len(ms) >= 2, 30)
        by_tag = {m.tag: m for m in (decode_tag_meta(x.value() or b"") for x in tags)}
        assert by_tag["flow"].grade == Grade.GENERAL and by_tag["flow"].unit == "degC"
        assert by_tag["listed"].grade == Grade.IMPORTANT
        assert len(flow_metas(tags)) == 1, "once per tag per run"
    finally:
        pub.loop_stop()
        pub.disconnect()
