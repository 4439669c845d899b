"""Group readings per plant/equipment/source into ReadingBatch messages.

Sources hand over plain tuples (:data:`Sample`) instead of Reading objects because per-reading
object churn, not I/O, bounds a Python edge agent's throughput. Sequence numbers are assigned
here, in arrival order, from the buffer's per-source counter; the counter is persisted in the
same transaction that stores the batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from plantstream.contract import Origin, Value
from plantstream.edge.buffer import Buffer, Entry
from plantstream.producers.codec import ReadingBatch, encode_readings

# (equipment, tag, ts_us, value, unit, quality, status_code, server_ts_us)
Sample = tuple[str, str, int, Value, str, int, int | None, int | None]


@dataclass(slots=True)
class _Open:
    batch: ReadingBatch
    opened: float


class Batcher:
    def __init__(
        self, plant: str, topic: str, buffer: Buffer, max_readings: int = 500, max_delay_s: float = 0.05
    ) -> None:
        self.plant = plant
        self.topic = topic
        self.buffer = buffer
        self.max_readings = max_readings
        self.max_delay_s = max_delay_s
        self._open: dict[tuple[str, str], _Open] = {}
        self._full: list[ReadingBatch] = []

    def add(self, source: str, origin: Origin, samples: Sequence[Sample]) -> int:
        """Queue samples (seq assigned now, in order); returns how many were added."""
        if not samples:
            return 0
        seq = self.buffer.reserve(source, len(samples))
        n = 0
        open_ = self._open
        for equipment, tag, ts_us, value, unit, quality, status, server_ts in samples:
            key = (source, equipment)
            ob = open_.get(key)
            if ob is None:
                ob = open_[key] = _Open(ReadingBatch(self.plant, equipment, origin, source), time.monotonic())
            b = ob.batch
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
            b.reason.append(None)
            n += 1
            if len(b.ts_us) >= self.max_readings:
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
        return [Entry(self.topic, b.key.encode(), encode_readings(b), b.source, len(b)) for b in ready]
