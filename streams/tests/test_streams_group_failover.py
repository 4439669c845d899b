"""Two workers in one consumer group share the raw partitions; one is SIGKILLed mid-run. The
aggregates that reach the database (real broker, real sink, real PostgreSQL) must equal what one
uninterrupted processor computes over the same input: nothing lost, nothing counted twice, no
minute re-emitted from partial data after its partition moved (checkpoints live in Kafka)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from plantstream.config import Settings
from plantstream.contract import ContextEvent, ContextKind, Origin
from plantstream.producers.codec import ReadingBatch, encode_context, encode_readings
from plantstream.producers.kafka import ensure_contract_topics, make_producer, produce
from plantstream.producers.topics import Topics
from plantstream.streams.logic.processor import Processor, ProcessorConfig, SharedContext
from plantstream.streams.logic.windows import MINUTE_US, SECOND_US
from plantstream.testing.plugin import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

T0 = 1_700_000_040_000_000 - 1_700_000_040_000_000 % MINUTE_US
LINE = "acme/works/melt/line1"
EQUIPMENT = [f"{LINE}/u{i}" for i in range(6)]
TAGS = 3
HZ = 10
CUTOFF = T0 + 3 * MINUTE_US  # windows before this are compared; a trailing sample closes them

WORKER_YAML = (
    "allowed_lateness_s: 0.5\nidle_timeout_s: 600\ncheckpoint_interval_s: 1.0\nprogress_interval_s: 1.0\n"
    "session_timeout_s: 6\n"
    "clock_past_s: 1.0e10\n"  # T0 is in 2023: widen the receiving clock window
)


def batches(t_from: int, t_to: int) -> list[ReadingBatch]:
    """Half-second batches per equipment, in time order, values a deterministic function of time."""
    out: list[ReadingBatch] = []
    step = SECOND_US // HZ
    for start in range(t_from, t_to, SECOND_US // 2):
        for e, eq in enumerate(EQUIPMENT):
            b = ReadingBatch("steel", eq, Origin.OPCUA, f"edge-{e}")
            for ts in range(start, min(start + SECOND_US // 2, t_to), step):
                for k in range(TAGS):
                    b.tag.append(f"u{e}.t{k}")
                    b.unit.append("degC")
                    b.ts_us.append(ts + k)
                    b.value.append(round(1500.0 + ((ts // step) * (k + 3) + e * 7) % 97 * 0.5, 3))
                    b.quality.append(2 if (ts // step) % 53 == 0 else 0)
                    b.status_code.append(None)
                    b.seq.append((ts - T0) // step * TAGS + k + 1)
                    b.server_ts_us.append(None)
                    b.lot.append(None)
                    b.reason.append(None)
            out.append(b)
    return out


def trailing() -> list[ReadingBatch]:
    """One sample per tag two minutes past the cutoff: every window before the cutoff closes."""
    out = []
    for e, eq in enumerate(EQUIPMENT):
        b = ReadingBatch("steel", eq, Origin.OPCUA, f"edge-{e}")
        for k in range(TAGS):
            b.tag.append(f"u{e}.t{k}")
            b.unit.append("degC")
            b.ts_us.append(CUTOFF + 2 * MINUTE_US + k)
            b.value.append(0.0)
            b.quality.append(0)
            b.status_code.append(None)
            b.seq.append(10**9 + k)
            b.server_ts_us.append(None)
            b.lot.append(None)
            b.reason.append(None)
        out.append(b)
    return out


LOT = ContextEvent(ContextKind.LOT_START, "steel", LINE, T0 - SECOND_US, "H7", lot_kind="heat", material="")


def reference(all_batches: list[ReadingBatch]) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    shared = SharedContext()
    shared.apply_context(LOT)
    proc = Processor(shared, ProcessorConfig(allowed_lateness_s=0.5, idle_timeout_s=600))
    out: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    for i, b in enumerate(all_batches):
        for a in proc.process_batch(b, i, 0).aggregates:
            if a.start_us < CUTOFF:
                out[(a.tag, a.window, a.start_us)] = (a.count, a.bad_count, a.min, a.max, a.mean, a.last, a.twa, a.lot)
    return out


def db_aggregates(dsn: str) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    out: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    with psycopg.connect(dsn) as conn:
        for window in ("1s", "1m"):
            rows = conn.execute(
                f"""SELECT t.tag, (extract(epoch FROM a.start) * 1000000)::bigint, a.count, a.bad_count, a.min, a.max,
                           a.mean, a.last, a.twa, l.lot
                    FROM aggregates_{window} a JOIN tags t ON t.id = a.tag_id LEFT JOIN lots l ON l.id = a.lot_id
                    WHERE a.start < to_timestamp(%s / 1e6)""",
                (CUTOFF,),
            ).fetchall()
            for tag, start, *vals in rows:
                out[(tag, window, int(start))] = tuple(vals)
    return out


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "plantstream.cli", *argv], env=env, stdout=f, stderr=subprocess.STDOUT
        )


def progress(log: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"progress"' in line:
            try:
                last = json.loads(line[line.index("{") :])
            except ValueError:
                continue
    return last


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in started:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def test_streams_two_workers_sigkill_one_aggregates_equal_uninterrupted(
    settings: Settings, settings_env: dict[str, str], tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    ensure_contract_topics(settings.kafka_bootstrap, topics)
    cfg = tmp_path / "streams.yaml"
    cfg.write_text(WORKER_YAML)
    env = {**settings_env, "PLANTSTREAM_LOG_FORMAT": "json"}
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [spawn(["streams", "worker", "--config", str(cfg)], env, log) for log in logs]
    procs.extend(workers)
    procs.append(spawn(["sink", "run", "--static-assignment"], env, tmp_path / "sink.log"))

    first = batches(T0, T0 + 90 * SECOND_US)  # the kill lands with minute 1 open
    second = batches(T0 + 90 * SECOND_US, CUTOFF)
    tail = trailing()
    expected = reference(first + second + tail)
    assert len(expected) == len(EQUIPMENT) * TAGS * (180 + 3)

    prod = make_producer(settings.kafka_bootstrap)
    produce(prod, topics.context, encode_context(LOT), key=LOT.key)
    for b in first:
        produce(prod, topics.raw, encode_readings(b), key=b.key)
    assert prod.flush(30) == 0

    def both_working() -> bool:
        for p in workers:
            assert p.poll() is None, "a worker died"
        got = [progress(log) for log in logs]
        parts = [set(g.get("partitions", [])) for g in got]
        return all(parts) and not (parts[0] & parts[1]) and all(g.get("readings_in", 0) > 0 for g in got)

    wait_until(both_working, 150, "both workers to own partitions and process readings (group join)", 0.5)
    # Let both commit (checkpoint, then ack) at least once, so the takeover resumes from a checkpoint.
    wait_until(lambda: len(db_aggregates(settings.dsn)) > 0, 60, "first aggregates in the database", 0.5)
    victim = workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    for b in second + tail:
        produce(prod, topics.raw, encode_readings(b), key=b.key)
    assert prod.flush(30) == 0

    def survivor_owns_all() -> bool:
        return set(progress(logs[1]).get("partitions", [])) == set(range(settings.partitions))

    wait_until(survivor_owns_all, 90, "the survivor to take over every partition (session timeout)", 0.5)
    wait_until(lambda: len(db_aggregates(settings.dsn)) >= len(expected), 90, "all aggregates in the database", 1.0)
    got = db_aggregates(settings.dsn)
    assert set(got) == set(expected)
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, f"{len(wrong)} windows differ from the uninterrupted run, e.g. {next(iter(wrong.items()))}"
    assert "checkpoint restored" in logs[1].read_text()
