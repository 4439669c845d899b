"""The shared connection loop of session connectors (edge.source.Reconnect), pure: no server.

The client, connect, session and close are plain callables here; what is tested is the loop's
own contract: backoff doubles and caps (jitter only shortens), a stop ends it promptly, a failing
session is retried with a new client, and nothing but cancellation leaves ``run()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from plantstream.contract import Origin
from plantstream.edge.source import Inbox, Reconnect, Source, jittered, next_backoff


@dataclass(frozen=True)
class Limits:
    min_s: float
    max_s: float


class Dummy(Source):  # type: ignore[misc]  # Source is Any to mypy: editable-install namespace
    origin = Origin.MODBUS

    def __init__(self) -> None:
        super().__init__("dummy", "test", "test://nowhere", Inbox())


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


class Refused(Exception):
    pass


def test_next_backoff_doubles_to_the_cap_and_jitter_only_shortens() -> None:
    lim = Limits(0.5, 30.0)
    seq = [0.5]
    for _ in range(8):
        seq.append(next_backoff(seq[-1], lim))
    assert seq == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert jittered(30.0, 0.1, lambda: 0.0) == 30.0
    assert jittered(30.0, 0.1, lambda: 1.0) == pytest.approx(27.0)
    assert jittered(30.0, 0.0, lambda: 1.0) == 30.0


def test_backoff_grows_and_caps_while_connect_fails() -> None:
    async def body() -> None:
        src = Dummy()
        opened: list[int] = []

        def open_() -> int:
            opened.append(len(opened))
            return len(opened)

        async def connect(client: int) -> None:
            raise Refused(f"refused #{client}")

        async def session(client: int) -> None:
            raise AssertionError("never connected, so no session")

        async def close(client: int) -> None:
            pass

        loop = Reconnect(
            src,
            "test",
            Limits(0.002, 0.016),
            open=open_,
            connect=connect,
            session=session,
            close=close,
            jitter=0.0,
        )
        task = asyncio.create_task(loop.run())
        await until(lambda: loop.failures >= 7)
        await src.stop()
        await asyncio.wait_for(task, 2)
        assert loop.waits[:6] == [0.002, 0.004, 0.008, 0.016, 0.016, 0.016]
        assert len(opened) == loop.attempts, "a new client each attempt"
        assert src.status.reconnects == 0
        assert src.status.last_error.startswith("Refused: refused #")
        assert not src.status.connected

    run(body())


def test_jittered_waits_stay_under_the_cap() -> None:
    async def body() -> None:
        src = Dummy()

        async def connect(client: object) -> None:
            raise Refused("no")

        async def noop(client: object) -> None:
            pass

        loop = Reconnect(src, "test", Limits(0.001, 0.004), open=object, connect=connect, session=noop, close=noop)
        task = asyncio.create_task(loop.run())
        await until(lambda: loop.failures >= 8)
        await src.stop()
        await asyncio.wait_for(task, 2)
        assert all(0.0009 <= w <= 0.004 for w in loop.waits), loop.waits
        assert loop.waits[-1] >= 0.004 * 0.9

    run(body())


def test_stop_during_a_long_backoff_ends_run_promptly() -> None:
    async def body() -> None:
        src = Dummy()

        async def connect(client: object) -> None:
            raise Refused("no")

        async def noop(client: object) -> None:
            pass

        loop = Reconnect(src, "test", Limits(60.0, 60.0), open=object, connect=connect, session=noop, close=noop)
        task = asyncio.create_task(loop.run())
        await until(lambda: loop.failures == 1)
        t0 = time.monotonic()
        await src.stop()
        await asyncio.wait_for(task, 2)
        assert time.monotonic() - t0 < 1.0
        assert loop.attempts == 1

    run(body())


def test_failing_session_is_retried_with_a_new_client_and_marks_each_loss() -> None:
    async def body() -> None:
        src = Dummy()
        events: list[str] = []
        clients = iter(range(100))

        async def connect(client: int) -> None:
            events.append(f"connect {client}")

        async def session(client: int) -> None:
            events.append(f"session {client}")
            if client < 3:
                raise ConnectionError(f"lost {client}")
            await src._stop.wait()  # the last one stays up until the stop

        async def close(client: int) -> None:
            events.append(f"close {client}")

        loop = Reconnect(
            src,
            "test",
            Limits(0.001, 10.0),
            open=lambda: next(clients),
            connect=connect,
            session=session,
            close=close,
            on_lost=lambda: events.append("lost"),
            jitter=0.0,
        )
        task = asyncio.create_task(loop.run())
        await until(lambda: "session 3" in events)
        await src.stop()
        await asyncio.wait_for(task, 2)
        assert events == [
            *[e for c in range(3) for e in (f"connect {c}", f"session {c}", "lost", f"close {c}")],
            "connect 3",
            "session 3",
            "close 3",  # stopped: no loss to mark
        ]
        assert src.status.reconnects == 3
        assert loop.failures == 3
        # Every session was up, so the backoff started over each time instead of doubling.
        assert loop.waits == [0.001, 0.001, 0.001, 0.001]

    run(body())


def test_exceptions_of_every_callable_never_escape_but_cancellation_does() -> None:
    async def body() -> None:
        src = Dummy()
        kinds = iter([ValueError, RuntimeError, KeyError, OSError, TimeoutError])
        calls = {"open": 0, "close": 0, "lost": 0}

        def open_() -> int:
            calls["open"] += 1
            if calls["open"] == 1:
                raise TypeError("cannot even build a client")
            return calls["open"]

        async def connect(client: int) -> None:
            pass

        async def session(client: int) -> None:
            kind = next(kinds, None)
            if kind is None:
                await asyncio.Event().wait()  # up until cancelled
            raise kind("session body failed")  # type: ignore[misc]

        async def close(client: int) -> None:
            calls["close"] += 1
            raise RuntimeError("close failed too")

        def lost() -> None:
            calls["lost"] += 1
            raise ZeroDivisionError("so did the gap marker")

        loop = Reconnect(
            src,
            "test",
            Limits(0.001, 0.002),
            open=open_,
            connect=connect,
            session=session,
            close=close,
            on_lost=lost,
        )
        task = asyncio.create_task(loop.run())
        await until(lambda: calls["open"] == 7)  # the first failed, five sessions failed, the last is up
        assert not task.done(), "no exception ended the loop"
        assert loop.failures == 6
        assert calls["lost"] == 5 and calls["close"] == 5
        assert src.status.last_error == "TimeoutError: session body failed"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(body())
