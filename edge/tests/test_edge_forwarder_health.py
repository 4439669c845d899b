"""The forwarder says Kafka is unhealthy when the broker stops answering, not minutes later when
librdkafka finally times a message out; and healthy again once the broker acknowledges."""

from __future__ import annotations

from pathlib import Path

import pytest

from plantstream.edge.buffer import Buffer, Entry
from plantstream.edge.forwarder import Forwarder
from plantstream.producers.kafka import make_producer
from plantstream.testing.plugin import free_port, wait_until
from plantstream.testing.proxy import TcpProxy


def _entries(n: int, topic: str) -> list[Entry]:
    return [Entry(topic, b"k", f"v{i}".encode(), "src", count=1) for i in range(n)]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_unanswered_broker_makes_the_forwarder_unhealthy_then_recovers(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    from plantstream.producers.kafka import ensure_topics

    topic = f"{topic_prefix}.health"
    ensure_topics(kafka_bootstrap, [topic], 1)
    host, port = kafka_bootstrap.rsplit(":", 1)
    # The producer bootstraps through this proxy, not yet listening: no broker answers. Once it
    # listens, the producer learns the broker's own address from the metadata and delivers.
    proxy = TcpProxy(int(port), listen_port=free_port(), target_host=host)
    with Buffer(tmp_path / "b.db") as buf:
        buf.append(_entries(5, topic))
        fw = Forwarder(buf, lambda: make_producer(f"127.0.0.1:{proxy.port}", "health-test"), stall_s=1.0)
        assert fw.healthy
        fw.pump()
        assert fw.inflight == 5
        # Nothing listens: librdkafka retries quietly; the forwarder must notice within stall_s.
        wait_until(lambda: (fw.pump(), not fw.healthy)[1], 10, "the forwarder to report the stall")
        assert fw.stalled and buf.depth().entries == 5, "nothing may leave the buffer unacknowledged"
        proxy.start()
        try:
            wait_until(lambda: (fw.pump(), fw.healthy and buf.depth().entries == 0)[1], 60, "delivery after recovery")
        finally:
            proxy.stop()
        assert fw.stats.delivered_entries == 5
