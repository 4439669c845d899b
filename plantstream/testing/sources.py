"""In-memory test kit for connectors: run a source, collect what it delivers, no buffer or Kafka.

::

    async with run_source(cfg) as run:          # cfg: any registered connector's config model
        got = await run.wait_for(lambda r: len(r.samples("x")) >= 3, timeout=10)
        assert got.samples("x")[0][3] == 1.5

The source is built by its registry factory (as the agent builds it) on the running loop;
deliveries are drained from its :class:`~plantstream.edge.source.Inbox` as they arrive and,
like the agent after a commit, their ack tokens are handed back to ``source.ack``. Leaving the
block stops the source and waits (bounded) for ``run()`` to return; an exception ``run()``
raised (a broken failure contract) fails the test there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plantstream.config import Settings
from plantstream.edge.batcher import Sample
from plantstream.edge.registry import SourceContext, connector
from plantstream.edge.source import DeadLetter, Delivery, Inbox, Source
from plantstream.edge.vet import DEFAULT_LIMITS


@dataclass
class SourceRun:
    source: Source
    inbox: Inbox
    deliveries: list[Delivery] = field(default_factory=list)
    acked: list[Hashable] = field(default_factory=list)

    def collect(self) -> SourceRun:
        """Move what the inbox holds into ``deliveries`` (and acknowledge it, as the agent does)."""
        got = self.inbox.drain()
        self.deliveries += got
        tokens = [d.ack for d in got if d.ack is not None]
        if tokens:
            self.source.ack(tokens)
            self.acked += tokens
        return self

    def samples(self, tag: str | None = None) -> list[Sample]:
        return [s for d in self.deliveries for s in d.samples or () if tag is None or s[1] == tag]

    def deadletters(self) -> list[DeadLetter]:
        return [d.deadletter for d in self.deliveries if d.deadletter is not None]

    async def wait_for(self, done: Callable[[SourceRun], bool], timeout: float = 10.0) -> SourceRun:
        """Collect until ``done(self)``; AssertionError (with what arrived) after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            self.collect()
            if done(self):
                return self
            left = deadline - time.monotonic()
            if left <= 0:
                tail = self.samples()[-10:]
                raise AssertionError(
                    f"condition not met in {timeout} s; {len(self.deliveries)} deliveries, last samples {tail!r}, "
                    f"status {self.source.status.to_dict()!r}"
                )
            await self.inbox.wait(min(left, 0.05))


@contextlib.asynccontextmanager
async def run_source(
    cfg: Any,
    *,
    agent_id: str = "test-agent",
    settings: Settings | None = None,
    buffer_path: Path | None = None,
    stop_timeout: float = 10.0,
) -> AsyncIterator[SourceRun]:
    """Build ``cfg``'s connector (registry factory), run it on this loop until the block ends."""
    inbox = Inbox()
    inbox.bind(asyncio.get_running_loop())
    ctx = SourceContext(agent_id, inbox, settings or Settings.from_env(), DEFAULT_LIMITS, buffer_path)
    source = connector(cfg.type).build(cfg, ctx)
    run = SourceRun(source, inbox)
    task = asyncio.create_task(source.run(), name=f"source-{source.id}")
    try:
        yield run
    finally:
        await source.stop()
        done, _ = await asyncio.wait([task], timeout=stop_timeout)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise AssertionError(f"source {source.id!r} did not stop within {stop_timeout} s of stop()")
        run.collect()
    exc = task.exception()
    if exc is not None:
        raise AssertionError(f"source {source.id!r}: run() raised {exc!r} (the contract says it must not)") from exc
