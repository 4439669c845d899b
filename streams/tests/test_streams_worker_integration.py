"""One worker (subprocess ``plantstream streams worker``) against the real broker."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from plantstream.config import Settings
from plantstream.contract import Aggregate, ContextEvent, ContextKind, Origin, Quality, Reading, TagMeta
from plantstream.producers.codec import (
    ReadingBatch,
    decode_aggregates,
    decode_deviation,
    decode_readings,
    encode_context,
    encode_readings,
    encode_tag_meta,
)
from plantstream.producers.kafka import make_producer, produce
from plantstream.producers.topics import Topics
from plantstream.streams.checkpoints import checkpoint_topic
from plantstream.testing.plugin import wait_until
from plantstream.testing.streams import worker_process

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

CASTER = "acme/duisburg/steelmaking/caster1"
MOULD = CASTER + "/mould"
T0 = 1_700_000_040_000_000 - 1_700_000_040_000_000 % 60_000_000


class TopicReader:
    """Reads every partition of a topic from the beginning with assign() (no group join)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.c = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"r{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.messages: list[tuple[bytes | None, list[tuple[str, Any]]]] = []

    def poll(self) -> int:
        for msg in self.c.consume(1000, timeout=0.2):
            if msg.error() is None:
                self.messages.append((msg.value(), list(msg.headers() or [])))  # type: ignore[arg-type]
        return len(self.messages)


def reading(tag: str, ts: int, value: float, seq: int, unit: str) -> Reading:
    return Reading("steel", MOULD, tag, ts, value, unit, Quality.GOOD, Origin.OPCUA, "edge1", seq)


