"""What every plantstream sink is: decoded Kafka records in, committed storage out.

A sink is driven by a runner that owns the Kafka consumer. The runner decodes records, hands
them to ``write`` and calls ``flush``; only when ``flush`` returns does it commit the Kafka
offsets of exactly the records it handed over. That ordering is the whole delivery guarantee:

Failure contract
----------------
* ``write(batch)`` only stages records in memory; it does no I/O that can fail for the
  storage's reasons (it may raise ``ValueError`` for a programming error, never for data).
* ``flush()`` writes everything staged since the last flush in ONE storage transaction and
  returns the dead letters. Either it returns (all staged records are durable, or are dead
  letters) or it raises and NOTHING is committed.
* If ``flush()`` raises ``SinkUnavailable`` (connection lost, server restarting, deadlock), the
  staged records are kept: the runner does not commit offsets, backs off, calls ``connect()``
  and then ``flush()`` again; the retry writes the same batch. A crash at any point instead
  loses only uncommitted offsets, so the records are re-read from Kafka and rewritten; the
  storage writes idempotently (keyed upserts), so nothing is lost and nothing is doubled.
* Poison records (undecodable, or rejected by the storage: type, range, constraint) never
  block the stream: they come back from ``flush()`` as ``DeadLetter`` s (with the reason and
  the topic/partition/offset they came from), the rest of the batch is written, and the runner
  publishes them to the dead-letter topic before committing offsets.
* ``close()`` drops anything staged and not flushed (it was never committed, so it is re-read).
* ``maintain()`` is housekeeping the runner calls every ``maintenance_interval_s`` between
  flushes (partitions, retention, settling): it may raise ``SinkUnavailable`` or anything else;
  the runner logs it and goes on ingesting, and calls it again next interval.
* ``last`` describes the most recent successful ``flush()`` (the runner's metrics and progress).

The generic runner over this protocol is ``plantstream.sinks.runner.SinkRunner``; the storage
implementations live in their folders (``timescaledb/``: PostgreSQL and TimescaleDB).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from plantstream.producers import codec
from plantstream.producers.codec import CodecError
from plantstream.producers.topics import DEADLETTER_ORIGIN_HEADER, DEADLETTER_REASON_HEADER, DEADLETTER_STAGE_HEADER


class SinkUnavailable(ConnectionError):
    """The storage cannot be reached right now; retry the same batch after ``connect()``."""


@dataclass(frozen=True, slots=True)
class RecordOrigin:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded Kafka record. ``payload`` is the codec's object for the topic's kind."""

    origin: RecordOrigin
    kind: str  # readings | aggregates | context | tags | deviations
    payload: Any
    value: bytes  # original bytes, for the dead-letter topic
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes
    key: bytes | None
    reason: str
    origin: RecordOrigin | None


@dataclass(slots=True)
class FlushStats:
    readings: int = 0  # rows offered (written or already present)
    aggregates: int = 0
    other: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    value_conflicts: int = 0  # readings kept aside in reading_conflicts (same key, other value)


@runtime_checkable
class Sink(Protocol):
    last: FlushStats

    def connect(self) -> None:
        """(Re)open the storage connection; raises ``SinkUnavailable`` if it cannot."""

    def write(self, batch: Sequence[Record | DeadLetter]) -> None:
        """Stage records for the next ``flush`` (no I/O); dead letters from decoding come back from it."""

    def flush(self) -> list[DeadLetter]:
        """Commit everything staged in one transaction; see the module's failure contract."""

    def close(self) -> None:
        """Release the connection; staged, unflushed records are dropped."""

    def maintain(self) -> None:
        """Housekeeping between flushes; failures are logged by the runner, never fatal."""


def decode(kind: str, value: bytes | None, origin: RecordOrigin, key: bytes | None = None) -> Record | DeadLetter:
    """Decode one Kafka record of ``kind``; a ``DeadLetter`` with the codec's reason if it cannot be."""
    decoders: dict[str, Callable[[bytes], Any]] = {
        "readings": codec.decode_readings,
        "aggregates": codec.decode_aggregates,
        "context": codec.decode_context,
        "tags": codec.decode_tag_meta,
        "deviations": codec.decode_deviation,
    }
    raw = value if value is not None else b""
    try:
        if value is None:
            raise CodecError("empty record (tombstone)")
        return Record(origin, kind, decoders[kind](value), raw, key)
    except CodecError as exc:
        return DeadLetter(raw, key, f"undecodable: {exc.reason}", origin)


def iter_dead_letters(dead: Sequence[DeadLetter]) -> Iterator[tuple[bytes, bytes | None, dict[str, str]]]:
    """(value, key, headers) for each dead letter, with the contract's headers."""
    for d in dead:
        headers = {DEADLETTER_REASON_HEADER: d.reason, DEADLETTER_STAGE_HEADER: "sink"}
        if d.origin is not None:
            headers[DEADLETTER_ORIGIN_HEADER] = str(d.origin)
        yield d.value, d.key, headers
