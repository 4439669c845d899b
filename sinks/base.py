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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


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


@runtime_checkable
class Sink(Protocol):
    def connect(self) -> None:
        """(Re)open the storage connection; raises ``SinkUnavailable`` if it cannot."""

    def write(self, batch: Sequence[Record]) -> None:
        """Stage records for the next ``flush`` (no I/O)."""

    def flush(self) -> list[DeadLetter]:
        """Commit everything staged in one transaction; see the module's failure contract."""

    def close(self) -> None:
        """Release the connection; staged, unflushed records are dropped."""