@pytest.fixture
def worker(settings: Settings, settings_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker_process(
        settings,
        settings_env,
        tmp_path,
        "allowed_lateness_s: 0.5\ncheckpoint_interval_s: 1.0\nprogress_interval_s: 2.0\n"
        "clock_past_s: 1.0e10\n",  # T0 is in 2023: widen the receiving clock window
    ) as proc:
        yield proc


def test_streams_worker_end_to_end(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    bs = settings.kafka_bootstrap
    prod = make_producer(bs)
    produce(
        prod,
        topics.tags,
        encode_tag_meta(TagMeta("steel", "temp", MOULD, "degF", lo=32.0, hi=3000.0)),
        key="steel/temp",
    )
    produce(
        prod,
        topics.context,
        encode_context(ContextEvent(ContextKind.LOT_START, "steel", CASTER, T0 - 1, "H42", lot_kind="heat")),
        key=f"steel/{CASTER}",
    )
    # 3 s of 10 Hz temperature in degF, one source, sent as three batches
    rows = [reading("temp", T0 + i * 100_000, 212.0 + 18.0 * (i % 10), i + 1, "degF") for i in range(30)]
    for k in range(3):
        produce(prod, topics.raw, encode_readings(ReadingBatch.of(rows[k * 10 : (k + 1) * 10])), key=f"steel/{MOULD}")
    produce(prod, topics.raw, b"garbage", key=f"steel/{MOULD}", headers={"trace": b"abc"})
    # after the bad record: a replay of the last batch (dedup) plus new data that closes windows
    tail = [
        *rows[20:],
        reading("temp", T0 + 5_000_000, 212.0, 31, "degF"),
        reading("temp", T0 + 100, 500.0, 32, "degF"),
    ]
    produce(prod, topics.raw, encode_readings(ReadingBatch.of(tail)), key=f"steel/{MOULD}")
    assert prod.flush(30) == 0

    clean = TopicReader(bs, topics.clean, settings.partitions)

    def clean_readings() -> list[Reading]:
        clean.poll()
        return [r for v, _ in clean.messages if v is not None for r in decode_readings(v).readings()]

    wait_until(
        lambda: len(clean_readings()) >= 32, timeout=120, what="32 clean readings (group join ~30 s)", interval=0.5
    )
    got = clean_readings()
    assert len(got) == 32  # 30 + 2 new; the 10 replayed readings were deduplicated
    assert all(r.unit == "degC" and r.lot == "H42" for r in got)
    assert sorted(r.seq for r in got) == list(range(1, 33))
    first = next(r for r in got if r.seq == 1)
    assert first.value == pytest.approx(100.0)
    late = next(r for r in got if r.seq == 32)
    assert late.reason is not None and "late" in late.reason

    aggs_reader = TopicReader(bs, topics.aggregates, settings.partitions)

    def one_second_aggs() -> list[Aggregate]:
        aggs_reader.poll()
        return [a for v, _ in aggs_reader.messages if v is not None for a in decode_aggregates(v) if a.window == "1s"]

    wait_until(lambda: len(one_second_aggs()) >= 3, timeout=30, what="three 1 s aggregates")
    aggs = one_second_aggs()
    by_start = {a.start_us: a for a in aggs}
    for k in range(3):
        a = by_start[T0 + k * 1_000_000]
        expected = [(212.0 + 18.0 * i - 32.0) / 1.8 for i in range(10)]
        assert a.count == 10 and a.unit == "degC" and a.lot == "H42"
        assert a.mean == pytest.approx(sum(expected) / 10)
        assert (a.min, a.max, a.last) == pytest.approx((100.0, 190.0, 190.0))

    dead = TopicReader(bs, topics.deadletter, settings.partitions)
    wait_until(dead.poll, timeout=30, what="the dead letter")
    value, headers = dead.messages[0]
    h = dict(headers)
    assert value == b"garbage"
    assert b"magic" in h["plantstream-reason"] and h["plantstream-stage"] == b"streams"
    assert h["plantstream-origin"].decode().startswith(topics.raw + "/") and h["trace"] == b"abc"

    devs = TopicReader(bs, topics.deviations, settings.partitions)
    wait_until(devs.poll, timeout=30, what="the late-data record")
    late_recs = [decode_deviation(v) for v, _ in devs.messages if v is not None]
    assert any(
        d.kind == "late_data" and d.details["count"] == 1 and d.details["window_start_us"] == T0 for d in late_recs
    )
    assert worker.poll() is None  # still running after the bad record

    # at-least-once: nothing is committed while the first minute is open; a reading a minute
    # later closes it, and the commit advances exactly to the record holding the open windows
    final = ReadingBatch.of([reading("temp", T0 + 62_000_000, 212.0, 33, "degF")])
    produce(prod, topics.raw, encode_readings(final), key=f"steel/{MOULD}")
    assert prod.flush(30) == 0

    def minute_aggs() -> list[Aggregate]:
        aggs_reader.poll()
        return [a for v, _ in aggs_reader.messages if v is not None for a in decode_aggregates(v) if a.window == "1m"]

    wait_until(minute_aggs, timeout=30, what="the 1 min aggregate")
    minute = minute_aggs()[0]
    assert (minute.start_us, minute.count, minute.lot) == (T0, 31, "H42")  # the late reading is not merged
    group = Consumer({"bootstrap.servers": bs, "group.id": f"{settings.topic_prefix}-streams"})
    try:

        def committed() -> int:
            tps = group.committed([TopicPartition(topics.raw, p) for p in range(settings.partitions)], timeout=5)
            return max(tp.offset for tp in tps)

        # raw offsets 0-2 batches, 3 garbage, 4 tail, 5 final (one key: one partition)
        assert wait_until(lambda: committed() == 5, timeout=30, what="raw offset 5 committed")
    finally:
        group.close()
    # the checkpoint behind that commit is in Kafka (any worker on any host can resume from it)
    cps = TopicReader(bs, checkpoint_topic(settings.topic_prefix), settings.partitions)
    wait_until(cps.poll, timeout=30, what="a checkpoint record")
    bodies = [json.loads(v) for v, _ in cps.messages if v is not None]
    assert any(cp["offset"] == 5 and cp["horizons"] == [["steel", "temp", T0 + 60_000_000]] for cp in bodies)
