"""Fan-out of live events to SSE clients, with grade withholding per tier. Pure asyncio, no I/O.

One Kafka bridge publishes into one :class:`Hub`; every connected client is a :class:`Subscriber`
with a bounded queue. Contract:

* an event is filtered per tier *before* it is queued: items on a tag the tier may not read are
  removed (an event left empty is not sent at all); a tag whose grade is not known yet counts as
  core-grade (only the owner tier sees it) until the grade book learns it;
* each event is serialized at most once per tier, however many clients receive it;
* a slow client never blocks the bridge or other clients: when its queue is full the oldest
  queued event is dropped and counted (``dropped``); the client sees a gap, not a stall;
* ``close()`` wakes every subscriber with an end marker (server shutdown ends streams cleanly).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plantstream.access import Tier
from plantstream.monitor.auth import grade_visible


class GradeBook:
    """(plant, tag) -> grade, from the tags topic (fresh) and the tag registry (periodic reload)."""

    def __init__(self) -> None:
        self._topic: dict[tuple[str, str], str] = {}
        self._db: dict[tuple[str, str], str] = {}

    def learn(self, plant: str, tag: str, grade: str) -> None:
        self._topic[(plant, tag)] = grade

    def load_registry(self, grades: Mapping[tuple[str, str], str]) -> None:
        self._db = dict(grades)

    def grade(self, plant: str, tag: str) -> str | None:
        key = (plant, tag)
        return self._topic.get(key) or self._db.get(key)

    def __len__(self) -> int:
        return len(set(self._topic) | set(self._db))


@dataclass(slots=True)
class Event:
    """``kind`` is the SSE event name; ``items`` are JSON-ready maps, each optionally with a ``tag``.

    ``single``: the event is one record (deviation, lot) sent as the map itself; otherwise the
    items are sent as ``{"items": [...]}``."""

    kind: str
    plant: str
    items: list[dict[str, Any]]
    single: bool = False
    _wire: dict[Tier, bytes | None] = field(default_factory=dict)

    def wire(self, tier: Tier, grades: GradeBook, seq: int) -> bytes | None:
        if tier not in self._wire:
            keep = [
                it
                for it in self.items
                if it.get("tag") is None or grade_visible(tier, grades.grade(self.plant, str(it["tag"])))
            ]
            if not keep:
                self._wire[tier] = None
            else:
                body = keep[0] if self.single else {"items": keep}
                data = json.dumps(body, separators=(",", ":"), allow_nan=False)
                self._wire[tier] = f"event: {self.kind}\nid: {seq}\ndata: {data}\n\n".encode()
        return self._wire[tier]


END = b""  # queued to end a subscriber's stream


class Subscriber:
    def __init__(
        self, tier: Tier, plants: Iterable[str] | None, kinds: Iterable[str] | None, maxsize: int, key: str = ""
    ) -> None:
        self.tier = tier
        self.key = key  # the token's key, for the per-token client cap
        self.plants = frozenset(plants) if plants else None
        self.kinds = frozenset(kinds) if kinds else None
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        self.dropped = 0

    def wants(self, ev: Event) -> bool:
        return (self.plants is None or ev.plant in self.plants) and (self.kinds is None or ev.kind in self.kinds)

    def offer(self, data: bytes) -> bool:
        """Queue ``data``; drop the oldest queued event if full. Returns False when one was dropped."""
        try:
            self.queue.put_nowait(data)
            return True
        except asyncio.QueueFull:
            self.queue.get_nowait()  # one event loop: a full queue cannot be drained meanwhile
            self.queue.put_nowait(data)
            self.dropped += 1
            return False


class Hub:
    def __init__(self, grades: GradeBook | None = None, queue_size: int = 2000, metrics: Any = None) -> None:
        self.grades = grades or GradeBook()
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.metrics = metrics
        self.seq = 0
        self.published = 0
        self.closed = False

    def subscribe(
        self, tier: Tier, plants: Iterable[str] | None = None, kinds: Iterable[str] | None = None, key: str = ""
    ) -> Subscriber:
        sub = Subscriber(tier, plants, kinds, self.queue_size, key)
        self.subscribers.add(sub)
        if self.metrics is not None:
            self.metrics.clients.set(len(self.subscribers))
        return sub

    def clients_of(self, key: str) -> int:
        return sum(1 for s in self.subscribers if s.key == key)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if self.metrics is not None:
            self.metrics.clients.set(len(self.subscribers))

    def publish(self, events: Iterable[Event]) -> int:
        """Deliver events to every interested subscriber; returns how many deliveries were queued."""
        delivered = 0
        for ev in events:
            self.seq += 1
            self.published += 1
            for sub in self.subscribers:
                if not sub.wants(ev):
                    continue
                data = ev.wire(sub.tier, self.grades, self.seq)
                if data is None:
                    continue
                ok = sub.offer(data)
                delivered += 1
                if self.metrics is not None:
                    self.metrics.fanned_out.labels(ev.kind).inc()
                    if not ok:
                        self.metrics.dropped.inc()
        return delivered

    def close(self) -> None:
        self.closed = True
        for sub in list(self.subscribers):
            sub.offer(END)


def finite(v: Any) -> Any:
    """JSON has no NaN/Infinity: such numbers become null; bytes become text; containers recurse."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [finite(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v
