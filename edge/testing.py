"""Helpers for edge tests against the real local services (Kafka read-back, agent in a thread)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from plantstream.config import Settings
from plantstream.edge.agent import Agent
from plantstream.edge.config import EdgeConfig
from plantstream.producers.codec import ReadingBatch, decode_readings


def read_topic(
    bootstrap: str, topic: str, done: Callable[[list[Message]], bool], timeout: float = 30.0
) -> list[Message]:
    """All messages of ``topic`` from the beginning (assign(), no consumer group join) until
    ``done(messages)`` or timeout; returns what was read either way."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        parts: list[int] = []
        while time.monotonic() < deadline:
            md = c.list_topics(topic, timeout=5).topics.get(topic)
            if md is not None and md.error is None and md.partitions:
                parts = sorted(md.partitions)
                break
            time.sleep(0.2)
        if not parts:
            return out
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        while time.monotonic() < deadline and not done(out):
            for m in c.consume(500, timeout=0.2):
                err = m.error()
                if err is None:
                    out.append(m)
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(err.str())
        return out
    finally:
        c.close()


def batches(messages: list[Message]) -> list[ReadingBatch]:
    return [decode_readings(m.value() or b"") for m in messages]


def reading_count(messages: list[Message]) -> int:
    return sum(len(b) for b in batches(messages))


class AgentThread:
    """An Agent on its own event loop thread; ``stop()`` is a graceful SIGTERM-like stop."""

    def __init__(self, cfg: EdgeConfig, settings: Settings) -> None:
        self.agent = Agent(cfg, settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name=f"agent-{cfg.agent_id}")

    def _main(self) -> None:
        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            self._started.set()
            await self.agent.run(install_signals=False)

        try:
            asyncio.run(go())
        except BaseException as exc:
            self.error = exc
            self._started.set()

    def start(self) -> AgentThread:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.agent.request_stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("agent did not stop in time")
        if self.error is not None:
            raise AssertionError(f"agent failed: {self.error!r}") from self.error

    def __enter__(self) -> AgentThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
