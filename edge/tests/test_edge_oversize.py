"""Batches are cut by bytes as well as count, so an accepted reading always fits a Kafka message;
an entry Kafka refuses anyway (a lower message.max.bytes) is a loud error and stays in the buffer
(issue 15 item 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.contract import Origin
from plantstream.edge.batcher import Batcher, Sample
from plantstream.edge.buffer import Buffer, Entry
from plantstream.edge.config import EdgeConfig
from plantstream.edge.forwarder import Forwarder
from plantstream.edge.vet import Limits, batch_max_bytes, vet
from plantstream.producers.codec import decode_readings
from plantstream.producers.kafka import ensure_topics, make_producer
from plantstream.testing.plugin import wait_until

NOW = 1_760_000_000_000_000

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=3000)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a/b", "a/c/d", "ä/ö"]),
            st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40),
            st.one_of(st.floats(), st.integers(-(2**63), 2**64 - 1), st.booleans(), _text),
            st.text(alphabet=st.characters(codec="utf-8"), max_size=10),
        ),
        max_size=120,
    ),
    st.integers(min_value=16_384, max_value=40_000),
)
def test_every_batch_fits_max_bytes_whatever_the_readings(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str, object, str]], max_bytes: int
) -> None:
    limits = Limits(max_reading_bytes=max_bytes - 2000)
    samples: list[Sample] = []
    for i, (eq, tag, value, unit) in enumerate(rows):
        s: Sample = (eq, tag, NOW + i, value, unit, 0, 0x80000000 if i % 3 else None, NOW if i % 2 else None, None)  # type: ignore[assignment]
        try:
            samples.append(vet(s, NOW, limits))
        except ValueError:
            continue  # too large a reading: dead-lettered at decode, never reaches the batcher
    with Buffer(tmp_path_factory.mktemp("b") / "b.db") as buf:
        b = Batcher("steel", "t.raw", buf, max_readings=100_000, max_delay_s=60, max_bytes=max_bytes)
        b.add("src-with-a-long-id", Origin.MQTT, samples)
        entries = b.take(everything=True)
    assert sum(e.count for e in entries) == len(samples), "nothing lost to the cut"
    assert not b.rejected
    for e in entries:
        assert len(e.value) <= max_bytes, (len(e.value), e.count)
        assert len(decode_readings(e.value)) == e.count


def test_a_batch_is_cut_by_bytes_before_it_reaches_max_readings(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db") as buf:
        b = Batcher("steel", "t.raw", buf, max_readings=1000, max_delay_s=60, max_bytes=20_000)
        b.add("s", Origin.MQTT, [("a/b", "t", NOW + i, "x" * 900, "", 0, None, None, None) for i in range(100)])
        entries = b.take(everything=True)
    assert len(entries) > 4 and sum(e.count for e in entries) == 100
    assert all(len(e.value) <= 20_000 for e in entries)


def test_batch_limit_follows_a_lower_producer_message_max_bytes() -> None:
    base = {
        "agent_id": "a",
        "plant": "steel",
        "sources": [{"type": "mqtt", "id": "m", "subscriptions": [{"template": "x/{equipment+}/{tag}"}]}],
    }
    assert batch_max_bytes(EdgeConfig.model_validate(base)) == 1_000_000 - 1024
    low = EdgeConfig.model_validate({**base, "kafka": {"producer": {"message.max.bytes": 100_000}}})
    assert batch_max_bytes(low) == 100_000 - 1024
    assert Limits.of(low).max_reading_bytes < 100_000 - 1024


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_an_entry_kafka_refuses_as_too_large_stays_in_the_buffer_and_is_reported(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Before: the forwarder deleted an entry the producer refused (its source was already
    acknowledged: the readings were lost). Now it is kept, counted, and the rest still flows."""
    topic = f"{topic_prefix}.oversize"
    ensure_topics(kafka_bootstrap, [topic], 1)
    with Buffer(tmp_path / "b.db") as buf:
        buf.append(
            [
                Entry(topic, b"k", b"small-1", "src", count=1),
                Entry(topic, b"k", b"x" * 20_000, "src", count=7),
                Entry(topic, b"k", b"small-2", "src", count=1),
            ]
        )
        low: dict[str, Any] = {"message.max.bytes": 5_000}  # the producer refuses the 20 kB entry
        fw = Forwarder(buf, lambda: make_producer(kafka_bootstrap, "oversize-test", **low))
        wait_until(lambda: (fw.pump(), fw.commit_deletes(), fw.stats.delivered_entries == 2)[2], 30, "the small ones")
        left = buf.read(0, 10)
        assert [r.entry.count for r in left] == [7], "the refused entry is kept, the delivered ones deleted"
        assert fw.stats.refused == 1 and fw.refused_ids == {left[0].id}
        assert not fw.healthy, "a refused entry is an error state, not healthy"
        assert "refused" in fw.stats.last_error
        for _ in range(5):  # it is not sent again in this run (it would be refused again)
            fw.pump()
        assert fw.stats.refused == 1 and buf.depth().entries == 1
    # The next start tries it again (e.g. after the operator raised the limit).
    with Buffer(tmp_path / "b.db") as buf:
        fw = Forwarder(buf, lambda: make_producer(kafka_bootstrap, "oversize-test-2"))
        assert fw.drain(30), "delivered once the producer accepts it"
        assert buf.depth().entries == 0


