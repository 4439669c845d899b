"""What every connector shares: the inbox it hands readings to, and its status.

Connectors never touch the buffer or Kafka. They put :class:`Delivery` items into the
:class:`Inbox` (from any thread); the agent loop commits them to the buffer and only then calls
``Source.ack(tokens)`` so the connector can acknowledge upstream (MQTT PUBACK).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from plantstream.contract import Origin
from plantstream.edge.batcher import Sample
from plantstream.log import Throttle

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """A payload the connector could not turn into readings; goes to the dead-letter topic as is."""

    payload: bytes
    reason: str
    origin: str  # "<source id>:<address>"


@dataclass(slots=True)
class Delivery:
    source: str
    origin: Origin
    samples: list[Sample] | None = None
    deadletter: DeadLetter | None = None
    ack: Hashable | None = None  # handed back to Source.ack after the commit
    # The transport says this may be a second copy (MQTT DUP after a reconnect): the agent drops
    # samples it has already committed instead of giving them new sequence numbers.
    redelivered: bool = False
    # Identity of the whole message (see message_identity). When set, this delivery is the only one
    # of its message, and a redelivered copy of a committed message is dropped as a whole; when
    # unset (but acked), the agent falls back to one identity per sample.
    identity: int | None = None


def message_identity(source: str, topic: str, payload: bytes | bytearray) -> int:
    """A stable 63-bit key of a message's topic and bytes: equal for a broker's redelivered copy."""
    h = hashlib.blake2b(f"{source}\x1f{topic}\x00".encode("utf-8", "surrogatepass"), digest_size=8)
    h.update(payload)
    return int.from_bytes(h.digest(), "big") >> 1


class Inbox:
    """Thread-safe, unbounded hand-off into the agent loop.

    A deque append is atomic in CPython; the loop is woken only when it is actually waiting,
    so a busy producer thread does not pay a self-pipe write per message.
    """

    def __init__(self) -> None:
        self._q: collections.deque[Delivery] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._waiting = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def put(self, item: Delivery) -> None:
        self._q.append(item)
        if self._waiting and self._loop is not None and self._event is not None:
            self._waiting = False
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self._loop.call_soon_threadsafe(self._event.set)

    def put_nowait_in_loop(self, item: Delivery) -> None:
        """From the loop's own thread (asyncio sources): no wake-up round trip needed."""
        self._q.append(item)
        if self._waiting and self._event is not None:
            self._waiting = False
            self._event.set()

    def __len__(self) -> int:
        return len(self._q)

    def drain(self, limit: int = 100_000) -> list[Delivery]:
        q = self._q
        out: list[Delivery] = []
        while q and len(out) < limit:
            out.append(q.popleft())
        return out

    async def wait(self, timeout: float) -> None:
        """Return when items are queued or after timeout."""
        if self._q or timeout <= 0:
            return
        assert self._event is not None
        self._event.clear()
        self._waiting = True
        if self._q:  # raced with a put that saw _waiting False
            self._waiting = False
            return
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiting = False


