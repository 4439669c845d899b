"""The one Kafka consumer of a monitor process, bridged into asyncio.

A background thread reads ``aggregates``, ``deviations`` and ``context`` from their current end
and ``tags`` from the beginning (compacted: it teaches the grade book every tag's grade). It
uses ``assign()`` to every partition, never a consumer group: no group join (20-30 s on the
local broker), no offsets committed, every monitor replica sees everything.

Start offsets are the high watermarks read when a partition is assigned, not the logical "end"
offset (resolved lazily at the first fetch), so ``ready`` is a real guarantee: everything
produced after it is set is delivered. A topic that appears later (the pipeline's topics created
after the monitor started) is picked up within ``rescan_s`` and read from its beginning.

Failure behaviour: the broker away -> librdkafka reconnects; errors are logged once per 30 s.
An undecodable record is counted (``plantstream_monitor_decode_errors_total``) and skipped; the
monitor does not dead-letter (it only observes; the streams and sink stages own those topics).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from plantstream.log import Throttle
from plantstream.monitor.hub import Event, GradeBook, finite
from plantstream.producers import codec
from plantstream.producers.kafka import consume_ready, make_consumer
from plantstream.producers.topics import Topics

log = logging.getLogger(__name__)

LIVE_DEVIATION_KEYS = (
    "id",
    "kind",
    "status",
    "plant",
    "equipment",
    "tag",
    "lot",
    "spec",
    "property",
    "start_us",
    "end_us",
    "peak",
    "limit_min",
    "limit_max",
    "unit",
    "duration_s",
    "reason",
    "count",
)


def decode(kind: str, value: bytes, grades: GradeBook, forward_1m: bool = False) -> list[Event]:
    """Events for one Kafka record of topic ``kind`` (aggregates | deviations | context | tags).
    Raises ``codec.CodecError`` for an undecodable record."""
    if kind == "aggregates":
        by_plant: dict[str, list[dict[str, Any]]] = {}
        for a in codec.decode_aggregates(value):
            if a.window != "1s" and not forward_1m:
                continue
            by_plant.setdefault(a.plant, []).append(
                finite(
                    {
                        "plant": a.plant,
                        "equipment": a.equipment,
                        "tag": a.tag,
                        "window": a.window,
                        "start_us": a.start_us,
                        "count": a.count,
                        "bad_count": a.bad_count,
                        "min": a.min,
                        "max": a.max,
                        "mean": a.mean,
                        "last": a.last,
                        "unit": a.unit,
                        "lot": a.lot,
                    }
                )
            )
        return [Event("aggregates", plant, items) for plant, items in by_plant.items()]
    if kind == "deviations":
        # The contract checks the map (plant and start required, status open or closed, ...).
        dev = codec.decode_deviation(value).to_map()
        item = finite({k: dev[k] for k in LIVE_DEVIATION_KEYS if k in dev})
        return [Event("deviation", dev["plant"], [item], single=True)]
    if kind == "context":
        ev = codec.decode_context(value)
        if ev.kind.value not in ("lot_start", "lot_end"):
            return []
        item = {
            "kind": ev.kind.value,
            "plant": ev.plant,
            "equipment": ev.equipment,
            "lot": ev.lot,
            "lot_kind": ev.lot_kind,
            "material": ev.material,
            "ts_us": ev.ts_us,
        }
        return [Event("lot", ev.plant, [item], single=True)]
    if kind == "tags":
        meta = codec.decode_tag_meta(value)
        grades.learn(meta.plant, meta.tag, meta.grade.value)
        return []
    raise ValueError(f"unknown topic kind {kind!r}")


class KafkaFeed:
    """Background thread: Kafka -> ``publish(list[Event])`` on the event loop."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        grades: GradeBook,
        publish: Callable[[list[Event]], Any],
        loop: asyncio.AbstractEventLoop,
        metrics: Any = None,
        forward_1m: bool = False,
        rescan_s: float = 2.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.kinds = {
            topics.aggregates: "aggregates",
            topics.deviations: "deviations",
            topics.context: "context",
            topics.tags: "tags",
        }
        self.grades = grades
        self.publish = publish
        self.loop = loop
        self.metrics = metrics
        self.forward_1m = forward_1m
        self.rescan_s = rescan_s
        self.ready = threading.Event()  # every wanted topic assigned at known offsets
        self.started = threading.Event()  # at least the topics existing at start are assigned
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned: dict[str, int] = {}  # topic -> partitions assigned
        self._throttle = Throttle(30.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="monitor-kafka", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def state(self) -> str:
        return "live" if self.ready.is_set() else "starting" if not self.started.is_set() else "partial"

    def _consumer(self) -> Consumer:
        return make_consumer(
            self.bootstrap,
            {
                # Required by the client, never used: assign() joins no group and nothing is committed.
                "group.id": "plantstream-monitor",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "latest",
                "client.id": "plantstream-monitor",
                "fetch.wait.max.ms": 100,
                "reconnect.backoff.max.ms": 5000,
                "error_cb": self._on_error,
            },
        )

    def _on_error(self, err: Any) -> None:
        if (n := self._throttle.should(f"kafka:{err.name()}")) >= 0:
            log.warning("kafka: %s", err.str(), extra={"kv": {"code": err.name(), "repeats": n}})

    def _assign_new(self, consumer: Consumer, first: bool) -> bool:
        """Assign partitions not assigned yet; False when the broker could not be asked."""
        try:
            meta = consumer.list_topics(timeout=5)
        except KafkaException as exc:
            if (n := self._throttle.should("metadata")) >= 0:
                log.warning("kafka metadata unavailable", extra={"kv": {"error": str(exc), "repeats": n}})
            return False
        new: list[TopicPartition] = []
        for topic, kind in self.kinds.items():
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                continue
            have = self._assigned.get(topic, 0)
            parts = sorted(tmeta.partitions)
            if len(parts) <= have:
                continue
            for p in parts[have:]:
                if kind == "tags" or not first:
                    # Tags: the full compacted history. A topic appearing after start: all of it is new.
                    offset = self._low(consumer, topic, p)
                else:
                    offset = self._high(consumer, topic, p)
                new.append(TopicPartition(topic, p, offset))
            self._assigned[topic] = len(parts)
        if new:
            consumer.incremental_assign(new)
            log.info("monitor feed assigned", extra={"kv": {"partitions": len(new), "topics": len(self._assigned)}})
        self.started.set()
        if len(self._assigned) == len(self.kinds):
            self.ready.set()
        return True

    @staticmethod
    def _high(consumer: Consumer, topic: str, p: int) -> int:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        return int(high)

    @staticmethod
    def _low(consumer: Consumer, topic: str, p: int) -> int:
        low, _ = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        return max(int(low), 0)

    def _run(self) -> None:
        consumer: Consumer | None = None
        next_scan = 0.0
        first = True
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                if not self.ready.is_set() and time.monotonic() >= next_scan:
                    if self._assign_new(consumer, first):
                        first = False
                    next_scan = time.monotonic() + self.rescan_s
                msgs = consume_ready(consumer, 1000, 0.2) if self._assigned else []
                if not self._assigned:
                    self._stop.wait(0.2)
                events: list[Event] = []
                for m in msgs:
                    if m.error() is not None:
                        self._on_error(m.error())
                        continue
                    topic = m.topic() or ""
                    kind = self.kinds.get(topic, "")
                    if self.metrics is not None:
                        self.metrics.kafka_messages.labels(kind).inc()
                    try:
                        events.extend(decode(kind, m.value() or b"", self.grades, self.forward_1m))
                    except (codec.CodecError, ValueError, TypeError) as exc:
                        if self.metrics is not None:
                            self.metrics.decode_errors.labels(kind).inc()
                        if (n := self._throttle.should(f"decode:{kind}")) >= 0:
                            log.warning(
                                "undecodable record skipped",
                                extra={"kv": {"topic": topic, "offset": m.offset(), "error": str(exc), "repeats": n}},
                            )
                if events:
                    self.loop.call_soon_threadsafe(self.publish, events)
            except KafkaException as exc:
                if (n := self._throttle.should("consume")) >= 0:
                    log.warning("kafka consume failed; retrying", extra={"kv": {"error": str(exc), "repeats": n}})
                self._stop.wait(1.0)
            except RuntimeError:  # the event loop closed under us: shutting down
                break
            except Exception:  # nothing may kill the feed thread silently
                log.exception("monitor feed error; continuing")
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()
