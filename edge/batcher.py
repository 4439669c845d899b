"""Group readings per plant/equipment/source into ReadingBatch messages.

Sources hand over plain tuples (:data:`Sample`) instead of Reading objects because per-reading
object churn, not I/O, bounds a Python edge agent's throughput. Sequence numbers are assigned
here, in arrival order, from the buffer's per-source counter; the counter is persisted in the
same transaction that stores the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from plantstream.contract import Origin, Value
from plantstream.edge.buffer import Buffer, Entry
from plantstream.producers.codec import ReadingBatch, encode_readings

log = logging.getLogger(__name__)

# (equipment, tag, ts_us, value, unit, quality, status_code, server_ts_us, reason)
# reason: why quality was downgraded at the edge (non-finite value, timestamp outside the window).
Sample = tuple[str, str, int, Value, str, int, int | None, int | None, str | None]

# Upper bounds of a reading's and a batch's msgpack size (see codec.encode_readings): per reading
# at most 5 bytes for each of the tag and unit codes, 9 for ts, value, seq and server_ts, 5 for
# status, 1 for quality and lot, 5 + length for each string; the tag and unit are counted with
# every reading although the batch stores each once. A batch adds its header, plant, equipment,
# source and 16 column headers. Counting bytes exactly would cost an encode per reading.
READING_FIXED = 80
BATCH_FIXED = 512


def text_bytes(s: str) -> int:
    # UTF-8 takes at most 4 bytes a code point; ASCII (the common case) exactly one.
    return len(s) if s.isascii() else 4 * len(s)


def reading_bytes(s: Sample) -> int:
    """Upper bound of what ``s`` adds to an encoded batch."""
    v = s[3]
    n = READING_FIXED + text_bytes(s[1]) + text_bytes(s[4])
    if type(v) is str:
        n += text_bytes(v)
    r = s[8]
    if r is not None:
        n += text_bytes(r)
    return n


def batch_overhead(plant: str, equipment: str, source: str) -> int:
    return BATCH_FIXED + 2 * (text_bytes(plant) + text_bytes(equipment)) + text_bytes(source)


@dataclass(slots=True)
class _Open:
    batch: ReadingBatch
    opened: float
    bytes: int


@dataclass(slots=True, frozen=True)
class Rejected:
    """A reading the encoder refused after all (a decoder let it through): dead-lettered alone."""

    source: str
    payload: bytes
    reason: str


class Batcher:
    def __init__(
        self,
        plant: str,
        topic: str,
        buffer: Buffer,
        max_readings: int = 500,
        max_delay_s: float = 0.05,
        max_bytes: int = 1_000_000,
    ) -> None:
        self.plant = plant
        self.topic = topic
        self.buffer = buffer
        self.max_readings = max_readings
        self.max_delay_s = max_delay_s
        # Encoded value size a batch stays under (estimated from above), so every entry fits the
        # producer's and the broker's message.max.bytes.
        self.max_bytes = max_bytes
        self._open: dict[tuple[str, str], _Open] = {}
        self._full: list[ReadingBatch] = []
        self.rejected: list[Rejected] = []

    def add(self, source: str, origin: Origin, samples: Sequence[Sample]) -> int:
        """Queue samples (seq assigned now, in order); returns how many were added."""
        if not samples:
            return 0
        seq = self.buffer.reserve(source, len(samples))
        n = 0
        open_ = self._open
        max_bytes = self.max_bytes
        for sample in samples:
            equipment, tag, ts_us, value, unit, quality, status, server_ts, reason = sample
            key = (source, equipment)
            size = reading_bytes(sample)
            ob = open_.get(key)
            if ob is not None and ob.bytes + size > max_bytes:
                self._full.append(ob.batch)  # cut by bytes: this reading opens the next batch
                del open_[key]
                ob = None
            if ob is None:
                ob = open_[key] = _Open(
                    ReadingBatch(self.plant, equipment, origin, source),
                    time.monotonic(),
                    batch_overhead(self.plant, equipment, source),
                )
            ob.bytes += size
            b = ob.batch
            # Every column of contract.READING_COLUMNS, spelled out: this is the agent's hottest
            # loop (producers/tests/test_reading_columns.py holds it to the declaration).
            b.tag.append(tag)
            b.unit.append(unit)
            b.ts_us.append(ts_us)
            b.value.append(value)
            b.quality.append(quality)
            b.status_code.append(status)
            b.seq.append(seq)
            seq += 1
            b.server_ts_us.append(server_ts)
            b.lot.append(None)
            b.reason.append(reason)
            n += 1
            if len(b.ts_us) >= self.max_readings or ob.bytes >= max_bytes:
                self._full.append(b)
                del open_[key]
        return n

    @property
    def pending(self) -> int:
        return sum(len(o.batch) for o in self._open.values()) + sum(len(b) for b in self._full)

    def next_due_in(self) -> float | None:
        """Seconds until the oldest open batch is due (0 if something is ready); None if empty."""
        if self._full:
            return 0.0
        if not self._open:
            return None
        oldest = min(o.opened for o in self._open.values())
        return max(0.0, oldest + self.max_delay_s - time.monotonic())

    def take(self, everything: bool = False) -> list[Entry]:
        """Encoded entries for full batches and those older than max_delay (all with everything)."""
        ready = self._full
        self._full = []
        now = time.monotonic()
        for key in [k for k, o in self._open.items() if everything or now - o.opened >= self.max_delay_s]:
            ready.append(self._open.pop(key).batch)
        out: list[Entry] = []
        for b in ready:
            try:
                value = encode_readings(b)
            except (ValueError, TypeError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
                out.extend(self._split(b, exc))
                continue
            out.append(Entry(self.topic, b.key.encode(), value, b.source, len(b)))
        return out

    def _split(self, b: ReadingBatch, exc: Exception) -> list[Entry]:
        """A batch the encoder refused: every reading that encodes alone is kept (one entry), the
        others go to ``rejected``. The decoders vet samples, so this is a last line of defence:
        an exception here would lose a batch whose sources are being acknowledged."""
        log.error(
            "a reading passed the decoders but cannot be encoded; dead-lettering it alone",
            extra={"kv": {"source": b.source, "equipment": b.equipment, "error": repr(exc)}},
        )
        keep = ReadingBatch(b.plant, b.equipment, b.origin, b.source)
        for r in b.readings():
            try:
                encode_readings([r])
            except (ValueError, TypeError, OverflowError) as e:
                payload = repr(r).encode("utf-8", "backslashreplace")
                self.rejected.append(Rejected(b.source, payload, f"reading {r.tag!r} cannot be encoded: {e}"))
                continue
            keep.append(r)
        if not len(keep):
            return []
        return [Entry(self.topic, keep.key.encode(), encode_readings(keep), keep.source, len(keep))]
