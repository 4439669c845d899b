"""Issue 15 items 2, 4, 5, 8 through a real streams worker and the local broker: outputs cut to
max_output_bytes, a batch re-sent after later ones kept, a year-9999 reading and a NaN flagged
BAD without stopping the aggregates of later readings."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from plantstream.config import Settings
from plantstream.contract import Origin, Quality, Reading, now_us
from plantstream.producers.codec import ReadingBatch, decode_aggregates, decode_readings, encode_readings
from plantstream.producers.kafka import make_producer, produce
from plantstream.producers.topics import Topics
from plantstream.streams.tests.test_streams_worker_integration import TopicReader
from plantstream.testing.plugin import wait_until
from plantstream.testing.streams import worker_process

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

EQ = "acme/duisburg/steelmaking/caster1/mould"
LIMIT = 10_000
Y9999 = 253_402_300_799_000_000


@pytest.fixture
def worker(settings: Settings, settings_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    yaml = f"allowed_lateness_s: 0.5\ncheckpoint_interval_s: 1.0\nmax_output_bytes: {LIMIT}\n"
    with worker_process(settings, settings_env, tmp_path, yaml) as proc:
        yield proc


def r(tag: str, ts: int, value: float, seq: int) -> Reading:
    return Reading("steel", EQ, tag, ts, value, "degC", Quality.GOOD, Origin.OPCUA, "edge1", seq)


def test_streams_worker_cuts_outputs_keeps_resends_and_survives_clock_abuse(
    settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    base = now_us() // 1_000_000 * 1_000_000 - 60_000_000
    big = [r("temp", base + i * 1000, 20.0 + i % 7, i + 1) for i in range(3000)]  # 3 s, ~60 kB clean
    failed = [r("temp", base + 3_000_000 + i * 1000, 1.0, 3001 + i) for i in range(10)]
    later = [r("temp", base + 5_000_000 + i * 1000, 2.0, 4001 + i) for i in range(10)]
    abuse = [r("temp", Y9999, 3.0, 5001), r("free", base + 6_000_000, math.nan, 5002)]
    after = [r("temp", base + 10_000_000 + i * 100_000, 4.0 + i, 6001 + i) for i in range(40)]  # 4 s
    prod = make_producer(settings.kafka_bootstrap)
    # The forwarder's order after an outage: `failed` is re-sent after `later` succeeded.
    for rows in (big, later, failed, abuse, after, failed):
        produce(prod, topics.raw, encode_readings(ReadingBatch.of(rows)), key=f"steel/{EQ}")
    assert prod.flush(30) == 0

    clean = TopicReader(settings.kafka_bootstrap, topics.clean, settings.partitions)
    want = 3000 + 10 + 10 + 2 + 40

    def readings() -> list[Reading]:
        clean.poll()
        return [x for v, _ in clean.messages if v is not None for x in decode_readings(v).readings()]

    wait_until(lambda: len(readings()) >= want, timeout=150, what=f"{want} clean readings", interval=0.5)
    got = readings()
    assert sorted(x.seq for x in got) == sorted({x.seq for x in (*big, *later, *failed, *abuse, *after)})
    sizes = [len(v) for v, _ in clean.messages if v is not None]
    assert max(sizes) <= LIMIT and len(sizes) >= 6, sizes  # cut, not one ~60 kB message
    by_seq = {x.seq: x for x in got}
    assert by_seq[5001].quality == Quality.BAD and "clock" in (by_seq[5001].reason or "")
    assert by_seq[5002].quality == Quality.BAD and "not finite" in (by_seq[5002].reason or "")
    assert all(by_seq[s].reason is None for s in range(6001, 6041)), "later readings are not late"

    aggs = TopicReader(settings.kafka_bootstrap, topics.aggregates, settings.partitions)

    def seconds_after() -> dict[int, int]:
        aggs.poll()
        found = [a for v, _ in aggs.messages if v is not None for a in decode_aggregates(v)]
        return {
            a.start_us: a.count
            for a in found
            if a.tag == "temp" and a.window == "1s" and a.start_us >= base + 10_000_000
        }

    wait_until(lambda: len(seconds_after()) >= 3, timeout=30, what="1 s aggregates after the abuse")
    assert seconds_after() == {base + (10 + k) * 1_000_000: 10 for k in range(3)}
    assert worker.poll() is None, "the worker keeps running"
