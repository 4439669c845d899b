"""Kafka through a real TLS terminator (stunnel in front of a private broker): topic creation,
the idempotent producer, a librdkafka consumer and an aiokafka consumer all speak TLS with the CA
configured; a client trusting another CA, or none, or speaking plaintext, gets nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import KafkaException, TopicPartition

from plantstream.config import KafkaSecurity
from plantstream.producers.kafka import aiokafka_kwargs, ensure_topics, make_consumer, make_producer, produce
from plantstream.testing.plugin import wait_until
from plantstream.testing.tls import Pki, TlsKafka, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_kafka(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    with TlsKafka(tmp_path_factory.mktemp("tls-kafka"), pki) as k:
        yield k


def test_every_client_speaks_tls_with_the_ca(tls_kafka: TlsKafka, pki: Pki) -> None:
    sec = KafkaSecurity(security_protocol="SSL", ssl_ca_location=pki.ca)
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    ensure_topics(tls_kafka.bootstrap, [topic], 2, security=sec)
    producer = make_producer(tls_kafka.bootstrap, "tls-test", security=sec)
    acked: list[bytes] = []
    for i in range(50):
        produce(
            producer,
            topic,
            f"m{i}".encode(),
            key=b"k",
            on_delivery=lambda err, msg: acked.append(msg.value() or b"") if err is None else None,
        )
    assert producer.flush(30) == 0
    assert len(acked) == 50
    consumer = make_consumer(
        tls_kafka.bootstrap,
        {"group.id": f"g-{topic}", "auto.offset.reset": "earliest", "enable.auto.commit": False},
        security=sec,
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
    got: list[bytes] = []

    def more() -> bool:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg.value() or b"")
        return len(got) == 50

    wait_until(more, 60, "50 messages over TLS (librdkafka)", interval=0)
    consumer.close()
    assert sorted(got) == sorted(acked)

    async def read_aiokafka() -> list[bytes]:
        c = AIOKafkaConsumer(
            topic,
            bootstrap_servers=tls_kafka.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            **aiokafka_kwargs(sec),
        )
        await c.start()
        try:
            out: list[bytes] = []
            async with asyncio.timeout(60):
                while len(out) < 50:
                    for batch in (await c.getmany(timeout_ms=500)).values():
                        out += [m.value for m in batch if m.value is not None]
            return out
        finally:
            await c.stop()

    assert sorted(asyncio.run(read_aiokafka())) == sorted(acked)


@pytest.mark.parametrize("client", ["other CA", "system CAs only", "plaintext"])
def test_a_client_without_the_ca_is_refused(tls_kafka: TlsKafka, pki: Pki, client: str, tmp_path: Path) -> None:
    sec, why = {
        "other CA": (KafkaSecurity(security_protocol="SSL", ssl_ca_location=pki.other_ca), "alert unknown ca"),
        "system CAs only": (KafkaSecurity(security_protocol="SSL"), "alert unknown ca"),
        "plaintext": (KafkaSecurity(), "wrong version number"),
    }[client]
    log = tls_kafka.dir / "stunnel.log"
    seen = log.read_text().count(why)
    producer = make_producer(tls_kafka.bootstrap, "refused", security=sec, **{"message.timeout.ms": 3000})
    with pytest.raises(KafkaException):
        producer.list_topics(timeout=3)
    errors: list[str] = []
    produce(producer, "never", b"x", on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
    producer.flush(10)
    assert len(errors) == 1 and "timed out" in errors[0].lower()  # nothing was accepted
    # The terminator refused the handshake itself, for the reason this client gives it.
    assert log.read_text().count(why) > seen
