"""Lot tags through the real broker: a worker (subprocess ``plantstream streams worker``) turns a
``current_heat`` tag into lot_start/lot_end on the context topic and stamps clean readings."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from plantstream.config import Settings
from plantstream.contract import ContextEvent, Origin, Quality, Reading, Value
from plantstream.producers.codec import ReadingBatch, decode_context, decode_readings, encode_readings
from plantstream.producers.kafka import make_producer, produce
from plantstream.producers.topics import Topics
from plantstream.testing.plugin import wait_until
from plantstream.testing.streams import worker_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]  # ~20 s: one group join

CASTER = "acme/duisburg/steelmaking/caster1"
MOULD = CASTER + "/mould"
TAG = "caster1.current_heat"
T0 = 1_700_000_040_000_000 - 1_700_000_040_000_000 % 60_000_000
S = 1_000_000


class Reader:
    """Every partition of a topic from the beginning, by assign() (no group join)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.c = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"r{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.values: list[bytes] = []

    def poll(self) -> list[bytes]:
        for msg in self.c.consume(1000, timeout=0.2):
            value = msg.value()
            if msg.error() is None and value is not None:
                self.values.append(value)
        return self.values


def reading(eq: str, tag: str, ts: int, value: Value, seq: int, unit: str = "") -> Reading:
    return Reading("steel", eq, tag, ts, value, unit, Quality.GOOD, Origin.OPCUA, "edge1", seq)


@pytest.fixture
def worker(settings: Settings, settings_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker_process(
        settings,
        settings_env,
        tmp_path,
        "checkpoint_interval_s: 1.0\n"
        "clock_past_s: 1.0e10\n"  # T0 is in 2023: widen the receiving clock window
        f"lot_tags:\n  - {{plant: steel, tag: {TAG}, lot_kind: heat, material: 'EN10025-2:S355J2'}}\n",
    ) as proc:
        yield proc


def test_streams_lot_tags_end_to_end(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    bs = settings.kafka_bootstrap
    prod = make_producer(bs)
    speed = "caster1.casting_speed"
    first = [
        reading(CASTER, speed, T0, 1.0, 1, "m/min"),
        reading(CASTER, TAG, T0 + 1 * S, "H1", 2),
        reading(CASTER, speed, T0 + 1 * S + 500_000, 1.1, 3, "m/min"),
    ]
    second = [
        reading(CASTER, TAG, T0 + 3 * S, "H1", 4),
        reading(CASTER, TAG, T0 + 4 * S, "H2", 5),
        reading(CASTER, speed, T0 + 4 * S + 500_000, 1.2, 6, "m/min"),
        reading(CASTER, TAG, T0 + 5 * S, "", 7),
        reading(CASTER, speed, T0 + 5 * S + 500_000, 1.3, 8, "m/min"),
    ]
    for batch in (first, second):
        produce(prod, topics.raw, encode_readings(ReadingBatch.of(batch)), key=f"steel/{CASTER}")
    assert prod.flush(30) == 0

    context = Reader(bs, topics.context, settings.partitions)

    def lot_events() -> list[ContextEvent]:
        return [decode_context(v) for v in context.poll()]

    wait_until(lambda: len(lot_events()) >= 4, timeout=90, what="4 lot events (group join ~30 s)", interval=0.5)
    events = lot_events()
    assert [(e.kind.value, e.lot, e.ts_us) for e in events] == [
        ("lot_start", "H1", T0 + 1 * S),
        ("lot_end", "H1", T0 + 4 * S),
        ("lot_start", "H2", T0 + 4 * S),
        ("lot_end", "H2", T0 + 5 * S),
    ]
    assert all(e.equipment == CASTER and e.attrs == {"lot_tag": TAG} for e in events)
    assert events[0].lot_kind == "heat" and events[0].material == "EN10025-2:S355J2"

    # a child equipment's reading (another key) is stamped from the worker's lot context
    produce(prod, topics.raw, encode_readings([reading(MOULD, "caster1.mould_level", T0 + 4 * S, 100.0, 1, "mm")]),
            key=f"steel/{MOULD}")  # fmt: skip
    assert prod.flush(30) == 0

    clean = Reader(bs, topics.clean, settings.partitions)

    def clean_readings() -> list[Reading]:
        return [r for v in clean.poll() for r in decode_readings(v).readings()]

    wait_until(lambda: len(clean_readings()) >= 9, timeout=30, what="9 clean readings")
    got = {(r.equipment, r.seq): r for r in clean_readings()}
    assert len(got) == 9
    lots = {seq: got[(CASTER, seq)].lot for seq in range(1, 9)}
    assert lots == {1: None, 2: "H1", 3: "H1", 4: "H1", 5: "H2", 6: "H2", 7: None, 8: None}
    assert [got[(CASTER, s)].value for s in (2, 4, 5, 7)] == ["H1", "H1", "H2", ""]  # the lot tag is stored too
    assert got[(MOULD, 1)].lot == "H2"
    assert len(lot_events()) == 4  # nothing derived twice
    assert worker.poll() is None
