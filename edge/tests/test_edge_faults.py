"""Faults with real components: Kafka unreachable for 30 s mid-run, and the agent process killed
with SIGKILL mid-run. OPC-UA (in-process asyncua server) and MQTT (Mosquitto, QoS 1, persistent
session) feed one agent; Kafka is a private broker behind a stoppable proxy (see IsolatedKafka)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from confluent_kafka import Message
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.edge.agent import read_status
from plantstream.edge.buffer import Buffer
from plantstream.edge.config import EdgeConfig
from plantstream.producers.codec import decode_readings
from plantstream.producers.kafka import ensure_contract_topics
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, IsolatedKafka, OpcuaServerThread, batches, metric, read_topic, scrape
from plantstream.testing.plugin import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPC_TAG = "caster.level"
MQTT_TAG = "temp"
EQUIPMENT = "acme/site/area/caster1"


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedKafka]:
    with IsolatedKafka(tmp_path_factory.mktemp("kafka") / "tansu.log") as kafka:
        yield kafka


def _config(
    tmp_path: Path, kafka: IsolatedKafka, opc: OpcuaServerThread, mqtt_port: int, root: str, prefix: str
) -> dict[str, Any]:
    return {
        "agent_id": "faults",
        "plant": "steel",
        "metrics_port": 0,
        "sources": [
            {
                "type": "opcua",
                "id": "plc1",
                "endpoint": opc.endpoint,
                "publishing_interval_ms": 50,
                "sampling_interval_ms": 0,
                "queue_size": 10_000,
                "request_timeout_s": 2,
                "watchdog_interval_s": 0.5,
                "reconnect": {"min_s": 0.2, "max_s": 1},
                "tags": [{"node_id": opc.node_id(OPC_TAG), "tag": OPC_TAG, "equipment": EQUIPMENT, "unit": "mm"}],
            },
            {
                "type": "mqtt",
                "id": "m1",
                "url": f"mqtt://127.0.0.1:{mqtt_port}",
                "client_id": f"edge-{root}",
                "session_expiry_s": 300,  # long enough for the test, short enough not to litter the broker
                "reconnect": {"min_s": 0.2, "max_s": 1},
                "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
            },
        ],
        "kafka": {"bootstrap": kafka.bootstrap, "topic_prefix": prefix, "partitions": 2, "create_topics": False},
        "batch": {"max_delay_ms": 20, "max_readings": 50},
        "buffer": {"path": str(tmp_path / "edge" / "buffer.db")},
        "progress_interval_s": 5,
    }


class Load:
    """Writes an OPC-UA value and publishes an MQTT QoS 1 reading every ``1/hz`` s, each with a new
    source timestamp, recording (ts_us, monotonic time) of everything sent."""

    def __init__(self, opc: OpcuaServerThread, pub: mqtt.Client, root: str, hz: float = 40.0) -> None:
        self.opc, self.pub, self.topic, self.period = opc, pub, f"{root}/{EQUIPMENT}/{MQTT_TAG}", 1 / hz
        self.base = time.time_ns() // 1000
        self.opcua: list[tuple[int, float]] = []
        self.mqtt: list[tuple[int, float]] = []
        self._infos: list[mqtt.MQTTMessageInfo] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load")

    def _run(self) -> None:
        i = 0
        while not self._halt.wait(self.period):  # pacing of the load generator, not a wait for a condition
            i += 1
            ts = self.base + i * 1000
            self.opc.write(OPC_TAG, float(i), ts)
            self.opcua.append((ts, time.monotonic()))
            self._infos.append(self.pub.publish(self.topic, json.dumps({"ts_us": ts, "value": float(i)}), qos=1))
            self.mqtt.append((ts, time.monotonic()))

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(10)
        for info in self._infos:
            info.wait_for_publish(10)  # Mosquitto holds every one for the agent's persistent session
        assert all(info.is_published() for info in self._infos)


def _publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


Row = tuple[str, int, int]  # (tag, ts_us, seq)


def _rows(messages: list[Message]) -> list[Row]:
    """Readings in topic order (per partition; a tag lives in one partition)."""
    return [r for b in batches(messages) for r in zip(b.tag, b.ts_us, b.seq, strict=True)]


def _exactly_once(rows: list[Row], tag: str, want: set[int]) -> list[int]:
    """After dedup by (tag, ts, seq): every wanted timestamp exactly once (one seq), in order."""
    seen: set[Row] = set()
    unique = []
    for r in rows:
        if r[0] == tag and r not in seen:
            seen.add(r)
            unique.append(r)
    ts_order = [ts for _, ts, _ in unique]
    seqs = [s for _, _, s in unique]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{tag}: seq not strictly increasing in topic order"
    assert ts_order == sorted(ts_order), f"{tag}: per-tag order broken"
    got = [ts for ts in ts_order if ts in want]
    missing = want - set(got)
    assert not missing, f"{tag}: {len(missing)} of {len(want)} readings lost, e.g. {sorted(missing)[:5]}"
    assert len(got) == len(want), f"{tag}: {len(got) - len(want)} readings arrived under two seqs"
    return got


def _read_all(bootstrap: str, topic: str, want: dict[str, set[int]], timeout: float) -> list[Row]:
    def done(ms: list[Message]) -> bool:
        have: dict[str, set[int]] = {}
        for tag, ts, _ in _rows(ms):
            have.setdefault(tag, set()).add(ts)
        return all(w <= have.get(tag, set()) for tag, w in want.items())

    return _rows(read_topic(bootstrap, topic, done, timeout))


@pytest.mark.timeout(150)
def test_kafka_down_30s_mid_run_buffers_then_delivers_every_reading_once_in_order(
    tmp_path: Path, private_kafka: IsolatedKafka, mqtt_port: int, topic_prefix: str
) -> None:
    kafka, root = private_kafka, f"flt-{uuid.uuid4().hex[:8]}"
    topics = Topics(topic_prefix, 2)
    ensure_contract_topics(kafka.bootstrap, topics)
    settings = Settings.model_validate({"topic_prefix": topic_prefix, "state_dir": tmp_path / "state"})
    pub = _publisher(mqtt_port)
    try:
        with OpcuaServerThread(free_port(), [OPC_TAG]) as opc:
            cfg = EdgeConfig.model_validate(_config(tmp_path, kafka, opc, mqtt_port, root, topic_prefix))
            with AgentThread(cfg, settings) as at:
                a = at.agent
                wait_until(lambda: all(s.status.connected for s in a.sources), 30, "both sources subscribed")
                mport = a.metrics.port
                assert mport is not None
                load = Load(opc, pub, root).start()
                try:
                    fw = a.forwarder
                    assert fw is not None
                    wait_until(lambda: fw.stats.per_source.get("plc1", 0) > 20 and fw.stats.per_source.get("m1", 0) > 20,
                               20, "both sources delivering")  # fmt: skip
                    kafka.proxy.stop()
                    down_at = time.monotonic()

                    def snapshot(after_s: float) -> tuple[dict[str, Any], dict[Any, float]]:
                        wait_until(lambda: time.monotonic() - down_at >= after_s, after_s + 5, f"{after_s} s of outage")
                        # The status file is rewritten every 2 s and the gauges every 1 s.
                        prev = (read_status(cfg, settings) or {}).get("updated_us", 0)
                        wait_until(lambda: (read_status(cfg, settings) or {}).get("updated_us", 0) > prev, 5, "status")
                        return read_status(cfg, settings) or {}, scrape(mport)

                    st1, m1 = snapshot(6)
                    st2, m2 = snapshot(27)
                    wait_until(lambda: time.monotonic() - down_at >= 30, 10, "30 s of outage")
                    kafka.proxy.start()
                    delivered_before_restore = fw.stats.delivered_readings
                    # Live data keeps flowing while the backlog drains; stop the load a little later.
                    wait_until(lambda: fw.stats.delivered_readings > delivered_before_restore + 200, 60, "replay")
                finally:
                    load.stop()
                want = {OPC_TAG: {ts for ts, _ in load.opcua}, MQTT_TAG: {ts for ts, _ in load.mqtt}}
                rows = _read_all(kafka.bootstrap, topics.raw, want, 60)
                wait_until(lambda: (read_status(cfg, settings) or {})["buffer"]["entries"] == 0, 30, "buffer drained")
    finally:
        pub.loop_stop()
        pub.disconnect()

    # While Kafka was away: nothing delivered, the buffer (status file and /metrics) grew and aged.
    assert st2["kafka"]["delivered_readings"] == st1["kafka"]["delivered_readings"]
    b1, b2 = st1["buffer"], st2["buffer"]
    assert b2["readings"] >= b1["readings"] + 21 * 2 * 30, (b1, b2)  # ~21 s at 2 x 40 readings/s, with slack
    now1, now2 = st1["updated_us"], st2["updated_us"]
    age1, age2 = (now1 - b1["oldest_created_us"]) / 1e6, (now2 - b2["oldest_created_us"]) / 1e6
    assert age2 >= 25 and age2 - age1 >= 18, (age1, age2)
    g = "plantstream_edge_buffer_readings"
    assert metric(m2, g) > metric(m1, g) > 0
    g = "plantstream_edge_buffer_oldest_age_seconds"
    assert metric(m2, g) >= 24 and metric(m2, g) > metric(m1, g) + 15
    # Afterwards: every reading exactly once, per-tag order kept.
    opc_rows = _exactly_once(rows, OPC_TAG, want[OPC_TAG])
    mqtt_rows = _exactly_once(rows, MQTT_TAG, want[MQTT_TAG])
    assert len(opc_rows) > 1000 and len(mqtt_rows) > 1000


def _run_agent(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "plantstream.cli", "edge", "run", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _buffered(path: Path) -> list[Row]:
    buf = Buffer(path, readonly=True)
    try:
        return [
            r
            for s in buf.read(0, 1_000_000)
            if s.entry.count
            for b in [decode_readings(s.entry.value)]
            for r in zip(b.tag, b.ts_us, b.seq, strict=True)
        ]
    finally:
        buf.close()


@pytest.mark.timeout(150)
def test_sigkill_mid_run_loses_nothing_acknowledged(
    tmp_path: Path, private_kafka: IsolatedKafka, mqtt_port: int, topic_prefix: str
) -> None:
    kafka, root = private_kafka, f"kil-{uuid.uuid4().hex[:8]}"
    topics = Topics(topic_prefix, 2)
    ensure_contract_topics(kafka.bootstrap, topics)
    env = {**os.environ, "PLANTSTREAM_STATE_DIR": str(tmp_path / "state"), "PLANTSTREAM_LOG_FORMAT": "json"}
    settings = Settings.model_validate({"topic_prefix": topic_prefix, "state_dir": tmp_path / "state"})
    pub = _publisher(mqtt_port)
    log = tmp_path / "agent.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with OpcuaServerThread(free_port(), [OPC_TAG]) as opc:
            data = _config(tmp_path, kafka, opc, mqtt_port, root, topic_prefix)
            data["metrics_port"] = None
            cfg = EdgeConfig.model_validate(data)
            cfg_file = tmp_path / "edge.yaml"
            cfg_file.write_text(yaml.safe_dump(data))

            def status() -> dict[str, Any]:
                return read_status(cfg, settings) or {}

            def connected(pid: int) -> bool:
                st = status()
                return st.get("pid") == pid and all(s.get("connected") for s in st.get("sources", []))

            procs.append(_run_agent(cfg_file, env, log))
            wait_until(lambda: connected(procs[0].pid), 40, "agent subscribed to both sources")
            load = Load(opc, pub, root).start()
            try:
                wait_until(lambda: status().get("kafka", {}).get("delivered_readings", 0) > 100, 20, "delivering")
                # Kafka away: what arrives now is acknowledged upstream from the buffer alone.
                kafka.proxy.stop()
                wait_until(lambda: status()["buffer"]["readings"] > 150, 20, "readings piling up in the buffer")
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
                killed_at = time.monotonic()
                buffered = _buffered(cfg.buffer_path(settings))
                assert {t for t, _, _ in buffered} == {OPC_TAG, MQTT_TAG}, "both sources had buffered readings"
                # Down for a while: the broker keeps MQTT messages for the session; OPC-UA values are gone.
                published_at_kill = len(load.mqtt)
                wait_until(lambda: len(load.mqtt) >= published_at_kill + 80, 10, "publishing while the agent is down")
                kafka.proxy.start()
                procs.append(_run_agent(cfg_file, env, log))
                wait_until(lambda: connected(procs[1].pid), 40, "restarted agent subscribed")
                back_at = time.monotonic()
                wait_until(lambda: len(load.opcua) > 0 and load.opcua[-1][1] > back_at + 1.0, 10, "live data again")
            finally:
                load.stop()
            assert load.opcua[-1][1] > killed_at
            opc_want = {ts for tag, ts, _s in buffered if tag == OPC_TAG} | {ts for ts, t in load.opcua if t > back_at}
            mqtt_want = {ts for ts, _ in load.mqtt}  # all of them, also those published while it was down
            rows = _read_all(kafka.bootstrap, topics.raw, {OPC_TAG: opc_want, MQTT_TAG: mqtt_want}, 60)
            procs[1].send_signal(signal.SIGTERM)
            assert procs[1].wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        pub.loop_stop()
        pub.disconnect()

    _exactly_once(rows, OPC_TAG, opc_want)
    mq = _exactly_once(rows, MQTT_TAG, mqtt_want)
    assert len(mq) == len(load.mqtt)
    arrived = set(rows)
    lost = [r for r in buffered if r not in arrived]
    assert not lost, f"{len(lost)} buffered readings (same tag, ts and seq) never arrived, e.g. {lost[:3]}"
