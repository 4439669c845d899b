"""A full disk under the edge buffer (issue 15 item 9), on a real small filesystem (a tmpfs the
test mounts; see run_on_small_filesystem): the buffer's writes fail cleanly and resume; the agent
stays up, stops acknowledging MQTT, says so in its status file and metrics, and once space
returns every published reading reaches Kafka exactly once."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Hashable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import Settings
from plantstream.contract import Origin
from plantstream.edge.agent import Agent, read_status
from plantstream.edge.batcher import Batcher, Sample
from plantstream.edge.buffer import Buffer, Entry, error_kind, is_storage_error
from plantstream.edge.cli import edge as edge_cli
from plantstream.edge.config import EdgeConfig
from plantstream.edge.source import Delivery
from plantstream.producers.codec import decode_readings
from plantstream.producers.topics import Topics
from plantstream.testing.edge import (
    AgentThread,
    MqttAckCounter,
    batches,
    fill_disk,
    metric,
    read_topic,
    run_on_small_filesystem,
    scrape,
)
from plantstream.testing.plugin import wait_until


def _entry(i: int) -> Entry:
    return Entry("t.raw", f"k{i}".encode(), i.to_bytes(4, "big") + b"x" * 2000, "s1", count=1)


def _values(buf: Buffer) -> list[int]:
    return [int.from_bytes(r.entry.value[:4], "big") for r in buf.read(0, 100_000)]


def test_buffer_on_a_full_filesystem_fails_cleanly_and_resumes(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    def body(mnt: Path) -> None:
        path = mnt / "buffer.db"
        with Buffer(path, synchronous="normal") as buf:
            buf.append([_entry(i) for i in range(50)])
            ids = [r.id for r in buf.read(0, 100)]
            # An empty WAL, then no free page left: every write needs space it cannot get.
            assert buf._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            filler = mnt / "filler"
            assert fill_disk(filler) > 0
            with pytest.raises(sqlite3.Error) as appended:
                buf.append([_entry(i) for i in range(50, 60)])
            with pytest.raises(sqlite3.Error) as deleted:
                buf.delete(ids[:10])
            with pytest.raises(sqlite3.Error):
                buf.expire(now_us=time.time_ns() // 1000 + 10**13)  # everything past max_age
            for exc in (appended.value, deleted.value):
                assert is_storage_error(exc) and error_kind(exc) == "disk_full", exc
            assert {op: f.kind for op, f in buf.failing.items()} == {
                "append": "disk_full",
                "delete": "disk_full",
                "expire": "disk_full",
            }
            assert buf.write_failures == {"append": 1, "delete": 1, "expire": 1}
            # Nothing of the failed writes is stored, and the cached counters still match the disk.
            assert _values(buf) == list(range(50))
            assert buf.depth() == buf.live_depth() and buf.depth().readings == 50
            # The same append again, still full: fails again (counted), still nothing stored.
            with pytest.raises(sqlite3.Error):
                buf.append([_entry(i) for i in range(50, 60)])
            assert buf.failing["append"].attempts == 2 and buf.write_failures["append"] == 2

            filler.unlink()
            buf.append([_entry(i) for i in range(50, 60)])
            assert buf.delete(ids[:10]) == 10
            buf.expire()
            assert buf.failing == {}
            assert _values(buf) == list(range(10, 60)), "each entry once, in order"
            assert buf.depth() == buf.live_depth()
        with Buffer(path) as again:
            assert again._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert _values(again) == list(range(10, 60))

    run_on_small_filesystem(request, tmp_path / "fs", 4 << 20, body)


def test_readings_without_ack_are_held_up_to_the_cap_then_dropped_and_counted(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """OPC-UA (and MQTT QoS 0) cannot be left unacknowledged for the server to keep: while the
    buffer cannot be written they are held in memory up to buffer.max_held_readings, then dropped
    and counted. Acknowledgeable readings are never dropped (their broker holds them)."""

    def body(mnt: Path) -> None:
        cfg = EdgeConfig.model_validate(
            {
                "agent_id": "held",
                "plant": "steel",
                "sources": [
                    {
                        "type": "mqtt",
                        "id": "m1",
                        "url": "mqtt://127.0.0.1:1",
                        "subscriptions": [{"template": "h/{equipment+}/{tag}"}],
                    }
                ],
                "buffer": {"path": str(mnt / "b.db"), "synchronous": "normal", "max_held_readings": 50},
            }
        )
        a = Agent(cfg, Settings.model_validate({"state_dir": tmp_path / "state"}), lambda: None)  # type: ignore[arg-type,return-value]
        buf = a.buffer = Buffer(mnt / "b.db", synchronous="normal")
        acked: list[Hashable] = []
        a.sources[0].ack = acked.extend  # type: ignore[method-assign,assignment]
        batcher = Batcher("steel", "t.raw", buf, 1000, 0.0)

        def put(first: int, n: int, ack: bool) -> None:
            for i in range(first, first + n):
                sample: Sample = ("acme/site/area", "temp", i, float(i), "degC", 0, None, None, None)
                a.inbox.put(Delivery("m1", Origin.MQTT, [sample], ack=(1, i) if ack else None))
            a._tick(batcher, everything=False)

        assert buf._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        fill_disk(mnt / "filler")
        put(0, 30, ack=False)
        assert buf.failing["append"].kind == "disk_full" and a.held_readings(batcher) == 30
        put(30, 40, ack=False)  # 20 fit under the cap, 20 are dropped
        assert a.held_readings(batcher) == 50 and a.held_dropped == {"m1": 20}
        put(70, 10, ack=True)  # past the cap, but acknowledgeable: held, not acknowledged
        assert a.held_readings(batcher) == 60 and a.held_unacknowledged == 10 and acked == []
        a._update_gauges()
        labels = {"agent": "held", "reason": "storage_error"}
        assert a.metrics.registry.get_sample_value("plantstream_edge_dropped_readings_total", labels) == 20
        assert a.status()["buffer"]["dropped_unstored"] == {"m1": 20}
        assert a.sources[0].status.readings_in == 0, "counted once committed, not before"

        (mnt / "filler").unlink()

        # Retried with backoff (not on every tick): a few ticks until the next attempt is due.
        def retried() -> bool:
            a._tick(batcher, everything=False)
            return "append" not in buf.failing

        wait_until(retried, 10, "the append retried")
        raw = [r for r in buf.read(0, 1000) if r.entry.topic == "t.raw"]
        stored = sorted(t for r in raw for t in decode_readings(r.entry.value).ts_us)
        assert stored == [*range(50), *range(70, 80)]
        assert sorted(acked) == [(1, i) for i in range(70, 80)]  # type: ignore[type-var]
        assert a.sources[0].status.readings_in == 60 and a.held_readings(batcher) == 0
        buf.close()

    run_on_small_filesystem(request, tmp_path / "fs", 4 << 20, body)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_agent_survives_a_full_disk_and_forwards_everything_once(
    request: pytest.FixtureRequest, tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    def body(mnt: Path) -> None:
        _agent_on_full_disk(mnt, tmp_path, kafka_bootstrap, mqtt_port, topic_prefix)

    run_on_small_filesystem(request, tmp_path / "fs", 8 << 20, body)


def _depth(cfg: EdgeConfig, settings: Settings) -> int:
    """Readings in the agent's buffer, counted by a reader of its own (the agent's connection
    belongs to the agent's thread)."""
    st = read_status(cfg, settings)
    return int(st["buffer"]["readings"]) if st else -1


