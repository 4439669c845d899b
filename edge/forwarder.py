"""Forward buffered messages to Kafka, oldest first, deleting each only once Kafka acknowledged it.

``pump()`` is called repeatedly from the agent loop (never blocks): it serves delivery
callbacks, deletes what was delivered, and produces more entries up to ``max_inflight``.
On a failed delivery it stops producing, waits for everything in flight to resolve, then
rewinds to the oldest undelivered entry after a backoff, so replay after an outage stays in
append order (duplicates are possible, loss is not: delivery is at-least-once).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from plantstream.edge.buffer import Buffer
from plantstream.log import Throttle

log = logging.getLogger(__name__)

ProducerFactory = Callable[[], Producer]

# Delivery errors no retry can fix: larger than the broker accepts, or a record it rejects.
_REFUSED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD})
# The idempotent producer's identity is spent: after message timeouts a broker may answer every
# later send with one of these without librdkafka calling it fatal() (seen with PRODUCER_FENCED
# after an outage past message.timeout.ms). Only a new producer (new producer id) delivers again.
_NEW_PRODUCER = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
    }
)


@dataclass(slots=True)
class ForwardStats:
    delivered_entries: int = 0
    delivered_readings: int = 0
    failures: int = 0
    # Entries Kafka refused outright (too large for message.max.bytes, producer or broker): kept in
    # the buffer and skipped until the next start, so what follows them still flows.
    refused: int = 0
    producers_replaced: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    last_error: str = ""
    last_delivery_us: int | None = None


class Forwarder:
    def __init__(
        self,
        buffer: Buffer,
        producer_factory: ProducerFactory,
        max_inflight: int = 2000,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        on_delivered: Callable[[str, int], None] | None = None,
        stall_s: float = 10.0,
        delete_interval_s: float = 0.1,
    ) -> None:
        self.buffer = buffer
        # librdkafka keeps retrying an unreachable broker silently until message.timeout.ms
        # (minutes): without this, an agent cut off from Kafka would report itself healthy while
        # its buffer grows. Unhealthy once messages are in flight and none was acknowledged for
        # stall_s.
        self.stall_s = stall_s
        self._waiting_since: float | None = None
        self.delete_interval_s = delete_interval_s
        self._last_delete = 0.0
        self._factory = producer_factory
        self.producer = producer_factory()
        self.max_inflight = max_inflight
        self._cursor = 0  # highest id handed to the producer
        # id -> (source, readings, topic); payloads live in librdkafka's queue, not here.
        self._inflight: dict[int, tuple[str, int, str]] = {}
        self._done: list[int] = []
        self.refused_ids: set[int] = set()
        self._retry_from: int | None = None
        self._fatal = False
        self._resume_at = 0.0
        self._backoff_min = backoff_min_s
        self._backoff_max = backoff_max_s
        self._backoff = backoff_min_s
        self._throttle = Throttle(30.0)
        self._on_delivered = on_delivered
        self.stats = ForwardStats()
        self.delete_failures = 0
        self._delete_retry_at = 0.0
        self.last_delete_error = ""

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def healthy(self) -> bool:
        return self._retry_from is None and not self._fatal and not self.stalled and not self.refused_ids

    @property
    def stalled(self) -> bool:
        """Messages in flight and no acknowledgement for ``stall_s``."""
        w = self._waiting_since
        return bool(self._inflight) and w is not None and time.monotonic() - w > self.stall_s

    def _callback(self, rid: int) -> Callable[[KafkaError | None, Message], None]:
        def cb(err: KafkaError | None, msg: Message) -> None:
            info = self._inflight.pop(rid, None)
            if info is None:
                return
            # Any answer from the broker (delivered or not) ends a stall; a failure is reported
            # through _retry_from instead.
            self._waiting_since = time.monotonic() if self._inflight else None
            source, n, topic = info
            if err is None:
                self._done.append(rid)
                st = self.stats
                st.delivered_entries += 1
                st.delivered_readings += n
                st.per_source[source] = st.per_source.get(source, 0) + n
                st.last_delivery_us = time.time_ns() // 1000
                if self._on_delivered is not None:
                    self._on_delivered(source, n)
                return
            self.stats.failures += 1
            self.stats.last_error = err.str()
            if err.code() in _REFUSED:
                # The broker will refuse it again whatever we do: retrying in order would block
                # (and re-send) everything behind it forever. Kept, not deleted.
                self._refuse(rid, topic, err.str(), None)
                return
            if err.fatal() or err.code() in _NEW_PRODUCER:
                self._fatal = True
            self._retry_from = rid if self._retry_from is None else min(self._retry_from, rid)
            n = self._throttle.should(f"fail:{err.name()}")
            if n >= 0:
                log.warning(
                    "kafka delivery failed; entries stay buffered and are retried in order",
                    extra={"kv": {"error": err.str(), "code": err.name(), "topic": topic, "suppressed": n}},
                )

        return cb

    def _refuse(self, rid: int, topic: str, error: str, size: int | None) -> None:
        if rid in self.refused_ids:
            return
        self.refused_ids.add(rid)
        self.stats.refused += 1
        self.stats.last_error = f"entry {rid} refused: {error}"
        log.error(
            "kafka refused a buffered entry; it stays in the buffer (not deleted) and is tried again at the next "
            "start: raise the broker's/producer's message.max.bytes or lower batch.max_bytes",
            extra={"kv": {"entry": rid, "error": error, "topic": topic, "bytes": size, "refused": self.stats.refused}},
        )

    def pump(self, budget: int | None = None) -> int:
        """One non-blocking round; returns entries handed to the producer."""
        self.producer.poll(0)
        self.commit_deletes(force=False)
        if self._retry_from is not None or self._fatal:
            if self._inflight:
                return 0  # wait until every in-flight message has resolved, then rewind
            now = time.monotonic()
            if self._resume_at == 0.0:
                self._resume_at = now + self._backoff
                self._backoff = min(self._backoff * 2, self._backoff_max)
                return 0
            if now < self._resume_at:
                return 0
            if self._fatal:
                # An idempotent producer in a fatal state never recovers; start a fresh one.
                log.warning(
                    "kafka producer cannot deliver again (fatal or fenced); creating a new producer",
                    extra={"kv": {"error": self.stats.last_error}},
                )
                self.stats.producers_replaced += 1
                self.producer = self._factory()
                self._fatal = False
            if self._retry_from is not None:
                self._cursor = self._retry_from - 1
            self._retry_from = None
            self._resume_at = 0.0
        room = self.max_inflight - len(self._inflight)
        if budget is not None:
            room = min(room, budget)
        sent = 0
        while room > 0:
            rows = self.buffer.read(self._cursor, min(room, 500))
            if not rows:
                break
            for st in rows:
                e = st.entry
                try:
                    # The stubs type headers as an invariant List of (str, str | bytes | None);
                    # our list of (str, bytes) is a valid value for it.
                    headers = cast("list[tuple[str, str | bytes | None]] | None", e.headers)
                    self.producer.produce(
                        e.topic, value=e.value, key=e.key, headers=headers, on_delivery=self._callback(st.id)
                    )
                except BufferError:
                    self.producer.poll(0)
                    return sent  # librdkafka's queue is full; continue next round from the cursor
                except KafkaException as exc:
                    # Refused by the producer itself (e.g. larger than its message.max.bytes):
                    # never deleted (its source was acknowledged), skipped so the rest flows.
                    self._refuse(st.id, e.topic, str(exc), len(e.value))
                    self._cursor = st.id
                    continue
                if not self._inflight:
                    self._waiting_since = time.monotonic()
                self._inflight[st.id] = (e.source, e.count, e.topic)
                self._cursor = st.id
                sent += 1
                room -= 1
            if len(rows) < 500:
                break
        if sent:
            self.producer.poll(0)
        if self.healthy and self.stats.delivered_entries and not self._inflight:
            self._backoff = self._backoff_min
        return sent

    def commit_deletes(self, force: bool = True) -> int:
        """Delete delivered entries from the buffer. Unless ``force``, at most every
        ``delete_interval_s`` (or once 2000 are waiting): each delete is a commit with an fsync,
        and a delete lost in a crash only means entries Kafka already has are sent again
        (at-least-once; downstream dedups by source sequence)."""
        if not self._done:
            return 0
        now = time.monotonic()
        if not force and len(self._done) < 2000 and now - self._last_delete < self.delete_interval_s:
            return 0
        if not force and now < self._delete_retry_at:
            return 0  # the last delete failed (disk full): retry once a second, not every round
        self._last_delete = now
        done, self._done = self._done, []
        if self._retry_from is None and self._backoff != self._backoff_min:
            self._backoff = self._backoff_min
        try:
            return int(self.buffer.delete(done))
        except sqlite3.Error as exc:
            # A delete needs disk space too (WAL). Kafka has these entries and the cursor is past
            # them, so keeping their ids and deleting later re-sends nothing; losing the ids would
            # re-send them after the next start.
            self._done = done + self._done
            self._delete_retry_at = now + 1.0
            self.delete_failures += 1
            self.last_delete_error = str(exc)
            n = self._throttle.should("delete")
            if n >= 0:
                log.error(
                    "buffer delete failed; delivered entries are kept and deleted later",
                    extra={"kv": {"error": str(exc), "entries": len(done), "suppressed": n}},
                )
            return 0

    def drain(self, timeout_s: float) -> bool:
        """Forward until the buffer is empty or timeout; True if everything was delivered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump()
            if not self._inflight and self.buffer.depth().entries == 0:
                return True
            self.producer.poll(0.02)
        self.producer.poll(0)
        self.commit_deletes()
        return False
