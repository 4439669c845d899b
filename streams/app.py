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
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import GC_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge, start_http_server

from plantstream.config import Settings
from plantstream.contract import ContextKind, now_us
from plantstream.log import Throttle
from plantstream.producers.codec import (
    ReadingBatch,
    encode_context,
    encode_deviation,
)
from plantstream.producers.kafka import (
    aiokafka_kwargs,
    ensure_contract_topics,
    faust_broker,
    faust_credentials,
    make_producer,
)
from plantstream.producers.topics import (
    DEADLETTER_ORIGIN_HEADER,
    DEADLETTER_REASON_HEADER,
    DEADLETTER_STAGE_HEADER,
    Topics,
)
from plantstream.streams.checkpoints import (
    checkpoint_key,
    choose,
    committed_offsets,
    ensure_checkpoint_topic,
    read_checkpoints,
)
from plantstream.streams.checkpoints import (
    checkpoint_topic as checkpoint_topic_name,
)
from plantstream.streams.config import StreamsConfig
from plantstream.streams.logic.output import fit_aggregates, fit_readings
from plantstream.streams.logic.processor import DeadLetter, Output, Processor, SharedContext, decode_context_record

log = logging.getLogger("plantstream.streams")

# The worker's own registry: the sink shares metric names with it (plantstream_consumer_lag,
# plantstream_deadletters_total) with other labels, and both load into one test process.
REGISTRY = CollectorRegistry()
REGISTRY.register(PROCESS_COLLECTOR)  # process_cpu_seconds_total etc., as on the default registry
REGISTRY.register(GC_COLLECTOR)
READINGS_IN = Counter(
    "plantstream_streams_readings_in_total", "Readings consumed from the raw topic", registry=REGISTRY
)
READINGS_OUT = Counter(
    "plantstream_streams_readings_out_total", "Readings produced to the clean topic", registry=REGISTRY
)
DUPLICATES = Counter("plantstream_streams_duplicates_total", "Replayed readings dropped by dedup", registry=REGISTRY)
AGGREGATES = Counter("plantstream_streams_aggregates_total", "Closed windows produced", ["window"], registry=REGISTRY)
DEVIATIONS = Counter("plantstream_streams_deviations_total", "Deviation records produced", ["kind"], registry=REGISTRY)
LOT_TAG_EVENTS = Counter(
    "plantstream_streams_lot_tag_events_total",
    "Lot start/end events derived from lot tags",
    ["kind"],
    registry=REGISTRY,
)
LATE = Counter("plantstream_streams_late_total", "Readings too late for their window", registry=REGISTRY)
CLOCK_REJECTED = Counter(
    "plantstream_streams_clock_rejected_total",
    "Readings whose source time is outside the receiving clock window (kept, flagged BAD, not windowed)",
    registry=REGISTRY,
)
DEADLETTERS = Counter(
    "plantstream_deadletters_total", "Records sent to the dead-letter topic", ["stage", "topic"], registry=REGISTRY
)
LAG = Gauge(
    "plantstream_consumer_lag",
    "Records behind the partition high-water mark",
    ["topic", "partition"],
    registry=REGISTRY,
)
OPEN_WINDOWS = Gauge("plantstream_streams_open_windows", "Open windows over all partitions", registry=REGISTRY)
DELIVERY_FAILURES = Counter(
    "plantstream_streams_delivery_failures_total",
    "Outputs the broker did not accept (after librdkafka's retries)",
    ["topic"],
    registry=REGISTRY,
)
OUTPUT_FAILED = Gauge(
    "plantstream_streams_output_failed",
    "1 once an output was not delivered: the worker is stopping (exit status 3)",
    registry=REGISTRY,
)
OUTPUT_SPLITS = Counter(
    "plantstream_streams_output_splits_total",
    "Extra messages from cutting outputs to max_output_bytes",
    ["topic"],
    registry=REGISTRY,
)
OVERSIZE = Counter(
    "plantstream_streams_oversize_total",
    "Single readings/aggregates larger than max_output_bytes (dead-lettered)",
    registry=REGISTRY,
)

