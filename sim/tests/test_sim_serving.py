"""Serving over real protocols: asyncua client, Mosquitto, Kafka-protocol broker; ledger == received."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors._base import UaStatusCodeError
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.contract import ContextEvent, ContextKind, now_us
from plantstream.sim.catalog import catalog
from plantstream.sim.ledger import Ledger, read_ledger
from plantstream.sim.server import SimOptions, SimServer, endpoint_url, namespace_uri
from plantstream.testing.plugin import free_port, wait_until

pytestmark = pytest.mark.integration
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def until(cond: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class _Collector:
    def __init__(self) -> None:
        self.by_tag: dict[str, list[tuple[int, Any, int]]] = {}
        self.count = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        dv = data.monitored_item.Value
        # Exact integer microseconds (float seconds would round).
        ts_us = (dv.SourceTimestamp.replace(tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
        self.by_tag.setdefault(node.nodeid.Identifier, []).append((ts_us, dv.Value.Value, dv.StatusCode.value))
        self.count += 1


class _MqttSink:
    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"simtest-{os.getpid()}-{id(self)}")
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p=None: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_opcua_and_mqtt_deliver_exactly_the_ledger(tmp_path: Path, mqtt_port: int, topic_prefix: str) -> None:
    ledger_path = tmp_path / "ledger.jsonl"
    port = free_port()
    sink = _MqttSink(mqtt_port, f"{topic_prefix}/chemical/#")
    wait_until(sink.subscribed.is_set, 10, "MQTT subscription")
    opts = SimOptions("chemical", seed=3, speed=120, rate=5, opcua_port=port, mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
                      mqtt_prefix=topic_prefix, ledger=ledger_path, duration_s=5, mes=False, linger_s=1.0)  # fmt: skip
    collector = _Collector()
    opcua_tags = [t for t in catalog("chemical") if t.transport == "opcua"]

    async def scenario() -> None:
        sim = SimServer(opts)
        task = asyncio.create_task(sim.run())
        await asyncio.wait_for(sim.ready.wait(), 20)
        client = Client(endpoint_url("chemical", port), timeout=10)
        await client.connect()
        try:
            assert await client.get_namespace_index(namespace_uri("chemical")) == 2
            types = {t: await client.get_node(f"ns=2;s={t}").read_data_type_as_variant_type()
                     for t in ("reactor.temperature", "product.batch_count", "compressor.running",
                               "product.current_batch")}  # fmt: skip
            assert types == {"reactor.temperature": ua.VariantType.Double, "product.batch_count": ua.VariantType.Int64,
                             "compressor.running": ua.VariantType.Boolean,
                             "product.current_batch": ua.VariantType.String}  # fmt: skip
            eu_range = await client.get_node("ns=2;s=reactor.temperature.EURange").read_value()
            assert (eu_range.Low, eu_range.High) == (80, 160)
            sub = await client.create_subscription(20, collector)
            await sub.subscribe_data_change([client.get_node(t.node_id) for t in opcua_tags], queuesize=10000, sampling_interval=ua.Double(0))  # fmt: skip
            plant = client.get_node("ns=2;s=chemical")
            method = ua.NodeId.from_string("ns=2;s=chemical.InjectFault")
            out = await plant.call_method(method, "reactor.temperature", "spike", 1.0)
            assert "spike on reactor.temperature" in out
            await plant.call_method(method, "reactor.level", "dropout", 1.0)
            with pytest.raises(UaStatusCodeError):
                await plant.call_method(method, "no.such_tag", "spike", 1.0)
            await asyncio.wait_for(sim.done.wait(), 30)
            expected = {r["tag"]: r for r in read_ledger(ledger_path) if r["transport"] == "opcua"}
            await until(lambda: all(collector.by_tag.get(t, [(0,)])[-1][0] == r["ts_us"] for t, r in expected.items()),
                        10, "the last ledgered value of every OPC-UA tag")  # fmt: skip
        finally:
            await client.disconnect()
        await asyncio.wait_for(task, 30)

    try:
        asyncio.run(scenario())
        rows = read_ledger(ledger_path)
        wait_until(lambda: len(sink.messages) >= sum(r["transport"] == "mqtt" for r in rows), 10, "all MQTT messages")
    finally:
        sink.close()

    # MQTT: subscribed before the simulator started, so everything ledgered arrived, exactly.
    mqtt_rows = [r for r in rows if r["transport"] == "mqtt"]
    assert mqtt_rows
    got = sorted((m["ts_us"], topic.rsplit("/", 1)[-1], m["value"], m["quality"]) for topic, m in sink.messages)
    want = sorted((r["ts_us"], r["tag"], r["value"], r["quality"]) for r in mqtt_rows)
    assert got == want
    units = {topic.rsplit("/", 1)[-1]: m["unit"] for topic, m in sink.messages}
    assert units["analyzer.feed_a"] == "percent"
    assert all(t.startswith(f"{topic_prefix}/chemical/acme/antwerp/pta/train1/analyzer/") for t, _ in sink.messages)

    # OPC-UA: from the first notification on (the subscription began after the start), each tag's
    # notifications are exactly its ledger entries: same values, same source timestamps, no gaps.
    for tag in (t.tag for t in opcua_tags):
        ledger_seq = [(r["ts_us"], r["value"], r["quality"]) for r in rows if r["tag"] == tag]
        recv = [(ts, v, "good" if code == 0 else "bad") for ts, v, code in collector.by_tag[tag]]
        first = ledger_seq.index(recv[0])
        assert recv == ledger_seq[first:], tag
    temps = [v for _, v, _ in collector.by_tag["reactor.temperature"]]
    assert max(temps) > 123.0  # the spike left the spec window
    assert any(code == StatusCodes.BadNoCommunication for _, _, code in collector.by_tag["reactor.level"])
    assert any(r["tag"] == "reactor.level" and r["value"] is None and r["quality"] == "bad" for r in rows)
    assert sum(len(v) for v in collector.by_tag.values()) > 200


def test_cli_runs_injects_fault_and_stops_on_sigterm(tmp_path: Path) -> None:
    ledger_path = tmp_path / "steel.jsonl"
    port = free_port()
    env = {**os.environ, "PLANTSTREAM_LOG_FORMAT": "json"}
    # No --duration: an hour of history to fast-forward (61 s at 60x), else sim time runs at wall pace.
    cmd = [sys.executable, "-m", "plantstream.cli", "sim", "steel", "--speed", "60", "--rate", "5",
           "--opcua-port", str(port), "--no-mes", "--mqtt-url", "", "--ledger", str(ledger_path),
           "--backfill", "3600"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: ledger_path.exists() and ledger_path.stat().st_size > 0, 30, "the ledger to fill")
        fault = subprocess.run(
            [sys.executable, "-m", "plantstream.cli", "sim", "fault", "--endpoint", endpoint_url("steel", port),
             "--tag", "caster1.casting_speed", "--kind", "spike", "--duration", "2"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert fault.returncode == 0, fault.stderr
        assert "spike on caster1.casting_speed" in fault.stdout
        bad = subprocess.run(
            [sys.executable, "-m", "plantstream.cli", "sim", "fault", "--endpoint", endpoint_url("steel", port),
             "--tag", "nope", "--kind", "spike"], env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bad.returncode != 0 and "refused" in bad.stderr

        def spiked() -> bool:
            speeds = [r["value"] for r in read_ledger(ledger_path) if r.get("tag") == "caster1.casting_speed"]
            return any(v > 1.6 for v in speeds)

        wait_until(spiked, 15, "casting speed above 1.6 m/min in the ledger")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert '"msg": "sim stopped"' in err
    assert ledger_path.read_text().endswith("\n")
    rows = read_ledger(ledger_path)
    assert {r["transport"] for r in rows} == {"opcua"}
    assert all(set(r) == {"plant", "tag", "ts_us", "value", "transport", "quality"} for r in rows)


def test_cli_rejects_bad_fault_option() -> None:
    proc = subprocess.run([sys.executable, "-m", "plantstream.cli", "sim", "steel", "--fault", "x:spike:3",
                           "--no-mes", "--duration", "1"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "unknown tag 'x'" in proc.stderr


def test_mes_context_events_reach_kafka_as_ledgered(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from plantstream.producers.codec import decode_context
    from plantstream.producers.kafka import ensure_topics
    from plantstream.producers.topics import Topics

    settings = Settings.from_env({}, kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix, partitions=2)
    topic = Topics(topic_prefix).context
    ensure_topics(kafka_bootstrap, [topic], 2)
    ledger_path = tmp_path / "mes.jsonl"
    # 600x: a 40 min heat takes 4 s, so heats, slabs, coils and lab results all happen.
    opts = SimOptions("steel", seed=9, speed=1200, rate=4, opcua_port=free_port(), mqtt_url="", ledger=ledger_path,
                      duration_s=6, mes=True, settings=settings, linger_s=0)  # fmt: skip
    asyncio.run(SimServer(opts).run())
    events = [r for r in read_ledger(ledger_path) if "event" in r]
    assert {e["event"] for e in events} == {k.value for k in ContextKind}

    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{topic_prefix}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
    got: list[ContextEvent] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < len(events) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = msg.value()
            assert value is not None, "context messages always carry a value"
            ev = decode_context(value)
            assert msg.key() == ev.key.encode()
            got.append(ev)
    finally:
        consumer.close()
    assert sorted((e.ts_us, e.kind.value, e.lot) for e in got) == sorted(
        (e["ts_us"], e["event"], e["lot"]) for e in events
    )
    labs = [e for e in got if e.kind is ContextKind.LAB_RESULT]
    assert labs and all(e.material == "EN10025-2:S355J2" and e.results for e in labs)


def test_paused_simulator_holds_everything_until_started(tmp_path: Path, mqtt_port: int, topic_prefix: str) -> None:
    """A paused plant serves sample 0 over OPC-UA (the subscriber's initial value) and emits nothing
    else, not even MQTT, until Start(): late subscribers then see exactly the ledger."""
    ledger_path = tmp_path / "ledger.jsonl"
    port = free_port()
    opts = SimOptions("chemical", seed=5, speed=60, rate=5, opcua_port=port, mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
                      mqtt_prefix=topic_prefix, ledger=ledger_path, duration_s=2, mes=False, paused=True)  # fmt: skip

    async def scenario() -> int:
        sim = SimServer(opts)
        task = asyncio.create_task(sim.run())
        await asyncio.wait_for(sim.ready.wait(), 20)
        # Paused: stays at sample 1 (sample 0 served) whatever time passes, until released.
        await asyncio.sleep(0.5)  # a stretch of time in which nothing may happen
        held_k = sim.k
        assert not sim.done.is_set()
        sink = _MqttSink(mqtt_port, f"{topic_prefix}/chemical/#")
        await until(sink.subscribed.is_set, 10, "MQTT subscription")
        try:
            await call_start(endpoint_url("chemical", port))
            await asyncio.wait_for(sim.done.wait(), 30)
            rows = read_ledger(ledger_path)
            want = sum(r["transport"] == "mqtt" for r in rows)
            await until(lambda: len(sink.messages) >= want, 10, "every ledgered MQTT message")
            assert len(sink.messages) == want
        finally:
            sink.close()
        await asyncio.wait_for(task, 30)
        return held_k

    from plantstream.sim.server import call_start

    assert asyncio.run(scenario()) == 1


def test_stamps_start_where_the_run_starts_not_where_the_server_was_built(tmp_path: Path) -> None:
    """At speed 1 a sample is stamped when it goes out: the time spent building the model,
    starting the server or paused before Start() must not make every stamp lag the wall clock
    (it did by the start-up time, ~3 s under load, which the bench reported as latency)."""
    ledger_path = tmp_path / "ledger.jsonl"
    port = free_port()
    opts = SimOptions("steel", seed=3, speed=1, rate=10, opcua_port=port, ledger=ledger_path, duration_s=1,
                      mes=False, paused=True)  # fmt: skip

    async def scenario() -> int:
        sim = SimServer(opts)
        task = asyncio.create_task(sim.run())
        await asyncio.wait_for(sim.ready.wait(), 20)
        await asyncio.sleep(1.0)  # held paused: a stretch of time the stamps must not carry
        released = now_us()
        from plantstream.sim.server import call_start

        await call_start(endpoint_url("steel", port))
        await asyncio.wait_for(sim.done.wait(), 30)
        await asyncio.wait_for(task, 30)
        return released

    released = asyncio.run(scenario())
    stamps = sorted({r["ts_us"] for r in read_ledger(ledger_path) if "tag" in r})
    step = 100_000
    assert len(stamps) >= 5
    early = [t for t in stamps if t < released - step]
    assert len(early) == 1, f"only sample 0 (served before Start) may predate the release: {len(early)}"
    assert stamps[-1] <= now_us() and stamps[1] - released < 2 * step


def test_nothing_is_stamped_after_the_wall_clock_and_runs_share_no_lot(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast run (2 h of plant time in 4 s) fast-forwards history that ends now: every value and
    context event it sends is stamped at or before the wall clock when its sample is sent, the last
    ones close to it; a second run of the same plant and seed names its lots anew."""
    from plantstream.producers.kafka import ensure_topics
    from plantstream.producers.topics import Topics
    from plantstream.sim import server

    settings = Settings.from_env({}, kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix, partitions=1)
    ensure_topics(kafka_bootstrap, [Topics(topic_prefix).context], 1)
    stamps: list[int] = []  # source time of each value and event, in the order the server sends them
    sent: list[tuple[int, int]] = []  # (source time, wall clock as its sample began to go out)

    class StampLedger(Ledger):
        def _write(self, obj: dict[str, Any]) -> None:
            stamps.append(int(obj["ts_us"]))
            super()._write(obj)

    emit = SimServer._emit

    async def timed_emit(self: SimServer, k: int) -> None:
        wall, n = now_us(), len(stamps)
        await emit(self, k)
        sent.extend((ts, wall) for ts in stamps[n:])

    monkeypatch.setattr(server, "Ledger", StampLedger)
    monkeypatch.setattr(SimServer, "_emit", timed_emit)

    def run(name: str) -> tuple[list[dict[str, Any]], list[tuple[int, int]], int, int]:
        sent.clear()
        opts = SimOptions("steel", seed=9, speed=1800, rate=4, opcua_port=free_port(), mqtt_url="",
                          ledger=tmp_path / f"{name}.jsonl", duration_s=4, mes=True, settings=settings, linger_s=0)  # fmt: skip
        sim = SimServer(opts)
        asyncio.run(sim.run())
        return read_ledger(tmp_path / f"{name}.jsonl"), list(sent), now_us(), sim.step_us

    first, sent_first, ended, step_us = run("first")
    second, sent_second, _, _ = run("second")
    for rows, sent_run in ((first, sent_first), (second, sent_second)):
        assert len(sent_run) == len(rows) > 100  # every ledger line was timed as it went out
        future = [(ts, wall) for ts, wall in sent_run if ts > wall]
        assert not future, f"{len(future)} stamped after the wall clock, e.g. {future[:3]}"
    # History that ends now: the last sample is within a step (plus start-up) of the wall clock.
    last = max(r["ts_us"] for r in first if "tag" in r)
    assert ended - step_us - 5_000_000 <= last <= ended
    assert min(r["ts_us"] for r in first) < ended - 3600 * 1_000_000  # over an hour of plant history
    lots = [{r["lot"] for r in rows if r.get("event") == ContextKind.LOT_START.value} for rows in (first, second)]
    assert len(lots[0]) >= 3 and len(lots[1]) >= 3
    assert not lots[0] & lots[1], lots[0] & lots[1]
    # The lot tags name the run's lots too.
    heats = [
        {r["value"] for r in rows if r.get("tag") == "lf1.current_heat" and r["value"]} for rows in (first, second)
    ]
    assert heats[0] and heats[0] <= lots[0] and not heats[0] & heats[1]
