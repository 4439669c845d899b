"""Shared plumbing: throwaway databases, a raw-topic reading counter, synthetic batches."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from plantstream.contract import Origin
from plantstream.producers.codec import ReadingBatch, decode_readings, encode_readings
from plantstream.producers.kafka import librdkafka_conf


def dsn_for(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


@contextlib.contextmanager
def fresh_database(dsn: str, label: str) -> Iterator[str]:
    """A new empty database next to ``dsn``'s (its DSN), dropped afterwards whatever happens."""
    name = f"psbench_{label}_{uuid.uuid4().hex[:8]}"
    admin = dsn_for(dsn, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_for(dsn, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_name(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname", ""))


def reading_batches(n_batches: int, per_batch: int = 500, units: int = 10, tags_per_unit: int = 20) -> list[bytes]:
    """Encoded ReadingBatch messages as an edge sends them: one unit per batch, floats, all good."""
    out: list[bytes] = []
    ts = time.time_ns() // 1000
    seq = 0
    for b in range(n_batches):
        u = b % units
        batch = ReadingBatch("bench", f"acme/bench/area/line/u{u}", Origin.OPCUA, f"src{u}")
        for i in range(per_batch):
            seq += 1
            batch.tag.append(f"u{u}.t{i % tags_per_unit}")
            batch.unit.append("degC")
            batch.ts_us.append(ts + seq)
            batch.value.append(1500.0 + (seq % 97) * 0.5)
            batch.quality.append(0)
            batch.status_code.append(None)
            batch.seq.append(seq)
            batch.server_ts_us.append(None)
            batch.lot.append(None)
            batch.reason.append(None)
        out.append(encode_readings(batch))
    return out


class RawCounter:
    """Counts readings arriving on a topic (assign(), no group join), stamped with wall time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.events: list[tuple[float, int]] = []
        self.messages = 0
        self.error: str = ""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"count-{topic}", daemon=True)

    def start(self) -> RawCounter:
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.events)

    def _run(self) -> None:
        c = Consumer(
            {
                **librdkafka_conf(self.bootstrap),
                "group.id": f"bench-count-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
            }
        )
        try:
            parts: list[int] = []
            deadline = time.monotonic() + 30
            while not parts and time.monotonic() < deadline and not self._stop.is_set():
                md = c.list_topics(self.topic, timeout=5).topics.get(self.topic)
                if md is not None and md.error is None and md.partitions:
                    parts = sorted(md.partitions)
                else:
                    time.sleep(0.2)
            c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            self._ready.set()
            while not self._stop.is_set():
                for m in c.consume(500, timeout=0.1):
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.error = err.str()
                        continue
                    try:
                        n = len(decode_readings(m.value() or b""))
                    except ValueError:
                        continue
                    self.events.append((time.time(), n))
                    self.messages += 1
        except Exception as exc:  # reported with the metric instead of killing the bench
            self.error = repr(exc)
        finally:
            self._ready.set()
            c.close()
