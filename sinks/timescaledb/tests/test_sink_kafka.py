"""The runner with the real broker and database: outages, dead letters, replay, SIGKILL."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from plantstream.config import Settings
from plantstream.contract import Origin, Quality, Reading
from plantstream.producers.kafka import ensure_contract_topics, make_producer, produce
from plantstream.producers.topics import (
    DEADLETTER_ORIGIN_HEADER,
    DEADLETTER_REASON_HEADER,
    DEADLETTER_STAGE_HEADER,
    Topics,
)
from plantstream.sinks.runner import SinkConfig, SinkRunner
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.stack import Stack
from plantstream.testing.plugin import free_port, wait_until
from plantstream.testing.proxy import TcpProxy
from plantstream.testing.sinks import checksums, messages, readings

pytestmark = pytest.mark.integration


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0


def _produce(settings: Settings, rs: list[Reading], extra: list[bytes] = (), per: int = 1000) -> int:  # type: ignore[assignment]
    topics = Topics(settings.topic_prefix, settings.partitions)
    p = make_producer(settings.kafka_bootstrap)
    msgs = messages(rs, per) + list(extra)
    for i, m in enumerate(msgs):
        produce(p, topics.clean, m, key=f"steel/unit{i % 6}")
    assert p.flush(30) == 0
    return len(msgs)


def _spread(n: int, units: int = 6, tags: int = 4) -> list[Reading]:
    """n readings over several equipment units (so they spread over partitions)."""
    out: list[Reading] = []
    for u in range(units):
        eq = f"acme/works/melt/lf/u{u}"
        out += [dataclasses.replace(r, equipment=eq, tag=f"u{u}.{r.tag}") for r in readings(n // units, tags=tags)]
    return out


@pytest.fixture
def topics(settings: Settings) -> Topics:
    t = Topics(settings.topic_prefix, settings.partitions)
    ensure_contract_topics(settings.kafka_bootstrap, t)
    migrate(settings.dsn)
    return t


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _deadletters(settings: Settings, topics: Topics, n: int) -> list[Any]:
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topics.deadletter, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    got: list[Any] = []

    def more() -> bool:
        got.extend(m for m in c.consume(100, 0.5) if m.error() is None)
        return len(got) >= n

    wait_until(more, 30, f"{n} dead letters")
    c.close()
    return got


@pytest.fixture
def runner_thread() -> Iterator[Any]:
    started: list[tuple[SinkRunner, threading.Thread]] = []

    def start(r: SinkRunner) -> SinkRunner:
        t = threading.Thread(target=r.run, daemon=True)
        t.start()
        started.append((r, t))
        return r

    yield start
    for r, t in started:
        r.stop()
        t.join(30)


@pytest.mark.timeout(180)
def test_db_cut_mid_run_dead_letters_and_replay(settings: Settings, topics: Topics, runner_thread: Any) -> None:
    rs = _spread(120_000)
    first, second = rs[: len(rs) // 2], rs[len(rs) // 2 :]
    poison = Reading(
        "steel",
        "acme/works/melt/lf/u0",
        "u0.text",
        rs[0].ts_us,
        "bad\x00text",
        "",
        Quality.GOOD,
        Origin.OPCUA,
        "src",
        10**9,
    )
    n_msgs = _produce(settings, first, extra=[b"not a plantstream message"])
    pg_port = Stack().ports.pg
    with TcpProxy(pg_port) as proxy:
        dsn = settings.dsn.replace(f":{pg_port}/", f":{proxy.port}/")
        assert dsn != settings.dsn, "the sink must connect through the proxy"
        errors_before = _metric("plantstream_sink_db_unavailable_total")
        cfg = SinkConfig(static_assignment=True, batch_max_rows=10_000, linger_ms=50, backoff_max_s=1.0)
        r = runner_thread(SinkRunner(settings, cfg, sink=PostgresSink(dsn, connect_timeout=2)))
        wait_until(lambda: r.progress.records == n_msgs, 60, "the first half")
        proxy.stop()  # the sink's connection is dropped, new ones are refused
        n_msgs += _produce(settings, second, extra=messages([poison]))
        wait_until(lambda: _metric("plantstream_sink_db_unavailable_total") > errors_before, 30, "sink to notice")
        written_during_outage = _count(settings.dsn)
        proxy.start()
        wait_until(lambda: r.progress.records == n_msgs, 90, "all records written after the outage")
    assert written_during_outage < len(rs)
    assert _count(settings.dsn) == len(rs)  # nothing lost; the primary key rules out doubles
    with psycopg.connect(settings.dsn) as conn:
        assert conn.execute("SELECT count(DISTINCT seq) FROM readings").fetchone() == (len(rs) // 6,)
    # Dead letters: the undecodable record and the one rejected reading, with the contract's headers.
    dls = _deadletters(settings, topics, 2)
    hdrs = [dict((k, v.decode()) for k, v in (m.headers() or [])) for m in dls]
    assert all(h[DEADLETTER_STAGE_HEADER] == "sink" for h in hdrs)
    assert all(h[DEADLETTER_ORIGIN_HEADER].startswith(topics.clean + "/") for h in hdrs)
    reasons = sorted(h[DEADLETTER_REASON_HEADER] for h in hdrs)
    assert reasons[0].startswith("rejected by database") and reasons[1].startswith("undecodable")
    # Offsets committed for exactly what is in the topic (read it: this broker's watermarks are unreliable).
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": r.group_id})
    c.assign([TopicPartition(topics.clean, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    ends: dict[int, int] = {}
    seen = 0

    def read_all() -> bool:
        nonlocal seen
        for m in c.consume(500, 0.5):
            if m.error() is None:
                ends[m.partition() or 0] = (m.offset() or 0) + 1
                seen += 1
        return seen >= n_msgs

    wait_until(read_all, 30, "the whole topic")

    def committed() -> dict[int, int]:
        tps = c.committed([TopicPartition(topics.clean, p) for p in range(settings.partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}

    # Commits are asynchronous (after the database commit): they arrive shortly after the writes.
    wait_until(lambda: committed() == ends, 15, f"committed offsets {ends}")
    c.close()

    # Replay the topics from the start (a new group) twice: the tables do not change.
    before = checksums(settings.dsn)
    for _ in range(2):
        replay = runner_thread(
            SinkRunner(settings, SinkConfig(static_assignment=True, group=f"replay-{uuid.uuid4().hex}", linger_ms=50))
        )
        done: Any = lambda r=replay: r.progress.records == n_msgs  # noqa: E731
        wait_until(done, 60, "replay")
        replay.stop()
        assert checksums(settings.dsn) == before


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_mid_batch_then_restart_exact(
    settings: Settings, settings_env: dict[str, str], topics: Topics, tmp_path: Path
) -> None:
    rs = _spread(600_000)
    _produce(settings, rs, per=2000)
    cfg = tmp_path / "sink.yaml"
    cfg.write_text("batch_max_rows: 20000\nlinger_ms: 100\nprogress_interval_s: 1\n")
    port = free_port()
    argv = [sys.executable, "-m", "plantstream.cli", "sink", "run", "--config", str(cfg), "--metrics-port", str(port)]
    log1 = open(tmp_path / "sink1.log", "wb")  # noqa: SIM115
    p1 = subprocess.Popen(argv, env=settings_env, stdout=log1, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _count(settings.dsn) > 0, 120, "the first sink to write (group join ~30 s)", 0.05)
        os.kill(p1.pid, signal.SIGKILL)
        p1.wait(10)
    finally:
        if p1.poll() is None:
            p1.kill()
    at_kill = _count(settings.dsn)
    assert 0 < at_kill < len(rs), "the kill should land while the sink is writing"
    log2 = open(tmp_path / "sink2.log", "wb")  # noqa: SIM115
    p2 = subprocess.Popen(argv, env=settings_env, stdout=log2, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _count(settings.dsn) == len(rs), 150, "the restarted sink to finish")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "plantstream_sink_rows_written_total" in metrics and "plantstream_sink_write_seconds_bucket" in metrics
        samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples}
        # Freshness: the newest source time committed is the newest reading's (the restarted sink
        # wrote the tail of the topic); source -> commit latency was observed for a sample of rows.
        assert samples["plantstream_sink_newest_source_timestamp_seconds"] == max(r.ts_us for r in rs) / 1e6
        assert samples["plantstream_sink_source_to_commit_seconds_count"] >= (len(rs) - at_kill) // 16 // 2
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(30) == 0
    finally:
        if p2.poll() is None:
            p2.kill()
    assert _count(settings.dsn) == len(rs)
    assert b"sink progress" in (tmp_path / "sink2.log").read_bytes()