@dataclass
class SourceStatus:
    id: str
    kind: str
    endpoint: str
    connected: bool = False
    reconnects: int = 0
    readings_in: int = 0
    bad_quality: int = 0
    deadletters: int = 0
    duplicates_dropped: int = 0  # redelivered copies of committed readings
    last_error: str = ""
    security: str = ""  # what the secure channel is (OPC-UA: the policy/mode auto chose)
    last_reading_us: int | None = None
    failing: dict[str, str] = field(default_factory=dict)  # node/tag -> why
    events: dict[str, int] = field(default_factory=dict)  # protocol events (e.g. Sparkplug seq gaps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Source:
    """Base for connectors. ``run()`` runs until ``stop()``; it must survive any upstream failure.

    Failure contract (what each method may raise, and what the agent does about it):

    * ``__init__`` (the registry factory, edge/registry.py): may raise
      :class:`plantstream.config.ConfigError` for a config that validated but cannot be used
      (e.g. no MQTT url and an unusable ``PLANTSTREAM_MQTT_URL``). The agent does not start:
      ``edge run`` exits 2 with the message. Nothing else may raise here, and nothing may
      connect: the constructor runs before the buffer is open.
    * ``run()``: connects, delivers, and reconnects with backoff by itself. Upstream failures
      (refused connection, timeout, protocol error, a peer restart) are NOT raised: they are
      recorded in ``status`` (``connected=False``, ``last_error``, ``reconnects``,
      ``failing[tag]``) and, where readings are lost, said in the data (bad-quality readings or a
      gap marker: quality BAD, value NaN, ``reason``; OPC-UA status BadNoCommunication). A value
      the connector cannot convert becomes a :class:`DeadLetter`, never an exception. ``run()``
      returns only after ``stop()``. If it raises anyway (a connector bug) the agent logs it with
      the traceback, sets ``status.last_error = "crashed (see log)"`` and calls ``run()`` again
      after 1 s, for as long as the agent runs; ``asyncio.CancelledError`` is let through (the
      agent cancels ``run()`` only at shutdown, after ``stop()`` did not end it within 5 s).
    * ``stop()``: idempotent, returns promptly; makes ``run()`` return. Exceptions from it are
      suppressed by the agent at shutdown (the buffer is still flushed and closed).
    * ``ack(tokens)``: called on the loop thread after the deliveries carrying ``tokens`` were
      committed to the buffer; must not block or raise (a lost connection makes it a no-op: the
      broker redelivers, and the agent drops the copy it already committed). It is not called
      for deliveries that were never committed (buffer unwritable, or dropped at shutdown).
    * Deliveries: put into the :class:`Inbox` from any thread (``put``) or the loop thread
      (``put_nowait_in_loop``); never block on the agent. A delivery the agent cannot process
      (a connector bug) is dead-lettered (``internal error: ...``) and acknowledged; samples are
      vetted by the connector (:func:`plantstream.edge.vet.vet`) before they are delivered.
    """

    origin: Origin

    def __init__(self, source_id: str, kind: str, endpoint: str, inbox: Inbox) -> None:
        self.id = source_id
        self.inbox = inbox
        self.status = SourceStatus(source_id, kind, endpoint)
        self._stop = asyncio.Event()
        self._stopping = False

    async def run(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        self._stopping = True
        self._stop.set()

    def ack(self, tokens: list[Hashable]) -> None:
        """Called by the agent after the deliveries carrying ``tokens`` were committed."""

    def mark_failing(self, what: str, why: str) -> bool:
        """Record a failing node/tag; True the first time (so the caller logs once)."""
        first = what not in self.status.failing
        self.status.failing[what] = why
        return first

    def clear_failing(self, what: str) -> None:
        self.status.failing.pop(what, None)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; True if stopped."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
            return True
        except TimeoutError:
            return self._stop.is_set()


def now_us() -> int:
    return time.time_ns() // 1000


class BackoffLimits(Protocol):
    """What :class:`Reconnect` reads of a connector's ``reconnect`` setting (configbase.Backoff)."""

    @property
    def min_s(self) -> float: ...

    @property
    def max_s(self) -> float: ...


ClientT = TypeVar("ClientT")

# Each wait is shortened by up to this fraction at random, so agents that lost the same server
# together do not all reconnect in the same instant; shortened only, so max_s stays the cap.
RECONNECT_JITTER = 0.1


def next_backoff(current: float, limits: BackoffLimits) -> float:
    """The wait after another failed attempt: doubled, capped at ``max_s``."""
    return min(current * 2, limits.max_s)


def jittered(delay: float, jitter: float, rng: Callable[[], float] = random.random) -> float:
    """``delay`` shortened by a random fraction of at most ``jitter`` (never longer)."""
    return delay * (1.0 - jitter * rng())


class Reconnect(Generic[ClientT]):
    """The connection loop of a session-based connector (OPC-UA, Modbus TCP), until ``stop()``.

    Each attempt builds a NEW client (``open``, no I/O: nothing is assumed to survive a peer
    restart), connects it (``connect``), then runs ``session(client)`` until the connection is lost (it
    raises) or the source is stopped (it returns; a session must watch the source's stop event).
    ``close(client)`` follows every attempt. When a session that was up ends other than by a stop,
    ``on_lost()`` says so in the data (gap markers). Then it waits and tries again:

    * backoff: ``limits.min_s`` doubling after each failed attempt up to ``limits.max_s``, back to
      ``min_s`` after a session that was up; each wait shortened at random by up to ``jitter``;
    * the wait ends early when the source is stopped, and ``run()`` returns;
    * ``status.reconnects`` counts successful connects after the first attempt; failures (any
      exception of ``open``/``connect``/``session``) are counted in :attr:`failures`, kept in
      ``status.last_error`` and logged as a structured warning (throttled to one per 30 s with
      the number suppressed).

    Raises: nothing but :class:`asyncio.CancelledError` (the source failure contract: run()
    returns only after stop()). Exceptions of ``close`` and ``on_lost`` are suppressed (the
    latter logged with its traceback): they must not end the loop either.
    """

    def __init__(
        self,
        source: Source,
        name: str,
        limits: BackoffLimits,
        *,
        open: Callable[[], ClientT],
        connect: Callable[[ClientT], Awaitable[None]],
        session: Callable[[ClientT], Awaitable[None]],
        close: Callable[[ClientT], Awaitable[None]],
        on_lost: Callable[[], None] | None = None,
        jitter: float = RECONNECT_JITTER,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.source = source
        self.name = name
        self.limits = limits
        self._open, self._connect, self._session, self._close = open, connect, session, close
        self._on_lost = on_lost
        self.jitter = jitter
        self._rng = rng
        self._throttle = Throttle(30.0)
        self.attempts = 0
        self.failures = 0
        self.waits: list[float] = []  # the last few waits (for status and tests)

    async def run(self) -> None:
        src = self.source
        status = src.status
        backoff = self.limits.min_s
        while not src._stop.is_set():
            client: ClientT | None = None
            session_up = False
            try:
                client = self._open()
                await self._connect(client)
                session_up = True
                if self.attempts:
                    status.reconnects += 1
                await self._session(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the contract: nothing leaves run() but a stop
                self.failures += 1
                status.last_error = f"{type(exc).__name__}: {exc}"
                n = self._throttle.should("conn")
                if n >= 0:
                    log.warning(
                        f"{self.name}: connection failed or lost; reconnecting with backoff",
                        extra={
                            "kv": {
                                "source": src.id,
                                "endpoint": status.endpoint,
                                "error": status.last_error,
                                "retry_in_s": round(backoff, 3),
                                "failures": self.failures,
                                "suppressed": n,
                            }
                        },
                    )
            finally:
                status.connected = False
                if session_up and not src._stop.is_set() and self._on_lost is not None:
                    try:
                        self._on_lost()
                    except Exception:
                        log.exception(f"{self.name}: marking the loss failed", extra={"kv": {"source": src.id}})
                if client is not None:
                    with contextlib.suppress(Exception):
                        await self._close(client)
            self.attempts += 1
            if session_up:
                backoff = self.limits.min_s  # it worked for a while: start the backoff over
            wait = jittered(backoff, self.jitter, self._rng)
            self.waits = [*self.waits[-9:], wait]
            if await src.sleep(wait):
                break
            backoff = next_backoff(backoff, self.limits)