def _agent_on_full_disk(mnt: Path, tmp: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str) -> None:
    root = f"df-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp}
    )
    proxy = MqttAckCounter(mqtt_port)
    proxy.start()
    raw_cfg = {
        "agent_id": root,
        "plant": "steel",
        "metrics_port": 0,
        "sources": [
            {
                "type": "mqtt",
                "id": "m1",
                "url": f"mqtt://127.0.0.1:{proxy.port}",
                "client_id": f"edge-{root}",
                "reconnect": {"min_s": 0.2, "max_s": 1},
                "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
            }
        ],
        "batch": {"max_delay_ms": 20},
        "kafka": {"partitions": 2},
        # The status file lies beside the buffer, on the same full filesystem.
        "buffer": {"path": str(mnt / "buffer.db"), "synchronous": "normal"},
    }
    cfg = EdgeConfig.model_validate(raw_cfg)
    cfg_file = tmp / "edge.yaml"
    cfg_file.write_text(yaml.safe_dump(raw_cfg))
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{root}")
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    t0 = time.time_ns() // 1000
    published: list[int] = []

    def publish(n: int) -> None:
        for _ in range(n):
            ts = t0 + len(published)
            published.append(ts)
            info = pub.publish(f"{root}/plant/area/temp", json.dumps({"ts_us": ts, "value": float(ts % 1000)}), qos=1)
            info.wait_for_publish(10)

    filler = mnt / "filler"
    try:
        with AgentThread(cfg, settings) as at:
            agent, src = at.agent, at.agent.sources[0]
            wait_until(lambda: src.status.connected and agent.metrics.port, 20, "subscribed, metrics up")
            buf = agent.buffer
            assert buf is not None and agent.metrics.port is not None
            port = agent.metrics.port

            # 1. Normal operation: committed, acknowledged on the wire, forwarded and deleted.
            publish(100)
            wait_until(lambda: proxy.pubacks == 100 and _depth(cfg, settings) == 0, 30, "100 acked and forwarded")

            # 2. The filesystem fills up (the WAL emptied first, so appends need new space now).
            with contextlib.closing(sqlite3.connect(mnt / "buffer.db", timeout=10)) as side:
                assert side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            while "append" not in buf.failing:
                # Freed slack (a status file replaced meanwhile) may take a few more commits.
                assert len(published) < 2100, "appends never failed on a full filesystem"
                fill_disk(filler)
                want_in = src.status.readings_in + 1
                publish(1)
                wait_until(lambda: src.status.readings_in >= want_in or "append" in buf.failing, 10, "commit or fail")  # noqa: B023
            committed = src.status.readings_in
            publish(300)
            held = len(published) - committed
            wait_until(lambda: agent.held_unacknowledged == held, 20, f"{held} messages held unacknowledged")
            wait_until(lambda: proxy.pubacks == committed, 10, "acks of the committed messages only")
            assert at._thread.is_alive() and at.error is None, "the agent keeps running"
            assert agent.held_readings() == held

            def reported() -> bool:
                st = read_status(cfg, settings)
                err = (st or {}).get("buffer", {}).get("storage_error")
                return (
                    st is not None
                    and bool(err)
                    and err["state"] == "disk_full"
                    and st["buffer"]["held_unacknowledged"] == held
                )

            wait_until(reported, 15, "status file (rewritten in place on the full disk) reports disk_full")
            status = read_status(cfg, settings)
            assert status is not None
            err = status["buffer"]["storage_error"]
            assert err["acknowledging"] is False and "full" in err["error"]
            assert status["buffer"]["held_readings"] == held and status["buffer"]["write_failures"]["append"] >= 1
            wait_until(
                lambda: metric(scrape(port), "plantstream_edge_buffer_storage_error", kind="disk_full") == 1,
                10,
                "storage error gauge",
            )
            m = scrape(port)
            assert metric(m, "plantstream_edge_buffer_storage_error", kind="io_error") == 0
            assert metric(m, "plantstream_edge_buffer_write_failures_total", operation="append") >= 1
            assert metric(m, "plantstream_edge_held_readings") == held
            shown = CliRunner().invoke(edge_cli, ["status", "--config", str(cfg_file)])
            assert shown.exit_code == 0, shown.output
            assert "STORAGE ERROR (disk_full)" in shown.output and "NOT acknowledged" in shown.output, shown.output

            # 3. The connection drops while held: the broker resends every unacknowledged message
            # (DUP); the copies of held messages are recognised, not held a second time.
            proxy.stop()
            proxy.start()
            wait_until(lambda: agent.held_unacknowledged == 2 * held, 30, "redelivered copies arrive")
            assert agent.held_readings() == held, "a redelivered copy was held as a new reading"
            assert proxy.pubacks == committed, "nothing acknowledged while the buffer cannot store it"

            # 4. Space returns: the agent resumes by itself.
            filler.unlink()
            wait_until(lambda: "append" not in buf.failing and agent.held_unacknowledged == 0, 30, "append recovers")
            want = set(published)
            raw = read_topic(
                kafka_bootstrap,
                Topics(topic_prefix, 2).raw,
                lambda ms: want <= {t for b in batches(ms) for t in b.ts_us},
                60,
            )
            got = [t for b in batches(raw) for t in b.ts_us if t in want]
            assert set(got) == want, f"{len(want - set(got))} readings lost"
            assert len(got) == len(want), f"{len(got) - len(want)} readings forwarded twice"
            wait_until(lambda: proxy.pubacks == len(published), 10, "every message acknowledged once")
            assert src.status.duplicates_dropped == held
            wait_until(lambda: not buf.failing, 30, "deletes and expiry work again too")
            wait_until(
                lambda: (read_status(cfg, settings) or {}).get("buffer", {}).get("storage_error", 1) is None,
                10,
                "status clears",
            )
            wait_until(lambda: metric(scrape(port), "plantstream_edge_buffer_storage_error") == 0, 10, "gauge clears")
            assert metric(scrape(port), "plantstream_edge_held_readings") == 0
        assert at.error is None
    finally:
        proxy.stop()
        pub.loop_stop()
        pub.disconnect()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_agent_started_on_a_full_disk_waits_for_space(
    request: pytest.FixtureRequest, tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    """A restart while the disk is full: opening the buffer needs space too (its WAL and shared
    memory files). The agent waits (sources not started, the state in status and metrics) instead
    of exiting, and once space returns takes the backlog its MQTT session kept."""

    def body(mnt: Path) -> None:
        root = f"dfs-{uuid.uuid4().hex[:8]}"
        settings = Settings.model_validate(
            {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
        )
        cfg = EdgeConfig.model_validate(
            {
                "agent_id": root,
                "plant": "steel",
                "metrics_port": 0,
                "sources": [
                    {
                        "type": "mqtt",
                        "id": "m1",
                        "url": f"mqtt://127.0.0.1:{mqtt_port}",
                        "client_id": f"edge-{root}",
                        "reconnect": {"min_s": 0.2, "max_s": 1},
                        "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}"}],
                    }
                ],
                "kafka": {"partitions": 2},
                "buffer": {"path": str(mnt / "buffer.db"), "synchronous": "normal"},
            }
        )
        # A first run makes the buffer, the status file and the broker session.
        with AgentThread(cfg, settings) as first:
            wait_until(lambda: first.agent.sources[0].status.connected, 20, "subscribed")
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{root}")
        pub.connect("127.0.0.1", mqtt_port)
        pub.loop_start()
        try:
            t0 = time.time_ns() // 1000
            want = {t0 + i for i in range(50)}
            for ts in sorted(want):  # queued in the session while no agent runs
                pub.publish(f"{root}/plant/area/temp", json.dumps({"ts_us": ts, "value": 1.0}), qos=1).wait_for_publish(
                    10
                )
            filler = mnt / "filler"
            assert fill_disk(filler) > 0
            with AgentThread(cfg, settings) as at:
                wait_until(lambda: at.agent.metrics.port, 10, "metrics up before the buffer")
                port = at.agent.metrics.port
                assert port is not None

                def waiting() -> bool:
                    err = ((read_status(cfg, settings) or {}).get("buffer") or {}).get("storage_error") or {}
                    return "open" in err.get("operations", {}) and err.get("acknowledging") is False

                wait_until(waiting, 15, "status: the buffer cannot be opened")
                assert metric(scrape(port), "plantstream_edge_buffer_storage_error") == 1
                assert at._thread.is_alive() and at.agent.buffer is None
                assert not at.agent.sources[0].status.connected, "no source before the buffer opens"

                filler.unlink()
                raw = read_topic(
                    kafka_bootstrap,
                    Topics(topic_prefix, 2).raw,
                    lambda ms: want <= {t for b in batches(ms) for t in b.ts_us},
                    60,
                )
                got = [t for b in batches(raw) for t in b.ts_us if t in want]
                assert sorted(got) == sorted(want), "the session's backlog, each reading once"
                wait_until(lambda: metric(scrape(port), "plantstream_edge_buffer_storage_error") == 0, 10, "clears")
            assert at.error is None
        finally:
            pub.loop_stop()
            pub.disconnect()

    run_on_small_filesystem(request, tmp_path / "fs", 4 << 20, body)
