"""Faust wiring (thin): Kafka records in, :class:`Processor` outputs out, offsets committed only
as far as the open windows allow. All stream logic lives in ``plantstream.streams.logic``.

* ``raw`` is consumed by a Faust agent (consumer group, one :class:`Processor` per partition).
* ``tags`` and ``context`` are read by every worker in full (assign, from the beginning): tag
  metadata is keyed by tag and a lot on a parent equipment stamps children on other partitions,
  so neither can be co-partitioned with the readings. Raw processing waits until both are loaded.
* Outputs go through a confluent-kafka producer (idempotent, lz4). Every ``checkpoint_interval``
  the producer is flushed, each partition's checkpoint (per-tag horizons) is written to the state
  directory, and only then are raw records below the partition's safe offset acked, so Faust
  commits nothing whose outputs are not durable or whose windows are still open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import KafkaError, Message
from prometheus_client import Counter, Gauge, start_http_server

from plantstream.config import Settings
from plantstream.contract import ContextKind, now_us
from plantstream.log import Throttle
from plantstream.producers.codec import encode_aggregates, encode_deviation, encode_readings
from plantstream.producers.kafka import ensure_contract_topics, make_producer
from plantstream.producers.topics import (
    DEADLETTER_ORIGIN_HEADER,
    DEADLETTER_REASON_HEADER,
    DEADLETTER_STAGE_HEADER,
    Topics,
)
from plantstream.streams.config import StreamsConfig
from plantstream.streams.logic.processor import DeadLetter, Output, Processor, SharedContext, decode_context_record

log = logging.getLogger("plantstream.streams")

READINGS_IN = Counter("plantstream_streams_readings_in_total", "Readings consumed from the raw topic")
READINGS_OUT = Counter("plantstream_streams_readings_out_total", "Readings produced to the clean topic")
DUPLICATES = Counter("plantstream_streams_duplicates_total", "Replayed readings dropped by dedup")
AGGREGATES = Counter("plantstream_streams_aggregates_total", "Closed windows produced", ["window"])
DEVIATIONS = Counter("plantstream_streams_deviations_total", "Deviation records produced", ["kind"])
LATE = Counter("plantstream_streams_late_total", "Readings too late for their window")
DEADLETTERS = Counter("plantstream_deadletters_total", "Records sent to the dead-letter topic", ["stage", "topic"])
LAG = Gauge("plantstream_consumer_lag", "Records behind the partition high-water mark", ["topic", "partition"])
OPEN_WINDOWS = Gauge("plantstream_streams_open_windows", "Open windows over all partitions")


@dataclass
class Runtime:
    settings: Settings
    cfg: StreamsConfig
    topics: Topics
    app_id: str
    shared: SharedContext = field(default_factory=SharedContext)
    processors: dict[int, Processor] = field(default_factory=dict)
    assigned: set[int] = field(default_factory=set)  # raw partitions this worker owns
    pending: dict[int, deque[Any]] = field(default_factory=dict)  # partition -> unacked faust events
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    producer: Any = None
    delivery_failed: int = 0
    readings_in: int = 0
    throttle: Throttle = field(default_factory=lambda: Throttle(30.0))

    @property
    def checkpoint_dir(self) -> Path:
        return self.settings.state_dir / "streams" / self.app_id

    def processor(self, partition: int) -> Processor:
        proc = self.processors.get(partition)
        if proc is None:
            proc = self.processors[partition] = Processor(self.shared, self.cfg.processor(), partition)
            cp = self.checkpoint_dir / f"p{partition}.json"
            if cp.exists():
                try:
                    proc.restore(json.loads(cp.read_text()))
                    log.info("checkpoint restored", extra={"kv": {"partition": partition}})
                except (ValueError, OSError, TypeError) as exc:
                    log.warning(
                        "checkpoint unusable; windows rebuild from the committed offset",
                        extra={"kv": {"partition": partition, "error": str(exc)}},
                    )
        return proc

    # --- output --------------------------------------------------------------------------------

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.delivery_failed += 1
            if (n := self.throttle.should("delivery")) >= 0:
                log.error(
                    "output not delivered; offsets are held back", extra={"kv": {"error": str(err), "repeats": n}}
                )

    def _send(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)

    def emit(self, out: Output) -> None:
        t = self.topics
        for batch in out.clean:
            self._send(t.clean, encode_readings(batch), batch.key)
            READINGS_OUT.inc(len(batch))
        if out.aggregates:
            by_key: dict[str, list[Any]] = {}
            for a in out.aggregates:
                by_key.setdefault(f"{a.plant}/{a.equipment}", []).append(a)
                AGGREGATES.labels(a.window).inc()
            for key, aggs in by_key.items():
                self._send(t.aggregates, encode_aggregates(aggs), key)
        for dev in out.deviations:
            self._send(t.deviations, encode_deviation(dev), f"{dev['plant']}/{dev['equipment']}")
            DEVIATIONS.labels(dev["kind"]).inc()
        for dl in out.deadletters:
            self.deadletter(dl)
        if out.readings_in:
            READINGS_IN.inc(out.readings_in)
            self.readings_in += out.readings_in
        if out.duplicates:
            DUPLICATES.inc(out.duplicates)
        if out.late:
            LATE.inc(out.late)
        self.producer.poll(0)

    def deadletter(self, dl: DeadLetter) -> None:
        headers: list[tuple[str, bytes | None]] = [h for h in dl.headers if not h[0].startswith("plantstream-")]
        headers += [
            (DEADLETTER_REASON_HEADER, dl.reason.encode()),
            (DEADLETTER_STAGE_HEADER, b"streams"),
            (DEADLETTER_ORIGIN_HEADER, dl.origin.encode()),
        ]
        self._send(self.topics.deadletter, dl.value, dl.key, headers)
        DEADLETTERS.labels("streams", dl.origin.rsplit("/", 2)[0]).inc()
        if (n := self.throttle.should("deadletter")) >= 0:
            log.warning("record dead-lettered", extra={"kv": {"reason": dl.reason, "origin": dl.origin, "repeats": n}})

    # --- checkpoints ---------------------------------------------------------------------------

    async def checkpoint(self, app: faust.App) -> None:
        """Flush outputs, persist per-partition checkpoints, then ack what is safe to commit."""
        failed_before = self.delivery_failed
        remaining = await asyncio.get_running_loop().run_in_executor(None, self.producer.flush, 30.0)
        if remaining or self.delivery_failed != failed_before or self.delivery_failed:
            return  # outputs not durable: commit nothing (a restart re-processes from the last commit)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for partition, proc in list(self.processors.items()):
            cp = proc.checkpoint()
            safe = cp["offset"]
            if safe is None:
                continue
            path = self.checkpoint_dir / f"p{partition}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cp))
            os.replace(tmp, path)
            queue = self.pending.get(partition)
            while queue and queue[0].message.offset < safe:
                app.consumer.ack(queue.popleft().message)

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.processors.pop(p, None)
            self.pending.pop(p, None)


async def _load_broadcast(rt: Runtime) -> None:
    """Read the tags and context topics from the beginning, forever; set ``rt.loaded`` once the
    end offsets seen at start are reached. Decoding problems are dead-lettered by the worker that
    owns the matching raw partition (so several workers do not each dead-letter them)."""
    s = rt.settings
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"{rt.app_id}-broadcast",
    )
    while True:
        try:
            await consumer.start()
            break
        except Exception as exc:  # broker away: retry with backoff
            if (n := rt.throttle.should("broadcast-start")) >= 0:
                log.warning("broker unreachable for tags/context", extra={"kv": {"error": str(exc), "repeats": n}})
            await asyncio.sleep(2.0)
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (rt.topics.tags, rt.topics.context)
            for p in sorted(consumer.partitions_for_topic(topic) or range(rt.topics.partitions))
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp, end in ends.items() if end > 0}
        if not remaining:
            rt.loaded.set()
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                for rec in records:
                    _broadcast_record(rt, tp.topic, tp.partition, rec.offset, rec.key, rec.value)
                if tp in remaining and records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            if remaining and not rt.loaded.is_set():
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
            if not remaining and not rt.loaded.is_set():
                log.info(
                    "tags and context loaded",
                    extra={"kv": {"tags": len(rt.shared.rules), "lot_version": rt.shared.lots.version}},
                )
                rt.loaded.set()
    finally:
        await consumer.stop()


def _broadcast_record(
    rt: Runtime, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> None:
    origin = f"{topic}/{partition}/{offset}"
    # This worker owns raw partition N -> it reports tags/context partition N (once per group).
    owner = rt.processor(partition) if partition in rt.assigned else None
    try:
        if topic == rt.topics.tags:
            for dl in rt.shared.tag_record(value, origin, key):
                if owner is not None:
                    rt.deadletter(dl)
            return
        ev = decode_context_record(value, origin, key)
        if isinstance(ev, DeadLetter):
            if owner is not None:
                rt.deadletter(ev)
            return
        if ev.kind is ContextKind.LAB_RESULT and owner is not None:
            rt.emit(owner.process_context(ev, emit_lab=True))
        else:
            rt.shared.apply_context(ev)
    except Exception:  # never let one record stop the context stream
        log.exception("broadcast record failed", extra={"kv": {"origin": origin}})


def build_app(settings: Settings, cfg: StreamsConfig) -> tuple[faust.App, Runtime]:
    topics = Topics(settings.topic_prefix, settings.partitions)
    app_id = f"{settings.topic_prefix}-streams"
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=cfg.web_port is not None,
        web_port=cfg.web_port or 6066,
        web_bind="127.0.0.1",
        topic_partitions=settings.partitions,
        topic_allow_declare=False,  # the contract topics are created by ensure_contract_topics
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,  # acks are deliberately held back while windows are open
        broker_commit_interval=max(1.0, cfg.checkpoint_interval_s / 2),
        producer_compression_type="lz4",
    )
    rt = Runtime(settings, cfg, topics, app_id)
    raw = app.topic(topics.raw, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(raw)
    async def process_raw(stream: faust.StreamT[bytes]) -> None:
        async for event in cast(Any, stream).noack().events():
            if not rt.loaded.is_set():
                await rt.loaded.wait()
            msg = event.message
            origin = f"{msg.topic}/{msg.partition}/{msg.offset}"
            try:
                out = rt.processor(msg.partition).process_raw(
                    msg.value, origin, msg.offset, now_us(), msg.key, [(k, v) for k, v in (msg.headers or [])]
                )
                rt.emit(out)
            except Exception:  # the processor already turns input problems into dead letters
                log.exception("raw record failed", extra={"kv": {"origin": origin}})
            rt.pending.setdefault(msg.partition, deque()).append(event)
            hw = app.consumer.highwater(msg.tp) if hasattr(app.consumer, "highwater") else None
            if hw is not None:
                LAG.labels(msg.topic, str(msg.partition)).set(max(0, hw - msg.offset - 1))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, **kw: Any) -> None:
        revoked = args[0] if args else kw.get("revoked", set())
        gone = {tp.partition for tp in revoked if tp.topic == topics.raw}
        rt.assigned -= gone
        rt.forget(gone)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, *args: Any, **kw: Any) -> None:
        assigned = args[0] if args else kw.get("assigned", set())
        rt.assigned = {tp.partition for tp in assigned if tp.topic == topics.raw}

    @app.task  # type: ignore[untyped-decorator]
    async def broadcast() -> None:
        await _load_broadcast(rt)

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def tick() -> None:
        now = now_us()
        for proc in list(rt.processors.values()):
            out = proc.tick(now)
            if out:
                rt.emit(out)
        OPEN_WINDOWS.set(sum(p.windows.open_windows() for p in rt.processors.values()))

    @app.timer(cfg.checkpoint_interval_s)  # type: ignore[untyped-decorator]
    async def checkpoint() -> None:
        await rt.checkpoint(app)

    state = {"t": time.monotonic(), "n": 0}

    @app.timer(cfg.progress_interval_s)  # type: ignore[untyped-decorator]
    async def progress() -> None:
        now = time.monotonic()
        n = rt.readings_in
        rate = (n - state["n"]) / max(1e-9, now - state["t"])
        state.update(t=now, n=n)
        log.info(
            "progress",
            extra={
                "kv": {
                    "readings_in": n,
                    "rate_per_s": round(rate),
                    "partitions": sorted(rt.processors),
                    "tags": len(rt.shared.rules),
                    "loaded": rt.loaded.is_set(),
                }
            },
        )

    return app, rt


def run_worker(settings: Settings, cfg: StreamsConfig) -> None:
    """Run until SIGINT/SIGTERM. Creates missing contract topics first (retrying while the broker
    is unreachable)."""
    metrics_port = cfg.metrics_port if cfg.metrics_port is not None else settings.metrics_port
    while True:
        try:
            ensure_contract_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix, settings.partitions))
            break
        except ConnectionError as exc:
            log.warning("broker unreachable; retrying", extra={"kv": {"error": str(exc)}})
            time.sleep(5.0)
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1")
    app, rt = build_app(settings, cfg)
    rt.producer = make_producer(settings.kafka_bootstrap, client_id=f"{rt.app_id}-out")
    log.info(
        "streams worker starting",
        extra={
            "kv": {**settings.describe(), "app_id": rt.app_id, "metrics_port": metrics_port, "web_port": cfg.web_port}
        },
    )
    from faust.worker import Worker

    worker = Worker(app, loglevel="WARNING", quiet=True, override_logging=False, redirect_stdouts=False)
    worker.execute_from_commandline()