EXIT_OUTPUT_FAILED = 3  # exit status after an undeliverable output (the group rebalances)
HARD_EXIT_AFTER_S = 30.0  # a graceful stop after a lost output that takes longer is cut short


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
    restored: asyncio.Event = field(default_factory=asyncio.Event)  # clear while an assignment is restored
    producer: Any = None
    delivery_failed: int = 0
    readings_in: int = 0
    throttle: Throttle = field(default_factory=lambda: Throttle(30.0))
    # Output delivery tracking: a sequence number per produced message, removed when acknowledged.
    seq: int = 0
    inflight: set[int] = field(default_factory=set)
    checkpointing: bool = False
    last_checkpoint: dict[int, str] = field(default_factory=dict)
    last_offset: dict[int, int] = field(default_factory=dict)  # last raw offset processed per partition
    # Set by the first output failure: nothing is acked after it and on_fatal stops the worker,
    # so the partitions move and are re-processed from the last commit (never a silent stall).
    fatal: str | None = None
    on_fatal: Callable[[str], None] | None = None

    @property
    def checkpoint_topic(self) -> str:
        name: str = checkpoint_topic_name(self.topics.prefix)
        return name

    def processor(self, partition: int) -> Processor:
        proc = self.processors.get(partition)
        if proc is None:
            proc = self.processors[partition] = Processor(self.shared, self.cfg.processor(), partition)
        return proc

    async def restore(self, partitions: set[int]) -> None:
        """Create processors for newly assigned partitions, restored from their checkpoints in
        Kafka (see ``checkpoints``). Runs while Faust holds the partitions paused."""
        new = {p for p in partitions if p not in self.processors}
        if not new:
            return
        s = self.settings
        try:
            found = await read_checkpoints(s.kafka_bootstrap, self.checkpoint_topic, self.app_id, new)
            committed = await asyncio.get_running_loop().run_in_executor(
                None, committed_offsets, s.kafka_bootstrap, self.app_id, self.topics.raw, new
            )
        except Exception as exc:  # broker trouble: start without; the first minute may be partial
            log.warning(
                "checkpoints unavailable; windows rebuild from the committed offset",
                extra={"kv": {"partitions": sorted(new), "error": str(exc)}},
            )
            return
        for p in sorted(new):
            proc = self.processor(p)
            cp = choose(found.get(p, []), committed.get(p))
            if cp is None:
                if p in committed:
                    log.warning(
                        "no checkpoint matches the committed offset; the first minute per tag may be partial",
                        extra={"kv": {"partition": p, "committed": committed[p], "checkpoints": len(found.get(p, []))}},
                    )
                continue
            try:
                dropped = proc.restore(cp, now_us())
                if dropped:
                    log.warning(
                        "checkpoint marks ahead of the clock window dropped (from a far-future reading)",
                        extra={"kv": {"partition": p, "dropped": dropped}},
                    )
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("checkpoint unusable", extra={"kv": {"partition": p, "error": str(exc)}})
                continue
            log.info(
                "checkpoint restored",
                extra={"kv": {"partition": p, "offset": cp.get("offset"), "committed": committed.get(p)}},
            )

    # --- output --------------------------------------------------------------------------------

    def _on_delivery(self, seq: int, err: KafkaError | None, msg: Message) -> None:
        self.inflight.discard(seq)
        if err is not None:
            self._failed(msg.topic() or "?", str(err))

    def _failed(self, topic: str, error: str) -> None:
        """An output is lost for good (librdkafka retried until message.timeout.ms, or refused it
        outright): stop acking and stop the worker; its successor re-processes from the commit."""
        self.delivery_failed += 1
        DELIVERY_FAILURES.labels(topic).inc()
        OUTPUT_FAILED.set(1)
        if self.fatal is None:
            self.fatal = f"output to {topic} not delivered: {error}"
            log.error(
                "output not delivered; no offset is committed after it and the worker stops (exit status 3)",
                extra={"kv": {"topic": topic, "error": error}},
            )
            if self.on_fatal is not None:
                self.on_fatal(self.fatal)
        elif (n := self.throttle.should("delivery")) >= 0:
            log.error("output not delivered", extra={"kv": {"topic": topic, "error": error, "repeats": n}})

    def _send(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None,
        headers: list[tuple[str, bytes | None]] | None = None,
        partition: int | None = None,
    ) -> None:
        self.seq += 1
        self.inflight.add(self.seq)
        kw: dict[str, Any] = {
            "value": value,
            "key": key,
            "headers": headers,
            "on_delivery": partial(self._on_delivery, self.seq),
        }
        if partition is not None:
            kw["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kw)
                break
            except BufferError:
                self.producer.poll(0.05)
            except KafkaException as exc:  # refused before sending (e.g. too large, unknown topic)
                self.inflight.discard(self.seq)  # no delivery report will come for it
                self._failed(topic, str(exc))
                break

    async def delivered(self, upto: int, timeout: float) -> bool:
        """Wait until every message with sequence <= ``upto`` is acknowledged (False on timeout)."""
        deadline = time.monotonic() + timeout
        while any(s <= upto for s in self.inflight):
            if time.monotonic() > deadline:
                return False
            self.producer.poll(0)
            await asyncio.sleep(0.005)
        return True

    def emit(self, out: Output) -> None:
        t = self.topics
        # Lot events first: other workers stamp readings (e.g. of child equipment on other
        # partitions) from the context topic; this worker already applied them locally.
        for ev in out.context:
            self._send(t.context, encode_context(ev), ev.key)
            LOT_TAG_EVENTS.labels(ev.kind.value).inc()
        limit = self.cfg.max_output_bytes
        for batch in _coalesce(out.clean):
            # Coalesced over a take, a catch-up batch can exceed the broker's message size.
            parts, too_big = fit_readings(batch, limit)
            for data, _n in parts:
                self._send(t.clean, data, batch.key)
            if len(parts) > 1:
                OUTPUT_SPLITS.labels("clean").inc(len(parts) - 1)
            for one in too_big:
                self._oversize(t.clean, batch.key, f"{one.tag[0]}@{one.ts_us[0]} seq {one.seq[0]}")
            READINGS_OUT.inc(sum(n for _, n in parts))
        if out.aggregates:
            by_key: dict[str, list[Any]] = {}
            for a in out.aggregates:
                by_key.setdefault(f"{a.plant}/{a.equipment}", []).append(a)
                AGGREGATES.labels(a.window).inc()
            for key, aggs in by_key.items():
                msgs, too_large = fit_aggregates(aggs, limit)
                for data in msgs:
                    self._send(t.aggregates, data, key)
                if len(msgs) > 1:
                    OUTPUT_SPLITS.labels("aggregates").inc(len(msgs) - 1)
                for a in too_large:
                    self._oversize(t.aggregates, key, f"{a.tag} {a.window}@{a.start_us}")
        for dev in out.deviations:
            self._send(t.deviations, encode_deviation(dev), dev.key)
            DEVIATIONS.labels(dev.kind).inc()
        for dl in out.deadletters:
            self.deadletter(dl)
        if out.readings_in:
            READINGS_IN.inc(out.readings_in)
            self.readings_in += out.readings_in
        if out.duplicates:
            DUPLICATES.inc(out.duplicates)
        if out.late:
            LATE.inc(out.late)
        if out.clock_rejected:
            CLOCK_REJECTED.inc(out.clock_rejected)
        self.producer.poll(0)

    def _oversize(self, topic: str, key: str, what: str) -> None:
        """One reading or aggregate that cannot fit a message even alone: dead-lettered (reason
        and identity; its raw record stays at its origin in the raw topic), counted."""
        OVERSIZE.inc()
        reason = f"{topic} output {what} is larger than max_output_bytes={self.cfg.max_output_bytes} on its own"
        self.deadletter(DeadLetter(None, reason, topic, key.encode()))

    def deadletter(self, dl: DeadLetter) -> None:
        headers: list[tuple[str, bytes | None]] = [h for h in dl.headers if not h[0].startswith("plantstream-")]
        value, reason = dl.value, dl.reason
        if value is not None and len(value) > self.cfg.max_output_bytes:
            # The original would be refused too; it stays at its origin, the record says why.
            reason = f"{reason} (original of {len(value)} bytes not copied: above max_output_bytes)"
            value = None
        headers += [
            (DEADLETTER_REASON_HEADER, reason.encode()),
            (DEADLETTER_STAGE_HEADER, b"streams"),
            (DEADLETTER_ORIGIN_HEADER, dl.origin.encode()),
        ]
        self._send(self.topics.deadletter, value, dl.key, headers)
        DEADLETTERS.labels("streams", dl.origin.rsplit("/", 2)[0]).inc()
        if (n := self.throttle.should("deadletter")) >= 0:
            log.warning("record dead-lettered", extra={"kv": {"reason": dl.reason, "origin": dl.origin, "repeats": n}})

    # --- checkpoints ---------------------------------------------------------------------------

    async def checkpoint(self, app: faust.App) -> None:
        """Snapshot every partition, wait until the outputs produced before the snapshot are
        acknowledged (not a flush: production goes on meanwhile), write the checkpoints to Kafka,
        wait for them, and only then ack the raw records below each partition's safe offset."""
        if self.checkpointing or self.delivery_failed:
            return  # a failed output: commit nothing more (a restart re-processes from the last commit)
        self.checkpointing = True
        try:
            snap = [(p, proc, proc.checkpoint()) for p, proc in list(self.processors.items())]
            snap = [x for x in snap if x[2]["offset"] is not None]
            if not snap:
                return
            if not await self.delivered(self.seq, 60.0):
                # Not silent: librdkafka reports each of them as failed by message.timeout.ms at
                # the latest, which stops the worker; until then offsets wait.
                log.warning(
                    "outputs unacknowledged for 60 s; offsets held back", extra={"kv": {"inflight": len(self.inflight)}}
                )
                return
            if self.delivery_failed:
                return
            for p, proc, cp in snap:
                body = json.dumps(cp, separators=(",", ":"))
                if self.processors.get(p) is proc and self.last_checkpoint.get(p) != body:
                    self._send(self.checkpoint_topic, body.encode(), checkpoint_key(self.app_id, p), partition=p)
                    self.last_checkpoint[p] = body
            if not await self.delivered(self.seq, 60.0) or self.delivery_failed:
                return
            for p, proc, cp in snap:
                if self.processors.get(p) is not proc:
                    continue  # revoked meanwhile: its new owner decides
                queue = self.pending.get(p)
                safe = cp["offset"]
                while queue and queue[0].message.offset < safe:
                    app.consumer.ack(queue.popleft().message)
        finally:
            self.checkpointing = False

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.processors.pop(p, None)
            self.pending.pop(p, None)
            self.last_checkpoint.pop(p, None)
            self.last_offset.pop(p, None)


def _coalesce(batches: list[ReadingBatch]) -> list[ReadingBatch]:
    """Concatenate batches of the same plant/equipment/source (in order: per-tag order holds), so
    a worker produces one clean message per stream and take, not one per raw record."""
    out: dict[tuple[str, str, int, str], ReadingBatch] = {}
    for b in batches:
        k = (b.plant, b.equipment, int(b.origin), b.source)
        have = out.get(k)
        if have is None:
            out[k] = b
            continue
        for name in ("tag", "unit", "ts_us", "value", "quality", "status_code", "seq", "server_ts_us", "lot", "reason"):
            getattr(have, name).extend(getattr(b, name))
    return [b for b in out.values() if len(b)]


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
        fetch_max_wait_ms=rt.cfg.fetch_wait_ms,
        **aiokafka_kwargs(s.kafka),
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
    (settings.state_dir / "streams").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=faust_broker(settings.kafka_bootstrap),
        broker_credentials=faust_credentials(settings.kafka),
        store="memory://",
        # Faust writes a small data dir even with the memory store; keep it with the other state,
        # never in whatever directory the worker was started from.
        datadir=str(settings.state_dir / "streams" / "{conf.name}-data"),
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
        # A SIGKILLed worker's partitions move to the others after the session timeout.
        broker_session_timeout=cfg.session_timeout_s,
        broker_heartbeat_interval=cfg.session_timeout_s / 5,
        broker_rebalance_timeout=max(cfg.session_timeout_s, 30.0),
    )
    _set_fetch_wait(cfg.fetch_wait_ms)
    rt = Runtime(settings, cfg, topics, app_id)
    raw = app.topic(topics.raw, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(raw)
    async def process_raw(stream: faust.StreamT[bytes]) -> None:
        # Events in takes (up to batch_max_events, or whatever arrived within batch_within_ms):
        # outputs are produced once per take and stream, not once per raw record.
        takes = cast(Any, stream).noack().noack_take(cfg.batch_max_events, within=cfg.batch_within_ms / 1000)
        async for events in takes:
            if rt.fatal is not None:
                continue  # stopping after a lost output: not acked, so re-read by the next owner
            if not rt.loaded.is_set():
                await rt.loaded.wait()
            if not rt.restored.is_set():
                # Faust may deliver records of a new assignment while the assignment handler is
                # still reading checkpoints: a processor fed before its restore emits partial minutes.
                await rt.restored.wait()
            outs: dict[int, Output] = {}
            now = now_us()
            generation = app.consumer_generation_id
            for event in events:
                msg = event.message
                if msg.generation_id != generation or msg.partition not in rt.assigned:
                    # Fetched before a rebalance (a take can hold it across one): the partition
                    # was re-sought to its committed offset and this record comes again. Feeding
                    # it to the freshly restored processor would advance dedup past the records
                    # before it and leave their windows partial.
                    continue
                prev = rt.last_offset.get(msg.partition)
                if prev is None or msg.offset != prev + 1:
                    log.info(
                        "partition resumed",
                        extra={"kv": {"partition": msg.partition, "offset": msg.offset, "previous": prev}},
                    )
                rt.last_offset[msg.partition] = msg.offset
                origin = f"{msg.topic}/{msg.partition}/{msg.offset}"
                try:
                    out = rt.processor(msg.partition).process_raw(
                        msg.value, origin, msg.offset, now, msg.key, [(k, v) for k, v in (msg.headers or [])]
                    )
                    have = outs.get(msg.partition)
                    if have is None:
                        outs[msg.partition] = out
                    else:
                        have.extend(out)
                except Exception:  # the processor already turns input problems into dead letters
                    log.exception("raw record failed", extra={"kv": {"origin": origin}})
                rt.pending.setdefault(msg.partition, deque()).append(event)
            for out in outs.values():
                try:
                    rt.emit(out)
                except Exception:
                    log.exception("output failed")
            last = events[-1].message
            hw = app.consumer.highwater(last.tp) if hasattr(app.consumer, "highwater") else None
            if hw is not None:
                LAG.labels(last.topic, str(last.partition)).set(max(0, hw - last.offset - 1))

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
        rt.restored.clear()
        try:
            await rt.restore(rt.assigned)
        finally:
            rt.restored.set()

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
                    "output_failed": rt.fatal,
                }
            },
        )

    return app, rt


