"""After an outage longer than message.timeout.ms an idempotent producer can be fenced for good
(PRODUCER_FENCED on every later send, not a fatal() error): the forwarder must replace it, or
every reading buffered after the outage waits forever (the first full chaos run lost 92,898 so)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from plantstream.edge.buffer import Buffer, Entry
from plantstream.edge.forwarder import Forwarder
from plantstream.producers.kafka import ensure_topics, make_producer
from plantstream.testing.edge import IsolatedKafka
from plantstream.testing.plugin import wait_until


def _entries(start: int, n: int, topic: str) -> list[Entry]:
    return [Entry(topic, b"k", f"v{i}".encode(), "src", count=1) for i in range(start, start + n)]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_forwarder_delivers_again_after_outages_past_the_message_timeout(tmp_path: Path, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.fenced"
    made: list[int] = []
    with IsolatedKafka(tmp_path / "tansu.log") as kafka:
        ensure_topics(kafka.bootstrap, [topic], 1)

        conf: dict[str, Any] = {"message.timeout.ms": 1500, "socket.connection.setup.timeout.ms": 1000}

        def factory() -> Producer:
            made.append(1)
            return make_producer(kafka.bootstrap, "fenced-test", None, **conf)

        with Buffer(tmp_path / "b.db") as buf:
            fw = Forwarder(buf, factory, stall_s=1.0, backoff_min_s=0.2, backoff_max_s=1.0)

            def pump_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
                # The agent's loop: pump, look, again.
                wait_until(lambda: (fw.pump(), cond())[1], timeout, what, interval=0.02)

            def drained() -> bool:
                return buf.depth().entries == 0

            def failed_since(failures: int) -> bool:
                return fw.stats.failures > failures

            def passed(until: float) -> bool:
                return time.monotonic() >= until

            sent = 0
            for outage in range(2):
                buf.append(_entries(sent, 20, topic))
                sent += 20
                pump_until(drained, 60, f"delivery before outage {outage}")
                kafka.proxy.stop()
                failures = fw.stats.failures
                buf.append(_entries(sent, 20, topic))
                sent += 20
                pump_until(partial(failed_since, failures), 30, "message timeouts in the outage")
                # Past two message timeouts, pumping all along.
                pump_until(partial(passed, time.monotonic() + 3.0), 10, "the rest of the outage")
                kafka.proxy.start()
                pump_until(drained, 60, f"the backlog of outage {outage} delivered")
            assert fw.stats.delivered_entries >= sent
            # The first outage left the producer fenced (Tansu answers so after message timeouts);
            # delivery came back through a replacement, said in the stats.
            assert fw.stats.producers_replaced >= 1 and len(made) == 1 + fw.stats.producers_replaced