class _Producer:
    """Just enough of a confluent_kafka Producer to answer deliveries by hand."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, headers: Any, on_delivery: Any) -> None:
        self.sent.append((value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        return 0


def test_an_entry_the_broker_refuses_as_too_large_is_kept_and_not_retried_in_a_loop(tmp_path: Path) -> None:
    """Before: a MSG_SIZE_TOO_LARGE delivery error rewound the forwarder to that entry, so it and
    everything after it was re-sent every backoff, forever. Now it is kept, reported, and skipped."""
    from confluent_kafka import KafkaError

    prod = _Producer()
    with Buffer(tmp_path / "b.db") as buf:
        buf.append([Entry("t", b"k", f"v{i}".encode(), "src", count=1) for i in range(3)])
        fw = Forwarder(buf, lambda: prod, backoff_min_s=0.0)  # type: ignore[arg-type,return-value]
        assert fw.pump() == 3
        for value, cb in prod.sent:
            cb(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if value == b"v1" else None, None)
        fw.commit_deletes()
        for _ in range(3):
            fw.pump()
        assert len(prod.sent) == 3, "nothing re-sent"
        assert [r.entry.value for r in buf.read(0, 10)] == [b"v1"], "the refused entry kept, the others deleted"
        assert fw.stats.refused == 1 and not fw.healthy and "refused" in fw.stats.last_error


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_agent_reports_a_refused_entry_in_status_and_metrics_and_delivers_it_after_the_limit_is_raised(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A buffer written under a higher limit, an agent restarted with a lower one: the entry it can
    no longer send is loud (status, /metrics, not healthy) and kept until a start that can."""
    from plantstream.config import Settings
    from plantstream.edge.agent import read_status
    from plantstream.producers.codec import ReadingBatch, encode_readings
    from plantstream.producers.topics import Topics
    from plantstream.testing.edge import AgentThread, metric, scrape

    topics = Topics(topic_prefix, 1)
    big = ReadingBatch("steel", "acme/site", Origin.MQTT, "m1")
    for i in range(40):
        big.tag.append("t")
        big.unit.append("")
        big.ts_us.append(NOW + i)
        big.value.append("x" * 1000)
        big.quality.append(0)
        big.status_code.append(None)
        big.seq.append(i)
        big.server_ts_us.append(None)
        big.lot.append(None)
        big.reason.append(None)
    value = encode_readings(big)
    assert len(value) > 40_000
    with Buffer(tmp_path / "buffer.db", synchronous="normal") as buf:
        buf.append([Entry(topics.raw, b"steel/acme/site", value, "m1", count=40)])

    def cfg(producer: dict[str, Any]) -> EdgeConfig:
        return EdgeConfig.model_validate(
            {
                "agent_id": "refused",
                "plant": "steel",
                "metrics_port": 0,
                "sources": [
                    {
                        "type": "mqtt",
                        "id": "m1",
                        "url": "mqtt://127.0.0.1:1",  # no broker: only the buffered entry matters
                        "subscriptions": [{"template": "x/{equipment+}/{tag}"}],
                    }
                ],
                "kafka": {"partitions": 1, "producer": producer},
                "buffer": {"path": str(tmp_path / "buffer.db"), "synchronous": "normal"},
            }
        )

    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "state_dir": tmp_path / "state"}
    )
    low = cfg({"message.max.bytes": 20_000})
    with AgentThread(low, settings) as at:
        a = at.agent
        wait_until(lambda: a.forwarder is not None and a.forwarder.stats.refused == 1, 30, "the entry refused")
        wait_until(
            lambda: ((read_status(low, settings) or {}).get("kafka") or {}).get("refused_entries") == 1,
            10,
            "refused_entries in the status file",
        )
        assert a.metrics.port is not None
        wait_until(lambda: metric(scrape(a.metrics.port or 0), "plantstream_edge_refused_entries") == 1, 10, "metric")
        st = read_status(low, settings) or {}
        assert st["kafka"]["healthy"] is False and "refused" in st["kafka"]["last_error"]
        assert st["buffer"]["entries"] >= 1 and st["buffer"]["readings"] == 40, "kept in the buffer"
    with AgentThread(cfg({}), settings) as at:
        a = at.agent
        wait_until(lambda: a.forwarder is not None and a.forwarder.stats.delivered_readings == 40, 30, "delivered")
        assert a.forwarder is not None and a.forwarder.stats.refused == 0
