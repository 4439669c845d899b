"""Thin confluent-kafka wiring: an idempotent producer and topic administration.

Producer defaults follow librdkafka's advice for lossless, fast delivery: idempotence with
acks=all, lz4 compression, linger to form batches, and ``poll(0)`` on every produce instead of a
flush per message. Delivery results arrive through ``on_delivery`` callbacks, which the edge
buffer uses to delete only what the broker has acknowledged.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

# confluent_kafka.admin re-exports NewTopic implicitly (no __all__), which strict mypy rejects.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from plantstream.config import ConfigError, KafkaSecurity
from plantstream.producers.topics import Topics

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[KafkaError | None, Message], None]

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.kbytes": 262_144,
    "message.max.bytes": 4_000_000,
    # Retries are librdkafka's job while the broker is away; a reading older than this is
    # reported as failed and stays in the edge buffer for the next attempt.
    "message.timeout.ms": 120_000,
    "reconnect.backoff.ms": 200,
    "reconnect.backoff.max.ms": 5_000,
}


def security_or_env(security: KafkaSecurity | None) -> KafkaSecurity:
    """``security``, or the ``PLANTSTREAM_KAFKA_*`` environment's: every client of every process
    takes the same settings without each call site having to pass them."""
    return security if security is not None else KafkaSecurity.from_env(os.environ)


def librdkafka_conf(
    bootstrap: str, conf: Mapping[str, Any] | None = None, *, security: KafkaSecurity | None = None
) -> dict[str, Any]:
    """A confluent-kafka (librdkafka) client configuration: ``conf`` plus the connection's security."""
    sec = security_or_env(security)
    out: dict[str, Any] = {"bootstrap.servers": bootstrap, "security.protocol": sec.security_protocol}
    if sec.sasl_mechanism is not None:
        out["sasl.mechanism"] = sec.sasl_mechanism
    if sec.sasl_mechanism == "OAUTHBEARER":
        out["sasl.oauthbearer.method"] = "oidc"
        out["sasl.oauthbearer.token.endpoint.url"] = sec.oauth_token_endpoint
        if sec.sasl_username:
            out["sasl.oauthbearer.client.id"] = sec.sasl_username
        if sec.sasl_password is not None:
            out["sasl.oauthbearer.client.secret"] = sec.sasl_password.get_secret_value()
    elif sec.sasl_mechanism is not None:
        out["sasl.username"] = sec.sasl_username
        out["sasl.password"] = sec.sasl_password.get_secret_value() if sec.sasl_password else ""
    if sec.tls:
        if sec.ssl_ca_location is not None:
            out["ssl.ca.location"] = str(sec.ssl_ca_location)
        if sec.ssl_certificate_location is not None:
            out["ssl.certificate.location"] = str(sec.ssl_certificate_location)
            out["ssl.key.location"] = str(sec.ssl_key_location)
        if sec.ssl_key_password is not None:
            out["ssl.key.password"] = sec.ssl_key_password.get_secret_value()
        out["ssl.endpoint.identification.algorithm"] = "https" if sec.ssl_check_hostname else "none"
    out.update(conf or {})
    return out


def aiokafka_kwargs(security: KafkaSecurity | None = None) -> dict[str, Any]:
    """The same connection security as keyword arguments of aiokafka clients (the streams worker)."""
    sec = security_or_env(security)
    out: dict[str, Any] = {"security_protocol": sec.security_protocol}
    if sec.sasl_mechanism == "OAUTHBEARER":
        raise ConfigError(
            "PLANTSTREAM_KAFKA_SASL_MECHANISM=OAUTHBEARER: the edge, sink and monitor (librdkafka) support it; "
            "the streams worker (aiokafka) needs SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"
        )
    if sec.sasl_mechanism is not None:
        out["sasl_mechanism"] = sec.sasl_mechanism
        out["sasl_plain_username"] = sec.sasl_username
        out["sasl_plain_password"] = sec.sasl_password.get_secret_value() if sec.sasl_password else ""
    if sec.tls:
        out["ssl_context"] = ssl_context(sec)
    return out


