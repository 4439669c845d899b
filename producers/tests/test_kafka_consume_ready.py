"""consume_ready against the real broker: it hands over what is there without waiting for a full batch."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from plantstream.producers.kafka import consume_ready, ensure_topics, make_producer

pytestmark = pytest.mark.integration


def _consumer(bootstrap: str, topic: str) -> Consumer:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-probe", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    return c


def test_returns_the_messages_that_are_there_long_before_the_timeout(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.ready"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    producer = make_producer(kafka_bootstrap)
    for i in range(7):
        producer.produce(topic, f"m{i}".encode())
    assert producer.flush(30) == 0
    consumer = _consumer(kafka_bootstrap, topic)
    try:
        got: list[bytes] = []
        # consume(500, 20) would block for the whole 20 s with 7 messages waiting; a fetch
        # may split them, so collect until all seven are in, each call returning early.
        start = time.monotonic()
        while len(got) < 7 and time.monotonic() - start < 60:
            t0 = time.monotonic()
            batch = consume_ready(consumer, 500, timeout=20.0)
            took = time.monotonic() - t0
            assert batch, "no message within 20 s"
            assert took < 10, f"consume_ready held {len(batch)} ready message(s) for {took:.1f} s"
            got += [m.value() or b"" for m in batch if m.error() is None]
        assert got == [f"m{i}".encode() for i in range(7)]
    finally:
        consumer.close()


def test_empty_topic_waits_the_timeout_and_returns_nothing(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.empty"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    consumer = _consumer(kafka_bootstrap, topic)
    try:
        t0 = time.monotonic()
        batch = [m for m in consume_ready(consumer, 500, timeout=1.0) if m.error() is None]
        assert batch == []
        assert time.monotonic() - t0 >= 0.9
        assert [m for m in consume_ready(consumer, 1, timeout=0.2) if m.error() is None] == []
    finally:
        consumer.close()
