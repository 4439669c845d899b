"""The generic sink runner: consume from Kafka, decode, flush through any ``Sink`` (``sinks/base.py``:
the protocol and its failure contract), then commit offsets. ``plantstream sink run`` runs it over
``timescaledb.PostgresSink``; another storage implements the protocol and reuses all of this.

Delivery guarantee (at-least-once delivery + idempotent writes = effectively exactly-once rows):
offsets are committed synchronously, per partition, only after the database transaction holding
those records has committed and their dead letters have been acknowledged by the broker. A crash
anywhere re-reads uncommitted records; the sink's keyed upserts make the rewrite a no-op.

Several runners with the same group id (``<prefix>-sink``) share the partitions (range assignor).
On revocation, records of revoked partitions that were read but not yet written are dropped: the
partition's new owner re-reads them from the last committed offset.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from pydantic import BaseModel, ConfigDict, Field

from plantstream.config import Settings
from plantstream.log import Throttle
from plantstream.producers.kafka import consume_ready, make_consumer, make_producer, produce
from plantstream.producers.topics import Topics
from plantstream.sinks.base import DeadLetter, Record, RecordOrigin, Sink, SinkUnavailable, decode, iter_dead_letters

log = logging.getLogger(__name__)

ROWS = Counter(
    "plantstream_sink_rows_written_total", "Rows offered to the database (written or already present)", ["table"]
)
BATCHES = Counter("plantstream_sink_batches_total", "Batches committed to the database")
WRITE_SECONDS = Histogram(
    "plantstream_sink_write_seconds",
    "Duration of one database flush (one transaction)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Source -> commit latency, the number process engineers feel: sampled (1 reading in
# LATENCY_SAMPLE, by position) because observing every row costs more than the rest of the bookkeeping.
LATENCY_SAMPLE = 16
SOURCE_TO_COMMIT = Histogram(
    "plantstream_sink_source_to_commit_seconds",
    f"Source timestamp -> database commit of readings (1 in {LATENCY_SAMPLE} sampled)",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 30, 60, 300),
)
NEWEST_SOURCE = Gauge(
    "plantstream_sink_newest_source_timestamp_seconds",
    "Newest source timestamp committed (data freshness = now - this)",
)
LAG = Gauge("plantstream_consumer_lag", "Records in assigned partitions not yet consumed", ["topic"])
DEAD = Counter("plantstream_deadletters_total", "Records sent to the dead-letter topic", ["stage", "reason"])
DB_ERRORS = Counter("plantstream_sink_db_unavailable_total", "Flushes that failed because the database was unreachable")
VALUE_CONFLICTS = Counter(
    "plantstream_sink_value_conflicts_total",
    "Readings at a stored (tag, time) with another value or quality: first kept, the other in reading_conflicts",
)


class SinkConfig(BaseModel):
    """``plantstream sink run --config``: YAML keys (all optional)."""

    model_config = ConfigDict(extra="forbid")

    batch_max_rows: int = Field(
        default=50_000, ge=1, description="flush when this many readings/aggregate rows are staged"
    )
    batch_max_records: int = Field(default=2_000, ge=1, description="... or this many Kafka records")
    # Short by default: latency source -> database is the product; under load batches still grow
    # to the row/record limits because records pile up while the previous flush runs.
    linger_ms: int = Field(default=50, ge=0, le=60_000, description="... or this long after the first staged record")
    fetch_wait_ms: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="longest the broker may hold a fetch (some brokers hold it this long even when data arrives)",
    )
    topics: list[str] = Field(default_factory=lambda: ["clean", "aggregates", "context", "tags", "deviations"])
    group: str | None = Field(
        default=None, description="consumer group; default <prefix>-sink (a new group replays topics from the start)"
    )
    migrate: bool = Field(default=True, description="apply pending migrations at start; false: refuse to start instead")
    static_assignment: bool = Field(
        default=False,
        description="assign all partitions without joining a group (one instance only; offsets still committed)",
    )
    session_timeout_ms: int = Field(default=10_000, ge=1000, le=300_000)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    progress_interval_s: float = Field(default=10.0, gt=0)
    maintenance_interval_s: float = Field(default=600.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=15.0, gt=0)


TOPIC_KINDS = {
    "clean": "readings",
    "aggregates": "aggregates",
    "context": "context",
    "tags": "tags",
    "deviations": "deviations",
}


@dataclass(slots=True)
class Progress:
    rows: int = 0
    records: int = 0
    dead_letters: int = 0
    batches: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset per partition


class SinkRunner:
    def __init__(self, settings: Settings, config: SinkConfig | None = None, sink: Sink | None = None) -> None:
        self.settings = settings
        self.config = config or SinkConfig()
        self.topics = Topics(settings.topic_prefix, settings.partitions)
        unknown = [t for t in self.config.topics if t not in TOPIC_KINDS]
        if unknown:
            raise ValueError(f"unknown topics {unknown}; choose from {sorted(TOPIC_KINDS)}")
        self.kinds = {getattr(self.topics, t): TOPIC_KINDS[t] for t in self.config.topics}
        self.group_id = self.config.group or f"{settings.topic_prefix}-sink"
        self.sink: Sink = sink if sink is not None else _default_sink(settings)
        self.progress = Progress()
        self._stop = threading.Event()
        self._pending: list[Record | DeadLetter] = []
        self._newest_source_us = 0
        self._last_lag: int | None = None
        self._backlog: deque[Message] = deque()  # consumed, not yet staged
        self._written: dict[tuple[str, int], int] = {}  # next offset per partition, durable in the database
        self._throttle = Throttle(30.0)
        self._consumer: Consumer | None = None
        self._producer: Any = None

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> None:
        """Consume until ``stop()``; never raises for broker/database outages or bad records."""
        if self.config.metrics_port:
            start_http_server(self.config.metrics_port, addr="127.0.0.1")
        self._connect_db()
        consumer = make_consumer(
            self.settings.kafka_bootstrap,
            {
                "group.id": self.group_id,
                "client.id": f"{self.group_id}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "range",
                # A database outage longer than this makes the group move our partitions elsewhere
                # (harmless: uncommitted records are re-read and rewritten idempotently).
                "max.poll.interval.ms": 600_000,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "fetch.wait.max.ms": self.config.fetch_wait_ms,
                "on_commit": self._on_commit,
                # A killed instance's partitions move to the survivors after this long.
                "session.timeout.ms": self.config.session_timeout_ms,
                "heartbeat.interval.ms": max(1000, self.config.session_timeout_ms // 4),
                "error_cb": self._kafka_error,
            },
            security=self.settings.kafka,
        )
        self._consumer = consumer
        self._producer = make_producer(
            self.settings.kafka_bootstrap, client_id=f"{self.group_id}-dlq", security=self.settings.kafka
        )
        if self.config.static_assignment:
            self._assign_all(consumer)
        else:
            consumer.subscribe(list(self.kinds), on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info(
            "sink started",
            extra={"kv": {**self.settings.describe(), "group": self.group_id, "topics": list(self.kinds)}},
        )
        next_progress = time.monotonic() + self.config.progress_interval_s
        next_maint = time.monotonic()
        last_rows, last_t = 0, time.monotonic()
        next_lag = last_t
        try:
            while not self._stop.is_set():
                self._collect(consumer)
                if self._pending:
                    self._flush_and_commit(consumer)
                now = time.monotonic()
                if now >= next_lag:
                    next_lag = now + 1.0
                    self._lag(consumer)
                if now >= next_maint:
                    next_maint = now + self.config.maintenance_interval_s
                    self._maintain()
                if now >= next_progress:
                    next_progress = now + self.config.progress_interval_s
                    lag = self._last_lag  # measured within the last second, just above
                    rate = (self.progress.rows - last_rows) / max(now - last_t, 1e-9)
                    last_rows, last_t = self.progress.rows, now
                    log.info(
                        "sink progress",
                        extra={
                            "kv": {
                                "rows": self.progress.rows,
                                "rows_per_s": round(rate),
                                "batches": self.progress.batches,
                                "lag": lag,
                                "dead_letters": self.progress.dead_letters,
                            }
                        },
                    )
        finally:
            self._final_commit(consumer)
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()
            self._producer.flush(5)
            self.sink.close()
            log.info("sink stopped", extra={"kv": {"rows": self.progress.rows, "records": self.progress.records}})

    # -- consuming ------------------------------------------------------------------------------

    def _collect(self, consumer: Consumer) -> None:
        """Stage records until a size limit or the linger time; surplus messages wait in a backlog."""
        cfg = self.config
        rows = 0
        deadline: float | None = None
        while not self._stop.is_set():
            if not self._backlog:
                n = min(500, cfg.batch_max_records)
                if deadline is None:
                    # Nothing staged: take whatever arrives first at once (consume() would hold
                    # it until n messages or the whole timeout).
                    self._backlog = deque(consume_ready(consumer, n, 0.5))
                else:
                    # Lingering: waiting for more until the deadline is the point.
                    self._backlog = deque(consumer.consume(n, timeout=max(0.0, deadline - time.monotonic())))
            while self._backlog:
                msg = self._backlog.popleft()
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        n = self._throttle.should(f"consume:{err.name()}")
                        if n >= 0:
                            log.warning("consume error: %s", err.str(), extra={"kv": {"repeats": n}})
                    continue
                rec = self._decode(msg)
                self._pending.append(rec)
                if isinstance(rec, Record) and rec.kind in ("readings", "aggregates"):
                    rows += len(rec.payload)
                if deadline is None:
                    deadline = time.monotonic() + cfg.linger_ms / 1000
                if rows >= cfg.batch_max_rows or len(self._pending) >= cfg.batch_max_records:
                    return
            if not self._pending:
                return  # idle: let the caller run its periodic work
            if deadline is not None and time.monotonic() >= deadline:
                return

    def _decode(self, msg: Message) -> Record | DeadLetter:
        topic, part, off = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        return decode(self.kinds[topic], msg.value(), RecordOrigin(topic, part, off), msg.key())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"kv": {"partitions": [f"{p.topic}/{p.partition}" for p in partitions]}})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        # Hand over cleanly: what is already written is committed before the new owner starts.
        todo = [
            TopicPartition(t, p, o)
            for (t, p), o in self._written.items()
            if (t, p) in gone and self.progress.committed.get((t, p), -1) < o
        ]
        if todo:
            with contextlib.suppress(KafkaException):
                consumer.commit(offsets=todo, asynchronous=False)
        for k in gone:
            self._written.pop(k, None)
        self._backlog = deque(m for m in self._backlog if (m.topic(), m.partition()) not in gone)
        before = len(self._pending)
        self._pending = [
            r for r in self._pending if r.origin is None or (r.origin.topic, r.origin.partition) not in gone
        ]
        log.info(
            "partitions revoked",
            extra={
                "kv": {
                    "partitions": sorted(f"{t}/{p}" for t, p in gone),
                    "dropped_unwritten": before - len(self._pending),
                }
            },
        )

    def _assign_all(self, consumer: Consumer) -> None:
        md = consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t in self.kinds if t in md.topics for p in md.topics[t].partitions]
        committed = consumer.committed(tps, timeout=10) if tps else []
        for tp in committed:
            if tp.offset < 0:
                tp.offset = OFFSET_BEGINNING
        consumer.assign(committed)
        log.info("partitions assigned (static)", extra={"kv": {"partitions": len(committed)}})

    # -- writing --------------------------------------------------------------------------------

    def _connect_db(self) -> None:
        backoff = self.config.backoff_initial_s
        while not self._stop.is_set():
            try:
                self.sink.connect()
                return
            except SinkUnavailable as exc:
                self._say_unavailable(exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.config.backoff_max_s)

    def _say_unavailable(self, exc: BaseException, backoff: float) -> None:
        n = self._throttle.should("db")
        if n >= 0:
            log.warning(
                "database unavailable, retrying", extra={"kv": {"error": str(exc), "retry_in_s": backoff, "repeats": n}}
            )

    def _flush_and_commit(self, consumer: Consumer) -> None:
        batch, self._pending = self._pending, []
        self.sink.write(batch)
        backoff = self.config.backoff_initial_s
        while True:
            try:
                with WRITE_SECONDS.time():
                    dead = self.sink.flush()
                break
            except SinkUnavailable as exc:
                DB_ERRORS.inc()
                self._say_unavailable(exc, backoff)
                if self._stop.wait(backoff):
                    self.sink.close()  # nothing committed: the records are re-read on restart
                    return
                backoff = min(backoff * 2, self.config.backoff_max_s)
                try:
                    self.sink.connect()
                except SinkUnavailable:
                    continue
        self._observe_latency(batch, time.time())
        stats = self.sink.last
        ROWS.labels("readings").inc(stats.readings)
        ROWS.labels("aggregates").inc(stats.aggregates)
        ROWS.labels("context").inc(stats.other)
        VALUE_CONFLICTS.inc(stats.value_conflicts)
        BATCHES.inc()
        if dead and not self._publish_dead_letters(dead):
            return  # stopping before the broker took them: do not commit, they come back
        self.progress.rows += stats.readings + stats.aggregates
        self.progress.records += len(batch)
        self.progress.batches += 1
        self._commit(consumer, batch)

    def _observe_latency(self, batch: list[Record | DeadLetter], committed: float) -> None:
        newest = self._newest_source_us
        for rec in batch:
            if isinstance(rec, Record) and rec.kind == "readings" and rec.payload.ts_us:
                ts = rec.payload.ts_us
                newest = max(newest, max(ts))
                for t in ts[::LATENCY_SAMPLE]:
                    SOURCE_TO_COMMIT.observe(committed - t / 1e6)
        if newest > self._newest_source_us:
            self._newest_source_us = newest
            NEWEST_SOURCE.set(newest / 1e6)

    def _publish_dead_letters(self, dead: list[DeadLetter]) -> bool:
        """Produce every dead letter and wait for the broker's acknowledgement, re-producing failures.
        False if asked to stop first (then offsets must not be committed)."""
        backoff = self.config.backoff_initial_s
        todo = list(dead)
        while todo:
            failed: list[DeadLetter] = []
            for d, (value, key, headers) in zip(todo, iter_dead_letters(todo), strict=True):

                def done(
                    err: KafkaError | None, _msg: Message, d: DeadLetter = d, failed: list[DeadLetter] = failed
                ) -> None:
                    if err is not None:
                        failed.append(d)

                produce(self._producer, self.topics.deadletter, value, key=key, headers=headers, on_delivery=done)
            # librdkafka retries until message.timeout.ms, then reports each failure to `done`.
            while self._producer.flush(1.0) > 0:
                if self._stop.is_set():
                    return False
            todo = failed
            if todo:
                n = self._throttle.should("dlq")
                if n >= 0:
                    log.warning(
                        "dead-letter topic unavailable, retrying", extra={"kv": {"failed": len(todo), "repeats": n}}
                    )
                if self._stop.wait(backoff):
                    return False
                backoff = min(backoff * 2, self.config.backoff_max_s)
        for d in dead:
            DEAD.labels("sink", "undecodable" if d.reason.startswith("undecodable") else "rejected").inc()
        self.progress.dead_letters += len(dead)
        return True

    def _commit(self, consumer: Consumer, batch: Iterable[Record | DeadLetter]) -> None:
        """Commit the next offsets of exactly the records in ``batch`` (already durable).

        Asynchronous: a synchronous commit costs a broker round trip per flush, which at small
        batches halves throughput. Safe because the records are already in the database; a commit
        that fails or is lost (crash, rebalance) only makes their new owner re-read and rewrite
        them idempotently. librdkafka sends commits in order, so a later one never goes backwards.
        """
        nxt: dict[tuple[str, int], int] = {}
        for r in batch:
            if r.origin is not None:
                k = (r.origin.topic, r.origin.partition)
                nxt[k] = max(nxt.get(k, 0), r.origin.offset + 1)
        if not nxt:
            return
        self._written.update(nxt)
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in nxt.items()], asynchronous=True)
        except KafkaException as exc:
            log.warning("offset commit failed; records will be re-read", extra={"kv": {"error": str(exc)}})

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            # Typically a rebalance: the partition's new owner re-reads these records and the
            # idempotent writes make that harmless.
            if (n := self._throttle.should("commit")) >= 0:
                log.warning(
                    "offset commit failed; records will be re-read", extra={"kv": {"error": err.str(), "repeats": n}}
                )
            return
        for tp in partitions:
            if tp.error is None and tp.offset >= 0:
                k = (tp.topic, tp.partition)
                if tp.offset > self.progress.committed.get(k, -1):
                    self.progress.committed[k] = tp.offset

    def _final_commit(self, consumer: Consumer) -> None:
        """On shutdown: make sure the last written offsets are committed (synchronously)."""
        todo = [
            TopicPartition(t, p, o)
            for (t, p), o in self._written.items()
            if self.progress.committed.get((t, p), -1) < o
        ]
        if not todo:
            return
        try:
            consumer.commit(offsets=todo, asynchronous=False)
            for tp in todo:
                self.progress.committed[(tp.topic, tp.partition)] = tp.offset
        except KafkaException as exc:
            log.warning("final offset commit failed; records will be re-read", extra={"kv": {"error": str(exc)}})

    def _maintain(self) -> None:
        try:
            self.sink.maintain()
        except SinkUnavailable as exc:
            self._say_unavailable(exc, 0)
        except Exception as exc:  # maintenance must never stop ingestion
            log.warning("maintenance failed", extra={"kv": {"error": str(exc)}})

    def _lag(self, consumer: Consumer) -> int | None:
        try:
            assignment = consumer.assignment()
            per_topic: dict[str, int] = {}
            for tp in consumer.position(assignment):
                # Cached: the high watermark from the last fetch response, no broker round trip.
                lo, hi = consumer.get_watermark_offsets(tp, cached=True)
                pos = tp.offset if tp.offset >= 0 else self.progress.committed.get((tp.topic, tp.partition), lo)
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, hi - pos)
            for topic, n in per_topic.items():
                LAG.labels(topic).set(n)
            self._last_lag = sum(per_topic.values())
            return self._last_lag
        except KafkaException:
            return None

    @staticmethod
    def _kafka_error(err: KafkaError) -> None:
        log.debug("kafka: %s", err.str())


def _default_sink(settings: Settings) -> Sink:
    # The product's storage when the caller names none; the runner itself knows only the protocol.
    from plantstream.sinks.timescaledb.sink import PostgresSink

    return PostgresSink(settings.dsn)