def faust_broker(bootstrap: str) -> list[str]:
    """Faust's broker URLs: one ``kafka://host:port`` per bootstrap server (a comma-separated
    bootstrap list in one URL is read by Faust as a single host)."""
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def faust_credentials(security: KafkaSecurity | None = None) -> Any:
    """The same connection security as a Faust ``broker_credentials`` value (None for PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials

    kw = aiokafka_kwargs(security)  # refuses what aiokafka cannot do, naming the variable
    if "sasl_mechanism" in kw:
        return SASLCredentials(
            username=kw["sasl_plain_username"],
            password=kw["sasl_plain_password"],
            ssl_context=kw.get("ssl_context"),
            mechanism=kw["sasl_mechanism"],
        )
    if "ssl_context" in kw:
        return SSLCredentials(kw["ssl_context"])
    return None


def ssl_context(sec: KafkaSecurity) -> ssl.SSLContext:
    """A client TLS context verifying the brokers against ``ssl_ca_location`` (the system store
    when unset), with the client certificate for mutual TLS where one is configured."""
    ctx = ssl.create_default_context(cafile=str(sec.ssl_ca_location) if sec.ssl_ca_location else None)
    ctx.check_hostname = sec.ssl_check_hostname
    if sec.ssl_certificate_location is not None:
        password = sec.ssl_key_password.get_secret_value() if sec.ssl_key_password else None
        ctx.load_cert_chain(str(sec.ssl_certificate_location), str(sec.ssl_key_location), password)
    return ctx


def make_producer(
    bootstrap: str, client_id: str = "plantstream", security: KafkaSecurity | None = None, **overrides: Any
) -> Producer:
    conf = librdkafka_conf(bootstrap, {"client.id": client_id, **PRODUCER_DEFAULTS, **overrides}, security=security)
    conf["error_cb"] = _log_kafka_error
    return Producer(conf)


def make_consumer(bootstrap: str, conf: Mapping[str, Any], *, security: KafkaSecurity | None = None) -> Consumer:
    return Consumer(librdkafka_conf(bootstrap, conf, security=security))


_last_error_log: dict[str, float] = {}


def _log_kafka_error(err: KafkaError) -> None:
    # librdkafka repeats transport errors every reconnect; say each kind once per 30 s.
    key = err.name()
    now = time.monotonic()
    if now - _last_error_log.get(key, -1e9) >= 30:
        _last_error_log[key] = now
        log.warning("kafka: %s", err.str(), extra={"kv": {"code": key, "fatal": err.fatal()}})


def produce(
    producer: Producer,
    topic: str,
    value: bytes,
    key: str | bytes | None = None,
    headers: Mapping[str, str | bytes] | None = None,
    on_delivery: DeliveryCallback | None = None,
) -> None:
    """Produce one message, waiting (and serving callbacks) while librdkafka's queue is full."""
    hdrs: list[tuple[str, str | bytes | None]] | None = list(headers.items()) if headers else None
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=hdrs, on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def consume_ready(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages`` messages, returning as soon as at least one is there (or after
    ``timeout`` seconds with none).

    ``Consumer.consume(n, timeout)`` returns only when it holds ``n`` messages or the whole timeout
    has passed, even with messages waiting: a sink calling it with n=500 at 100 messages/s added
    half a second to every reading's latency. Here only the wait for the first message blocks;
    the rest is whatever is already fetched.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, timeout=0)] if max_messages > 1 else [first]


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int,
    timeout: float = 30.0,
    security: KafkaSecurity | None = None,
) -> None:
    """Create missing topics (with the configured replication factor and min.insync.replicas);
    existing ones are left as they are."""
    sec = security_or_env(security)
    admin = AdminClient(librdkafka_conf(bootstrap, security=sec))
    deadline = time.monotonic() + timeout
    wanted = set(topics)
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"Kafka at {bootstrap} is unreachable: {exc}") from None
            time.sleep(0.5)
    missing = sorted(wanted - existing)
    if not missing:
        return
    config = {} if sec.min_insync_replicas is None else {"min.insync.replicas": str(sec.min_insync_replicas)}
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=partitions, replication_factor=sec.replication_factor, config=config)
            for t in missing
        ]
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            log.info("created topic %s", name, extra={"kv": {"partitions": partitions}})
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def ensure_contract_topics(bootstrap: str, topics: Topics, security: KafkaSecurity | None = None) -> None:
    ensure_topics(bootstrap, topics.all(), topics.partitions, security=security)
