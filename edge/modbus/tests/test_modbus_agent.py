"""Modbus through the whole edge agent to Kafka: readings arrive with origin modbus and decoded."""

from __future__ import annotations

import asyncio
import struct
import threading
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Message

from plantstream.contract import Origin
from plantstream.edge.modbus.tests.test_modbus_source import server
from plantstream.testing.edge import AgentThread, batches, one_source_agent, read_topic
from plantstream.testing.plugin import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class ServerThread:
    def __init__(self, port: int, hr: list[int]) -> None:
        self.port, self.hr = port, hr
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with server(self.port, self.hr):
            self.ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self.ready.wait(15), "modbus server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive()


def test_agent_delivers_modbus_readings_to_kafka(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> None:
    port = free_port()
    hi, lo = struct.unpack(">HH", struct.pack(">f", 2.5))
    equipment = f"acme/mb{uuid.uuid4().hex[:6]}/area"
    source = {
        "type": "modbus",
        "id": "mb1",
        "host": "127.0.0.1",
        "port": port,
        "poll_interval_ms": 50,
        "tags": [
            {"tag": "mb.speed", "equipment": equipment, "address": 0, "data_type": "float32"},
            {"tag": "mb.count", "equipment": equipment, "address": 2, "data_type": "uint16"},
        ],
    }
    setup = one_source_agent(
        tmp_path,
        kafka_bootstrap,
        topic_prefix,
        source,
        agent_id="mbagent",
        batch={"max_readings": 10, "max_delay_ms": 10},
    )
    cfg, settings, topics = setup.cfg, setup.settings, setup.topics
    with ServerThread(port, [hi, lo, 77]), AgentThread(cfg, settings) as agent:
        wait_until(lambda: agent.agent.readings_in >= 4, 20, "modbus readings in")

        def mine(ms: list[Message]) -> bool:
            return any(b.equipment == equipment and len(b) for b in batches(ms))

        raw = read_topic(kafka_bootstrap, topics.raw, mine, 30)
    got = [b for b in batches(raw) if b.equipment == equipment]
    assert got and all(b.origin is Origin.MODBUS and b.source == "mb1" for b in got)
    values = {(t, v) for b in got for t, v in zip(b.tag, b.value, strict=True)}
    assert ("mb.speed", 2.5) in values and ("mb.count", 77) in values
