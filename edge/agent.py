"""The edge agent: sources -> batcher -> durable buffer -> forwarder -> Kafka, on one asyncio loop.

Guarantees:

* A reading is acknowledged to its source (MQTT PUBACK) only after the buffer committed it.
* Kafka or a source being unreachable never stops the agent: sources reconnect with backoff,
  the buffer keeps growing (to its caps, dropping the oldest), the forwarder retries in order.
* The buffer failing to write (disk full, I/O error) never stops the agent either: nothing is
  acknowledged while appends fail (an MQTT QoS 1 session keeps the messages at the broker), what
  arrived is held in memory (bounded for sources without acknowledgement, which are dropped and
  counted past ``buffer.max_held_readings``), the state is in the status file and metrics, and
  the append is retried with backoff until it succeeds; then everything held is committed once
  and acknowledged.
* SIGTERM/SIGINT: commit what the sources delivered, forward what Kafka accepts within a few
  seconds, leave the rest in the buffer for the next start.
* TagMeta for every configured tag is published (through the buffer) at start; a tag an MQTT or
  Sparkplug source accepts without listing it gets one (the source's defaults: grade, datatype,
  unit unless the reading has one) when it is first seen in a run, ahead of its readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from plantstream.config import Settings
from plantstream.contract import Origin
from plantstream.edge.batcher import Batcher, Sample
from plantstream.edge.buffer import Buffer, Entry, WriteFailure, error_kind, is_storage_error
from plantstream.edge.config import EdgeConfig, MqttSource, SparkplugSource, unlisted_meta
from plantstream.edge.configbase import SourceConfig
from plantstream.edge.forwarder import Forwarder
from plantstream.edge.metrics import EdgeMetrics
from plantstream.edge.registry import SourceContext, connector
from plantstream.edge.source import DeadLetter, Delivery, Inbox, Source
from plantstream.edge.vet import DEFAULT_LIMITS, Limits, batch_max_bytes
from plantstream.log import Throttle
from plantstream.producers.codec import encode_tag_meta
from plantstream.producers.kafka import ensure_topics, make_producer
from plantstream.producers.topics import (
    DEADLETTER_ORIGIN_HEADER,
    DEADLETTER_REASON_HEADER,
    DEADLETTER_STAGE_HEADER,
    Topics,
)

log = logging.getLogger(__name__)


def build_source(
    cfg: SourceConfig,
    agent_id: str,
    inbox: Inbox,
    settings: Settings | None = None,
    limits: Limits = DEFAULT_LIMITS,
    buffer_path: Path | None = None,
) -> Source:
    """The connector for ``cfg``, from the registry (edge/registry.py: each connector folder
    registers its ``type``). State a connector keeps across restarts lives beside ``buffer_path``."""
    ctx = SourceContext(agent_id, inbox, settings or Settings.from_env(), limits, buffer_path)
    return connector(cfg.type).build(cfg, ctx)


def identity(source: str, sample: Sample) -> int:
    """A stable 63-bit key of what a reading says (not when it arrived): equal for a redelivered copy."""
    equipment, tag, ts_us, value, _unit, quality, _status, _srv, _reason = sample
    raw = f"{source}\x1f{equipment}\x1f{tag}\x1f{ts_us}\x1f{value!r}\x1f{quality}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") >> 1


@dataclass
class _Rate:
    t: float
    inn: int
    out: int


class Agent:
    def __init__(
        self,
        cfg: EdgeConfig,
        settings: Settings | None = None,
        producer_factory: Callable[[], Producer] | None = None,
    ) -> None:
        self.cfg = cfg
        self.settings = settings or Settings.from_env()
        self.topics = Topics(cfg.topic_prefix(self.settings), cfg.partitions(self.settings))
        self.bootstrap = cfg.bootstrap(self.settings)
        self.buffer_path = cfg.buffer_path(self.settings)
        self.status_path = cfg.status_path(self.settings)
        # librdkafka prints every failed reconnect to stderr at level 3; the producer's error_cb
        # already reports them once per interval, so keep only critical native logs by default.
        overrides: dict[str, Any] = {"log_level": 2, **cfg.kafka.producer}
        self._producer_factory = producer_factory or (
            lambda: make_producer(self.bootstrap, client_id=f"plantstream-edge-{cfg.agent_id}", **overrides)
        )
        self.inbox = Inbox()
        self.metrics = EdgeMetrics(cfg.agent_id)
        self.limits = Limits.of(cfg)
        self.sources: list[Source] = [
            build_source(s, cfg.agent_id, self.inbox, self.settings, self.limits, self.buffer_path) for s in cfg.sources
        ]
        self._by_id = {s.id: s for s in self.sources}
        self._stop = asyncio.Event()
        self._throttle = Throttle(30.0)
        self.buffer: Buffer | None = None
        self.forwarder: Forwarder | None = None
        self.readings_in = 0
        self.deadletters = 0
        self.started_us = time.time_ns() // 1000
        self._unsaved: list[Entry] = []
        self._unsaved_acks: dict[str, list[Hashable]] = {}
        self._unsaved_recent: list[tuple[str, int]] = []
        # Identity keys in _unsaved_recent: a redelivered copy of a held message is a duplicate too.
        self._unsaved_keys: set[tuple[str, int]] = set()
        # Counts of held deliveries, applied once they are committed.
        self._unsaved_counts: dict[str, list[int]] = {}
        # While appends fail: when to try again, and the next wait (doubling up to _RETRY_MAX_S).
        self._append_retry_at = 0.0
        self._append_backoff = _RETRY_MIN_S
        self.held_dropped: dict[str, int] = {}  # readings dropped at max_held_readings, per source
        # Tags whose TagMeta this run has buffered (the configured ones at start, the others at
        # first sighting), and the sources that may deliver tags they do not list.
        self._meta_tags: set[str] = {m.tag for m in cfg.tag_metas()}
        self._discovering = cfg.discovering_sources()
        self._published: dict[tuple[str, ...], int] = {}
        self.ready = asyncio.Event()  # set once sources run and tag metadata is buffered

    # --- lifecycle -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        self.inbox.bind(loop)
        m = self.metrics
        if self.cfg.metrics_port is not None:
            port = m.serve(self.cfg.metrics_port, self.cfg.metrics_host)
            log.info("metrics at /metrics", extra={"kv": {"port": port}})
        opened = await self._open_buffer()
        if opened is None:
            return  # stopped while waiting for the disk
        buf = self.buffer = opened
        fw = self.forwarder = Forwarder(
            buf,
            self._producer_factory,
            self.cfg.kafka.max_inflight,
            on_delivered=lambda src, n: m.readings_out.labels(self.cfg.agent_id, src).inc(n) if n else None,
        )
        self._buffer_tag_meta()
        topics_task = asyncio.create_task(self._ensure_topics()) if self.cfg.kafka.create_topics else None
        tasks = [asyncio.create_task(self._supervise(s), name=f"source-{s.id}") for s in self.sources]
        depth = buf.depth()
        log.info(
            "edge agent started",
            extra={
                "kv": {
                    "agent": self.cfg.agent_id,
                    "plant": self.cfg.plant,
                    "sources": [s.id for s in self.sources],
                    "kafka": self.bootstrap,
                    "topics": self.topics.prefix,
                    "buffer": str(self.buffer_path),
                    "buffered_readings": depth.readings,
                    "buffered_entries": depth.entries,
                }
            },
        )
        self.ready.set()
        try:
            await self._main_loop(fw, topics_task)
        finally:
            await self._shutdown(tasks, fw)

    async def _open_buffer(self) -> Buffer | None:
        """Open the buffer; on a full disk (or I/O error: opening creates the WAL and shared-memory
        files) wait with backoff instead of exiting, sources not started (an MQTT session keeps
        their messages at the broker), the state in the status file and metrics. None if stopped."""
        delay = _RETRY_MIN_S
        failure: WriteFailure | None = None
        while True:
            try:
                buf = Buffer(
                    self.buffer_path, self.cfg.buffer.max_bytes, self.cfg.buffer.max_age_s, self.cfg.buffer.synchronous
                )
            except sqlite3.Error as exc:
                if not is_storage_error(exc):
                    raise  # e.g. not a database: waiting would not help
                first = failure is None
                if failure is None:
                    failure = WriteFailure(error_kind(exc), str(exc), time.time_ns() // 1000)
                else:
                    failure.kind, failure.error, failure.attempts = error_kind(exc), str(exc), failure.attempts + 1
                n = self._throttle.should("open")
                if first or n >= 0:
                    log.error(
                        "cannot open the buffer (disk full or I/O error); sources are not started, retrying",
                        extra={"kv": {"path": str(self.buffer_path), "error": str(exc), "suppressed": max(n, 0)}},
                    )
                self.metrics.storage_error.labels(self.cfg.agent_id, failure.kind).set(1)
                self._write_status_doc(self._waiting_status(failure))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    self._write_status_doc({**self._waiting_status(failure), "running": False})
                    return None
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            if failure is not None:
                self.metrics.storage_error.labels(self.cfg.agent_id, failure.kind).set(0)
                log.info("buffer opened after waiting for the disk", extra={"kv": {"attempts": failure.attempts}})
            return buf

    def _waiting_status(self, failure: WriteFailure) -> dict[str, Any]:
        """The status file while the buffer cannot be opened."""
        return {
            "agent_id": self.cfg.agent_id,
            "plant": self.cfg.plant,
            "pid": os.getpid(),
            "running": True,
            "started_us": self.started_us,
            "updated_us": time.time_ns() // 1000,
            "metrics_port": self.metrics.port,
            "sources": [{**s.status.to_dict(), "readings_out": 0} for s in self.sources],
            "buffer": {"path": str(self.buffer_path), "storage_error": _storage_error({"open": failure})},
        }

    async def _ensure_topics(self) -> None:
        try:
            await asyncio.to_thread(ensure_topics, self.bootstrap, self.topics.all(), self.topics.partitions, 10.0)
        except Exception as exc:
            # Not fatal: the topics may be managed elsewhere; deliveries retry until they exist.
            log.warning("could not ensure Kafka topics; continuing", extra={"kv": {"error": str(exc)}})

    def _buffer_tag_meta(self) -> None:
        assert self.buffer is not None
        entries = [
            Entry(self.topics.tags, meta.key.encode(), encode_tag_meta(meta), "_meta", 0)
            for meta in self.cfg.tag_metas()
        ]
        if entries:
            try:
                self.buffer.append(entries)
            except sqlite3.Error as exc:
                # A full disk at start: held like readings, the main loop retries the append.
                self._append_failed(exc, len(entries), time.monotonic())
                self._unsaved.extend(entries)

    async def _supervise(self, source: Source) -> None:
        """A source's run() must not end early; if it crashes anyway, restart it."""
        while not self._stop.is_set():
            try:
                await source.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("source crashed; restarting in 1 s", extra={"kv": {"source": source.id}})
                source.status.last_error = "crashed (see log)"
                await asyncio.sleep(1.0)

    # --- the loop ------------------------------------------------------------------------------

    async def _main_loop(self, fw: Forwarder, topics_task: asyncio.Task[None] | None) -> None:
        assert self.buffer is not None
        topic = self.topics.raw
        batcher = self.batcher = Batcher(
            self.cfg.plant,
            topic,
            self.buffer,
            self.cfg.batch.max_readings,
            self.cfg.batch.max_delay_ms / 1000,
            batch_max_bytes(self.cfg),
        )
        now = time.monotonic()
        next_gauges = now
        next_status = now
        next_expire = now + 10
        next_progress = now + self.cfg.progress_interval_s
        rate = _Rate(now, 0, 0)
        # Group commit: a commit costs an fsync whatever it holds; messages that arrive within
        # commit_interval of the previous commit wait (unacknowledged) and share the next one.
        group = self.cfg.buffer.commit_interval_ms / 1000
        last_commit = 0.0
        while not self._stop.is_set():
            due = batcher.next_due_in()
            idle = 0.01 if fw.inflight else 0.1
            await self.inbox.wait(idle if due is None else min(due, idle))
            hold = last_commit + group - time.monotonic()
            if hold > 0:
                await asyncio.sleep(hold)
            last_commit = time.monotonic()
            self._tick(batcher, everything=False)
            if topics_task is None or topics_task.done():
                self._guarded("forward", fw.pump)
            now = time.monotonic()
            if now >= next_gauges:
                next_gauges = now + 1.0
                self._guarded("gauges", self._update_gauges)
            if now >= next_status:
                next_status = now + 2.0
                self._guarded("status", self.write_status)
            if now >= next_expire:
                next_expire = now + 10.0
                self._guarded("expire", self.buffer.expire)
            if now >= next_progress:
                next_progress = now + self.cfg.progress_interval_s
                self._guarded("progress", functools.partial(self._progress, rate, now))

    def _guarded(self, what: str, fn: Callable[[], object]) -> None:
        """Run a step of the loop; the buffer failing (I/O error, disk full) must not end the agent.
        Failed writes are recorded by the buffer itself (reported in status and metrics)."""
        try:
            fn()
        except sqlite3.Error as exc:
            n = self._throttle.should(f"guard:{what}")
            if n >= 0:
                log.error(
                    "buffer operation failed; the agent continues and retries",
                    extra={"kv": {"operation": what, "error": str(exc), "suppressed": n}},
                )

    def _tick(self, batcher: Batcher, everything: bool, drop_ackable: bool = False) -> None:
        """Take what the sources delivered, commit it, then acknowledge it upstream."""
        assert self.buffer is not None
        items = self.inbox.drain()
        acks = self._unsaved_acks
        entries = self._unsaved
        counts = self._unsaved_counts
        recent = self._unsaved_recent
        failing = "append" in self.buffer.failing
        held = self.held_readings(batcher) if failing else 0
        cap = self.cfg.buffer.max_held_readings
        for d in items:
            if d.ack is not None:
                if drop_ackable:
                    continue  # never acknowledged: the broker redelivers it to the next run
                acks.setdefault(d.source, []).append(d.ack)
            elif failing and held >= cap:
                self._drop_unstorable(d)
                continue
            held += len(d.samples) if failing and d.samples else 0
            c = counts.get(d.source)
            if c is None:
                c = counts[d.source] = [0, 0, 0, 0]
            try:
                self._take(d, c, batcher, recent, entries)
            except sqlite3.Error:
                raise  # the buffer itself failing is not this delivery's fault
            except Exception as exc:
                # Nothing on the data path may end the loop (a poison message would crash-loop the
                # agent on every redelivery): the delivery becomes a dead letter and is acknowledged.
                log.exception("delivery could not be processed; dead-lettered", extra={"kv": {"source": d.source}})
                c[2] += 1
                entries.append(self._deadletter_entry(_poison(d, f"internal error: {exc!r}")))
        entries.extend(batcher.take(everything=everything or bool(acks)))
        for rej in batcher.rejected:
            c = counts.setdefault(rej.source, [0, 0, 0, 0])
            c[0] -= 1  # counted in by add(), never stored
            c[2] += 1
            dl = DeadLetter(rej.payload, rej.reason, f"{rej.source}:encoder")
            entries.append(self._deadletter_entry(Delivery(rej.source, Origin.MQTT, None, dl)))
        batcher.rejected.clear()
        if entries or recent:
            self._unsaved = entries
            now = time.monotonic()
            if failing and not everything and now < self._append_retry_at:
                return  # backing off: held (and unacknowledged) until the next attempt
            try:
                self.buffer.append(entries, recent)
            except sqlite3.Error as exc:
                # Disk full or similar: keep the entries, the acks and the counts; retry later.
                self._append_failed(exc, sum(e.count for e in entries), now)
                return
            if failing:
                self._append_recovered(entries, acks)
            self._unsaved = []
            self._unsaved_recent = []
            self._unsaved_keys.clear()
        # Committed (or nothing to store: only duplicates / empty messages): safe to acknowledge.
        self._ack(acks)
        self._unsaved_counts = {}
        agent = self.cfg.agent_id
        m = self.metrics
        for src_id, (n, bad, dead, dup) in counts.items():
            st = self._by_id[src_id].status
            st.readings_in += n
            st.bad_quality += bad
            st.deadletters += dead
            st.duplicates_dropped += dup
            if dup:
                m.duplicates.labels(agent, src_id).inc(dup)
            self.readings_in += n
            self.deadletters += dead
            if n > 0:  # negative when the encoder rejected readings added in an earlier tick
                m.readings_in.labels(agent, src_id).inc(n)
                st.last_reading_us = time.time_ns() // 1000
            if bad:
                m.bad_quality.labels(agent, src_id).inc(bad)

    def _take(
        self, d: Delivery, c: list[int], batcher: Batcher, recent: list[tuple[str, int]], entries: list[Entry]
    ) -> None:
        """One delivery into the batcher (and its dead letter into ``entries``); c: in, bad, dead, dup."""
        samples = d.samples
        if d.identity is not None:
            # A source that redelivers whole messages: a copy of a committed one is dropped
            # (its readings and dead letter are stored already), anything else remembered.
            if d.redelivered and self._seen(d.source, d.identity):
                c[3] += len(samples) if samples else 0
                return
            recent.append((d.source, d.identity))
            self._unsaved_keys.add((d.source, d.identity))
        elif samples and d.ack is not None:
            # No message identity: remember each committed sample, drop copies of them.
            keyed = [(identity(d.source, s), s) for s in samples]
            if d.redelivered:
                fresh = [(k, s) for k, s in keyed if not self._seen(d.source, k)]
                c[3] += len(keyed) - len(fresh)
                keyed = fresh
            samples = [s for _, s in keyed]
            recent.extend((d.source, k) for k, _ in keyed)
            self._unsaved_keys.update((d.source, k) for k, _ in keyed)
        if samples:
            disc = self._discovering.get(d.source)
            if disc is not None:
                self._discover(disc, samples, entries)
            c[0] += batcher.add(d.source, d.origin, samples)
            c[1] += sum(1 for s in samples if s[5])
        if d.deadletter is not None:
            c[2] += 1
            entries.append(self._deadletter_entry(d))

    def _discover(self, src: MqttSource | SparkplugSource, samples: list[Sample], entries: list[Entry]) -> None:
        """TagMeta for tags first seen in this run; appended before the readings' batches, in
        the same commit (held with them if the append fails)."""
        known = self._meta_tags
        for s in samples:
            tag = s[1]
            if tag not in known:
                known.add(tag)
                meta = unlisted_meta(self.cfg.plant, src, tag, s[0], s[4])
                entries.append(Entry(self.topics.tags, meta.key.encode(), encode_tag_meta(meta), "_meta", 0))
                log.debug(
                    "new tag: metadata from the source defaults published",
                    extra={"kv": {"source": src.id, "tag": tag, "equipment": s[0], "grade": str(meta.grade)}},
                )

    def _seen(self, source: str, key: int) -> bool:
        """Committed recently, or held uncommitted (a copy redelivered after a reconnect while the
        buffer could not be written must not be stored a second time)."""
        assert self.buffer is not None
        return self.buffer.seen(source, key) or (source, key) in self._unsaved_keys

    def held_readings(self, batcher: Batcher | None = None) -> int:
        """Readings taken from the sources but not committed (held while appends fail)."""
        b = batcher or getattr(self, "batcher", None)
        return sum(e.count for e in self._unsaved) + (b.pending if b is not None else 0)

    @property
    def held_unacknowledged(self) -> int:
        """Source messages (MQTT QoS 1) waiting for a commit before they are acknowledged."""
        return sum(len(t) for t in self._unsaved_acks.values())

    def _append_failed(self, exc: sqlite3.Error, readings: int, now: float) -> None:
        assert self.buffer is not None
        failure = self.buffer.failing.get("append")
        first = failure is None or failure.attempts == 1
        self._append_retry_at = now + self._append_backoff
        self._append_backoff = min(self._append_backoff * 2, _RETRY_MAX_S)
        n = self._throttle.should("append")
        if first or n >= 0:
            log.error(
                "buffer append failed (disk full or I/O error): sources are not acknowledged, readings are held "
                "in memory and the append is retried with backoff",
                extra={
                    "kv": {
                        "kind": failure.kind if failure else "",
                        "error": str(exc),
                        "path": str(self.buffer_path),
                        "held_readings": readings,
                        "held_unacknowledged": self.held_unacknowledged,
                        "retry_in_s": round(self._append_retry_at - now, 2),
                        "suppressed": max(n, 0),
                    }
                },
            )

    def _append_recovered(self, entries: list[Entry], acks: dict[str, list[Hashable]]) -> None:
        self._append_backoff = _RETRY_MIN_S
        self._append_retry_at = 0.0
        log.info(
            "buffer append works again: held readings committed and acknowledged",
            extra={
                "kv": {
                    "path": str(self.buffer_path),
                    "readings": sum(e.count for e in entries),
                    "acknowledged": sum(len(t) for t in acks.values()),
                    "dropped_while_failing": sum(self.held_dropped.values()),
                }
            },
        )

    def _drop_unstorable(self, d: Delivery) -> None:
        """A delivery nobody can resend (no ack) while the buffer cannot be written and memory is
        at max_held_readings: dropped, counted and logged."""
        n = len(d.samples) if d.samples else 0
        self.held_dropped[d.source] = self.held_dropped.get(d.source, 0) + n
        k = self._throttle.should(f"held_drop:{d.source}")
        if k >= 0:
            log.error(
                "buffer cannot be written and buffer.max_held_readings is reached: readings from a source "
                "without acknowledgement are dropped",
                extra={
                    "kv": {
                        "source": d.source,
                        "dropped_total": self.held_dropped[d.source],
                        "max_held_readings": self.cfg.buffer.max_held_readings,
                        "suppressed": k,
                    }
                },
            )

    def _ack(self, acks: dict[str, list[Hashable]]) -> None:
        self._unsaved_acks = {}
        for src_id, tokens in acks.items():
            src = self._by_id.get(src_id)
            if src is not None:
                src.ack(tokens)

    def _deadletter_entry(self, d: Delivery) -> Entry:
        dl = d.deadletter
        assert dl is not None
        # Headers are bytes; a reason quoting hostile input must not be able to raise here.
        reason = dl.reason[:500].encode("utf-8", "backslashreplace").decode()
        self.metrics.deadletters.labels("edge", self.cfg.agent_id, d.source, reason.split(":")[0][:60]).inc()
        if self._throttle.should(f"dead:{d.source}") >= 0:
            log.warning(
                "malformed payload sent to the dead-letter topic",
                extra={"kv": {"source": d.source, "origin": dl.origin, "reason": reason}},
            )
        headers = [
            (DEADLETTER_REASON_HEADER, reason.encode()),
            (DEADLETTER_STAGE_HEADER, b"edge"),
            (DEADLETTER_ORIGIN_HEADER, dl.origin.encode("utf-8", "replace")),
        ]
        return Entry(self.topics.deadletter, d.source.encode(), dl.payload, d.source, 0, headers)

    async def _shutdown(self, tasks: list[asyncio.Task[None]], fw: Forwarder) -> None:
        log.info("edge agent stopping", extra={"kv": {"agent": self.cfg.agent_id}})
        assert self.buffer is not None
        batcher = self.batcher
        # Commit and acknowledge what arrived while the sources are still connected ...
        self._tick(batcher, everything=True)
        for s in self.sources:
            with contextlib.suppress(Exception):
                await s.stop()
        _done, pending = await asyncio.wait(tasks, timeout=5) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # ... then keep what can no longer be acknowledged out of the buffer (the broker resends it).
        self._tick(batcher, everything=True, drop_ackable=True)
        if self._unsaved:
            log.error(
                "stopping with readings the buffer could not store: those from MQTT QoS 1 were never "
                "acknowledged (the broker resends them to the next run), the others are lost",
                extra={
                    "kv": {
                        "readings": sum(e.count for e in self._unsaved),
                        "error": next(iter(self.buffer.failing.values())).error if self.buffer.failing else "",
                    }
                },
            )
        delivered = await self._drain(fw, 5.0)
        self._update_gauges()
        self.write_status(stopped=True)
        depth = self.buffer.depth()
        with contextlib.suppress(Exception):
            fw.producer.flush(0)
        self.buffer.close()
        log.info(
            "edge agent stopped",
            extra={"kv": {"agent": self.cfg.agent_id, "all_forwarded": delivered, "left_in_buffer": depth.readings}},
        )

    async def _drain(self, fw: Forwarder, timeout_s: float) -> bool:
        assert self.buffer is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fw.pump()
            if not fw.inflight and self.buffer.depth().entries == 0:
                return True
            await asyncio.sleep(0.02)
        fw.producer.poll(0)
        fw.commit_deletes()
        return False

    # --- observability -------------------------------------------------------------------------

    def _update_gauges(self) -> None:
        assert self.buffer is not None
        d = self.buffer.depth()
        m, a = self.metrics, self.cfg.agent_id
        m.buffer_bytes.labels(a).set(d.bytes)
        m.buffer_readings.labels(a).set(d.readings)
        m.buffer_age.labels(a).set(
            max(0.0, (time.time_ns() // 1000 - d.oldest_created_us) / 1e6) if d.oldest_created_us else 0.0
        )
        sync = self._sync_counter
        for reason, n in self.buffer.dropped.items():
            sync(m.dropped.labels(a, reason.removeprefix("dropped_")), ("dropped", reason), n)
        for s in self.sources:
            m.failing_nodes.labels(a, s.id).set(len(s.status.failing))
            m.connected.labels(a, s.id).set(1 if s.status.connected else 0)
            sync(m.reconnects.labels(a, s.id), ("reconnects", s.id), s.status.reconnects)
            for event, n in s.status.events.items():
                sync(m.events.labels(a, s.id, event), ("events", s.id, event), n)
        for op, n in self.buffer.write_failures.items():
            sync(m.write_failures.labels(a, op), ("write_failures", op), n)
        kinds = {f.kind for f in self.buffer.failing.values()}
        for kind in _ERROR_KINDS | kinds:
            m.storage_error.labels(a, kind).set(1 if kind in kinds else 0)
        m.held_readings.labels(a).set(self.held_readings())
        sync(m.dropped.labels(a, "storage_error"), ("dropped", "storage_error"), sum(self.held_dropped.values()))
        if self.forwarder is not None:
            sync(m.kafka_failures.labels(a), ("kafka_failures",), self.forwarder.stats.failures)
            m.refused.labels(a).set(len(self.forwarder.refused_ids))

    def _sync_counter(self, counter: Any, key: tuple[str, ...], total: int) -> None:
        """Advance a Prometheus counter to a running total kept elsewhere."""
        last = self._published.get(key, 0)
        if total > last:
            counter.inc(total - last)
            self._published[key] = total

    def status(self, stopped: bool = False) -> dict[str, Any]:
        assert self.buffer is not None
        d = self.buffer.depth()
        fw = self.forwarder
        out_by_source = fw.stats.per_source if fw else {}
        return {
            "agent_id": self.cfg.agent_id,
            "plant": self.cfg.plant,
            "pid": os.getpid(),
            "running": not stopped,
            "started_us": self.started_us,
            "updated_us": time.time_ns() // 1000,
            "metrics_port": self.metrics.port,
            "sources": [{**s.status.to_dict(), "readings_out": out_by_source.get(s.id, 0)} for s in self.sources],
            "buffer": {
                "path": str(self.buffer_path),
                "entries": d.entries,
                "readings": d.readings,
                "bytes": d.bytes,
                "oldest_created_us": d.oldest_created_us,
                "dropped": dict(self.buffer.dropped),
                "seq": self.buffer.seqs(),
                "storage_error": _storage_error(self.buffer.failing),
                "write_failures": dict(self.buffer.write_failures),
                "held_readings": self.held_readings(),
                "held_unacknowledged": self.held_unacknowledged,
                "dropped_unstored": dict(self.held_dropped),
            },
            "kafka": {
                "bootstrap": self.bootstrap,
                "healthy": fw.healthy if fw else False,
                "inflight": fw.inflight if fw else 0,
                "delivered_readings": fw.stats.delivered_readings if fw else 0,
                "failures": fw.stats.failures if fw else 0,
                # Entries Kafka refused (too large): kept in the buffer, not sent until the next start.
                "refused_entries": len(fw.refused_ids) if fw else 0,
                # Producers replaced because the old one was fenced or fatal (each resumes delivery).
                "producers_replaced": fw.stats.producers_replaced if fw else 0,
                "last_error": fw.stats.last_error if fw else "",
            },
        }

    def write_status(self, stopped: bool = False) -> None:
        self._write_status_doc(self.status(stopped))

    def _write_status_doc(self, doc: dict[str, Any]) -> None:
        text = json.dumps(doc, default=str, indent=1).encode()
        # Padded to whole pages with at least half a page to spare, so that on a full disk the file
        # can still be rewritten in place (the storage error makes it longer).
        data = text + b" " * (-(len(text) + _STATUS_PAGE // 2) % _STATUS_PAGE + _STATUS_PAGE // 2 - 1) + b"\n"
        tmp = self.status_path.with_suffix(".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.status_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) and self._rewrite_status(data):
                return
            if self._throttle.should("status") >= 0:
                log.warning(
                    "cannot write status file", extra={"kv": {"path": str(self.status_path), "error": str(exc)}}
                )

    def _rewrite_status(self, data: bytes) -> bool:
        """Overwrite the status file in the blocks it already has (no new space needed); the
        disk being full is exactly when the status must still be readable. Not atomic: a reader
        may see a torn file for a moment (read_status then reports no status)."""
        try:
            with self.status_path.open("r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if len(data) > size:
                    return False
                f.write(data + b" " * (size - len(data)))
                f.flush()
            return True
        except OSError:
            return False

    def _progress(self, rate: _Rate, now: float) -> None:
        assert self.buffer is not None and self.forwarder is not None
        out = self.forwarder.stats.delivered_readings
        dt = max(1e-6, now - rate.t)
        d = self.buffer.depth()
        log.info(
            "progress",
            extra={
                "kv": {
                    "readings_in": self.readings_in,
                    "readings_out": out,
                    "in_per_s": round((self.readings_in - rate.inn) / dt, 1),
                    "out_per_s": round((out - rate.out) / dt, 1),
                    "buffered_readings": d.readings,
                    "buffered_bytes": d.bytes,
                    "oldest_age_s": round((time.time_ns() // 1000 - d.oldest_created_us) / 1e6, 1)
                    if d.oldest_created_us
                    else 0,
                    "deadletters": self.deadletters,
                    "kafka_ok": self.forwarder.healthy,
                    "failing": {s.id: len(s.status.failing) for s in self.sources if s.status.failing},
                }
            },
        )
        rate.t, rate.inn, rate.out = now, self.readings_in, out


_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 5.0
_STATUS_PAGE = 4096
_ERROR_KINDS = frozenset({"disk_full", "io_error", "cannot_open", "sqlite_error"})


def _storage_error(failing: dict[str, WriteFailure]) -> dict[str, Any] | None:
    """The status file's view of failing buffer writes; None while every write works."""
    if not failing:
        return None
    first = min(failing.values(), key=lambda f: f.since_us)
    main = failing.get("append", first)
    return {
        "state": main.kind,
        "error": main.error,
        "since_us": first.since_us,
        "operations": {op: {"kind": f.kind, "error": f.error, "attempts": f.attempts} for op, f in failing.items()},
        # Appends failing (or no buffer open) is what stops acknowledgement; deletes/expiry
        # failing only delay cleanup.
        "acknowledging": "append" not in failing and "open" not in failing,
    }


def _poison(d: Delivery, reason: str) -> Delivery:
    """A dead letter standing for delivery ``d`` (its original bytes if it had them)."""
    if d.deadletter is not None:
        payload, origin = d.deadletter.payload, d.deadletter.origin
    else:
        payload = repr(d.samples).encode("utf-8", "backslashreplace")[:65536]
        origin = f"{d.source}:agent"
    return Delivery(d.source, d.origin, None, DeadLetter(payload, reason, origin))


def run_agent(cfg: EdgeConfig) -> None:
    """Run an agent as the process's only job (``plantstream edge run``)."""
    # The MQTT network thread and the commit loop share the GIL; with the default 5 ms switch
    # interval the network thread waits behind the loop and the broker's window stalls (measured:
    # 6.3-7.3k -> 8.6k single-reading QoS 1 messages/s). Process-wide, so only here, not in Agent.
    sys.setswitchinterval(0.001)
    asyncio.run(Agent(cfg).run())


def read_status(cfg: EdgeConfig, settings: Settings | None = None) -> dict[str, Any] | None:
    """The status file the agent maintains, with live buffer depth read from the buffer itself."""
    path: Path = cfg.status_path(settings)
    status: dict[str, Any] | None = None
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            status = json.loads(path.read_text())
    bpath = cfg.buffer_path(settings)
    if bpath.exists():
        try:
            buf = Buffer(bpath, readonly=True)
        except sqlite3.Error:
            # A buffer the agent is creating right now (tables not all there yet): the file's view.
            return status
        try:
            d = buf.live_depth()
            live = {
                "entries": d.entries,
                "readings": d.readings,
                "bytes": d.bytes,
                "oldest_created_us": d.oldest_created_us,
                "dropped": dict(buf.dropped),
                "seq": buf.seqs(),
            }
        finally:
            buf.close()
        status = status or {"agent_id": cfg.agent_id, "plant": cfg.plant, "running": False, "sources": []}
        status["buffer"] = {**status.get("buffer", {}), **live}
    return status


__all__ = ["Agent", "Origin", "build_source", "read_status", "run_agent"]