_FETCH_WAIT_MS = [50]


def _set_fetch_wait(ms: int) -> None:
    """Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer. Brokers that hold a fetch for
    the whole wait even when data arrives (Tansu does) then add up to 1.5 s per hop; Kafka answers
    as soon as data is there, so a short wait costs only idle polls. Patched once, per process."""
    from faust.transport.drivers import aiokafka as drv

    _FETCH_WAIT_MS[0] = ms
    create = drv.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "_plantstream", False):
        return

    def patched(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = _FETCH_WAIT_MS[0]  # read by AIOKafkaConsumer.start()
        return consumer

    patched._plantstream = True  # type: ignore[attr-defined]
    drv.AIOKafkaConsumerThread._create_worker_consumer = patched  # type: ignore[method-assign]


def run_worker(settings: Settings, cfg: StreamsConfig) -> None:
    """Run until SIGINT/SIGTERM. Creates missing contract topics first (retrying while the broker
    is unreachable)."""
    metrics_port = cfg.metrics_port  # `streams worker` resolved it: CLI > environment > file (config.layered)
    while True:
        try:
            ensure_contract_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix, settings.partitions))
            ensure_checkpoint_topic(
                settings.kafka_bootstrap, checkpoint_topic_name(settings.topic_prefix), settings.partitions
            )
            break
        except ConnectionError as exc:
            log.warning("broker unreachable; retrying", extra={"kv": {"error": str(exc)}})
            time.sleep(5.0)
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=REGISTRY)
    app, rt = build_app(settings, cfg)
    overrides: dict[str, Any] = {
        "linger.ms": cfg.linger_ms,
        "message.timeout.ms": int(cfg.output_timeout_s * 1000),
        # Outputs are cut to max_output_bytes; the producer must not refuse what fits.
        "message.max.bytes": max(4_000_000, cfg.max_output_bytes + 100_000),
    }
    rt.producer = make_producer(
        settings.kafka_bootstrap, client_id=f"{rt.app_id}-out", security=settings.kafka, **overrides
    )
    rt.on_fatal = _stop_self
    log.info(
        "streams worker starting",
        extra={
            "kv": {**settings.describe(), "app_id": rt.app_id, "metrics_port": metrics_port, "web_port": cfg.web_port}
        },
    )
    from faust.worker import Worker

    worker = Worker(app, loglevel="WARNING", quiet=True, override_logging=False, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if rt.fatal is not None:
            sys.exit(EXIT_OUTPUT_FAILED)
        raise


def _stop_self(reason: str) -> None:
    """Stop the worker the way SIGTERM does (the consumer leaves the group, so its partitions move
    at once), and exit with EXIT_OUTPUT_FAILED; if that shutdown hangs (broker away), exit hard."""

    def hard_exit() -> None:
        time.sleep(HARD_EXIT_AFTER_S)
        log.error("worker did not stop in time after a lost output; exiting", extra={"kv": {"reason": reason}})
        logging.shutdown()
        os._exit(EXIT_OUTPUT_FAILED)

    threading.Thread(target=hard_exit, name="output-failed-exit", daemon=True).start()
    os.kill(os.getpid(), signal.SIGTERM)
