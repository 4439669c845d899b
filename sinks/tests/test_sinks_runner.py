"""The generic runner over a storage that is not PostgreSQL: the Sink protocol is the whole contract.

A memory sink that fails its first flushes and whose maintenance always raises, behind the real
broker: every reading arrives exactly once, the poison record is dead-lettered, offsets are
committed only up to what the sink made durable, and maintenance failures never stop ingestion."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from plantstream.config import Settings
from plantstream.producers.kafka import ensure_contract_topics, make_producer, produce
from plantstream.producers.topics import DEADLETTER_REASON_HEADER, Topics
from plantstream.sinks.base import DeadLetter, FlushStats, Record, Sink, SinkUnavailable
from plantstream.sinks.runner import SinkConfig, SinkRunner
from plantstream.testing.plugin import wait_until
from plantstream.testing.sinks import messages, readings

pytestmark = pytest.mark.integration


class MemorySink:
    """Durable = in ``self.readings``; fails the first ``fail_flushes`` flushes as unavailable."""

    def __init__(self, fail_flushes: int) -> None:
        self.last = FlushStats()
        self.readings: list[tuple[str, int, int]] = []  # (tag, time, seq): what was made durable
        self._staged: list[Record | DeadLetter] = []
        self.fail_flushes = fail_flushes
        self.flush_calls = 0
        self.connects = 0
        self.maintained = 0
        self.lock = threading.Lock()

    def connect(self) -> None:
        self.connects += 1

    def write(self, batch: Sequence[Record | DeadLetter]) -> None:
        self._staged.extend(batch)

    def flush(self) -> list[DeadLetter]:
        self.flush_calls += 1
        if self.fail_flushes > 0:
            self.fail_flushes -= 1
            raise SinkUnavailable("memory storage unavailable (test)")
        staged, self._staged = self._staged, []
        dead = [r for r in staged if isinstance(r, DeadLetter)]
        n = 0
        with self.lock:
            for r in staged:
                if isinstance(r, Record) and r.kind == "readings":
                    for x in r.payload.readings():
                        self.readings.append((x.tag, x.ts_us, x.seq))
                        n += 1
        self.last = FlushStats(readings=n, dead_letters=len(dead))
        return dead

    def close(self) -> None:
        self._staged = []

    def maintain(self) -> None:
        self.maintained += 1
        raise RuntimeError("maintenance always fails here (test)")


def test_memory_sink_satisfies_the_protocol() -> None:
    assert isinstance(MemorySink(0), Sink)


@pytest.mark.timeout(180)
def test_generic_runner_over_a_memory_sink(settings: Settings) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    ensure_contract_topics(settings.kafka_bootstrap, topics)
    rs = readings(3000, tags=3)
    msgs = messages(rs, per=100)
    p = make_producer(settings.kafka_bootstrap)
    for i, m in enumerate(msgs):
        produce(p, topics.clean, m, key=f"k{i % 3}")
    produce(p, topics.clean, b"\x00 not a reading batch", key="k0")
    assert p.flush(30) == 0

    sink = MemorySink(fail_flushes=2)
    cfg = SinkConfig(
        topics=["clean"], static_assignment=True, maintenance_interval_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.1
    )
    runner = SinkRunner(settings, cfg, sink)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:

        def all_in() -> bool:
            with sink.lock:
                return len(sink.readings) >= len(rs)

        wait_until(all_in, 90, f"{len(rs)} readings in the memory sink")
        wait_until(lambda: sink.maintained >= 2, 30, "maintenance called again after it failed")
        wait_until(lambda: runner.progress.dead_letters >= 1, 30, "the poison record dead-lettered")
        wait_until(lambda: runner.progress.records >= len(msgs) + 1, 30, "every record committed")
    finally:
        runner.stop()
        t.join(30)
    assert not t.is_alive(), "the runner did not stop"

    # Exactly once: nothing lost, nothing doubled (no crash here, so no replay either).
    assert sorted(sink.readings) == sorted((r.tag, r.ts_us, r.seq) for r in rs)
    assert sink.flush_calls >= 3 and sink.connects >= 3, "the unavailable flushes were not retried after connect()"

    # The poison record is on the dead-letter topic with the codec's reason.
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "check", "enable.auto.commit": False})
    c.assign([TopicPartition(topics.deadletter, q, 0) for q in range(settings.partitions)])
    dead: list[Message] = []

    def got_dead() -> bool:
        dead.extend(m for m in c.consume(10, 0.5) if m.error() is None)
        return bool(dead)

    wait_until(got_dead, 30, "the dead letter on its topic")
    c.close()
    assert [m.value() for m in dead] == [b"\x00 not a reading batch"]
    raw = dict(dead[0].headers() or [])[DEADLETTER_REASON_HEADER]
    reason = raw.decode() if isinstance(raw, bytes) else str(raw)
    assert reason.startswith("undecodable"), reason

    # Offsets committed past every record of this test's fresh topic, and no further.
    g = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": runner.group_id})
    committed = g.committed([TopicPartition(topics.clean, q) for q in range(settings.partitions)], timeout=10)
    g.close()
    assert sum(tp.offset for tp in committed if tp.offset >= 0) == len(msgs) + 1
    assert runner.progress.committed == {(topics.clean, tp.partition): tp.offset for tp in committed if tp.offset >= 0}
