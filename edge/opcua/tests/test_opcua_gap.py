"""A lost OPC-UA session leaves an explicit gap marker per tag (bad, NaN, BadNoCommunication, a
reason) between the last value before and the first value after the reconnect, so datasets and
charts show the hole instead of interpolating across it. The session is cut with a stoppable
proxy in front of a real asyncua server; no Kafka needed (the source's inbox is read directly)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from plantstream.edge.config import OpcuaSource
from plantstream.edge.opcua.source import OpcuaSourceRunner
from plantstream.edge.source import Inbox
from plantstream.testing.edge import OpcuaServerThread
from plantstream.testing.plugin import free_port
from plantstream.testing.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
NAMES = ["line.speed", "line.temp"]


def test_reconnect_writes_a_gap_marker_per_tag(tmp_path: Any) -> None:
    with OpcuaServerThread(free_port(), NAMES) as server:
        proxy = TcpProxy(server.port, listen_port=free_port()).start()
        cfg = OpcuaSource.model_validate(
            {
                "type": "opcua",
                "id": "plc",
                "endpoint": f"opc.tcp://127.0.0.1:{proxy.port}/ps/",
                "publishing_interval_ms": 50,
                "sampling_interval_ms": 0,
                "request_timeout_s": 1,
                "watchdog_interval_s": 0.3,
                "reconnect": {"min_s": 0.2, "max_s": 0.5},
                "security": {"policy": "None", "mode": "None"},
                "tags": [{"node_id": server.node_id(n), "tag": n, "equipment": "acme/site/line"} for n in NAMES],
            }
        )

        async def main() -> list[tuple[Any, ...]]:
            inbox = Inbox()
            inbox.bind(asyncio.get_running_loop())
            src = OpcuaSourceRunner(cfg, inbox, tmp_path)
            task = asyncio.create_task(src.run())
            got: list[tuple[Any, ...]] = []

            async def until(cond: Any, what: str, timeout: float = 30) -> None:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    for d in inbox.drain():
                        got.extend(d.samples or [])
                    if cond():
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"timed out waiting for {what}; got {got[-5:]}")

            try:
                await until(lambda: src.status.connected, "connected")
                server.write("line.speed", 1.5, int(time.time() * 1e6))
                await until(lambda: any(s[1] == "line.speed" and s[3] == 1.5 for s in got), "a value before")
                proxy.stop()  # the session dies: the watchdog notices
                await until(lambda: src.status.events.get("gap_markers", 0) == len(NAMES), "gap markers")
                proxy.start()
                await until(lambda: src.status.connected, "reconnected")
                server.write("line.speed", 2.5, int(time.time() * 1e6))
                await until(lambda: any(s[1] == "line.speed" and s[3] == 2.5 for s in got), "a value after")
                return got
            finally:
                await src.stop()
                await asyncio.wait_for(task, 10)
                proxy.stop()

        got = asyncio.run(main())
    markers = [s for s in got if s[8] and s[8].startswith("gap:")]
    assert sorted(s[1] for s in markers) == sorted(NAMES)
    for equipment, _tag, _ts, value, _unit, quality, status, _srv, reason in markers:
        assert equipment == "acme/site/line" and math.isnan(value) and quality == 2
        assert status == 0x80310000 and "session lost" in reason
    speed = [s for s in got if s[1] == "line.speed"]
    order = [
        ("before" if s[3] == 1.5 else "gap" if s in markers else "after" if s[3] == 2.5 else "other") for s in speed
    ]
    first_gap, first_after = order.index("gap"), order.index("after")
    assert order.index("before") < first_gap < first_after  # the hole sits between the two values
    gap_ts = next(s[2] for s in markers if s[1] == "line.speed")
    assert max(s[2] for s in speed if s[3] == 1.5) < gap_ts < min(s[2] for s in speed if s[3] == 2.5)


def _historize(server: OpcuaServerThread, name: str) -> None:
    """Let the asyncua test server keep (in-memory) history of ``name``, as a historian-backed
    server does: AccessLevel gains HistoryRead and every change is stored."""
    assert server._loop is not None
    coro = server._server.historize_node_data_change(server._nodes[name], count=0)
    asyncio.run_coroutine_threadsafe(coro, server._loop).result(10)


def _history_len(server: OpcuaServerThread, name: str) -> int:
    """Values the test server's in-memory history holds for ``name``."""
    storage = server._server.iserver.history_manager.storage
    return len(storage._datachanges.get(server._nodes[name].nodeid, []))


def test_reconnect_reads_the_gap_back_where_the_server_keeps_history(tmp_path: Any) -> None:
    """line.speed is historized: the changes written while the session was down arrive after the
    reconnect with their own timestamps, and it gets no gap marker; line.temp is not: it gets one."""
    with OpcuaServerThread(free_port(), NAMES) as server:
        _historize(server, "line.speed")
        proxy = TcpProxy(server.port, listen_port=free_port()).start()
        cfg = OpcuaSource.model_validate(
            {
                "type": "opcua",
                "id": "plc",
                "endpoint": f"opc.tcp://127.0.0.1:{proxy.port}/ps/",
                "publishing_interval_ms": 50,
                "sampling_interval_ms": 0,
                "request_timeout_s": 1,
                "watchdog_interval_s": 0.3,
                "reconnect": {"min_s": 0.2, "max_s": 0.5},
                "security": {"policy": "None", "mode": "None"},
                "tags": [{"node_id": server.node_id(n), "tag": n, "equipment": "acme/site/line"} for n in NAMES],
            }
        )
        missed: dict[int, float] = {}

        async def main() -> tuple[list[tuple[Any, ...]], OpcuaSourceRunner, int]:
            inbox = Inbox()
            inbox.bind(asyncio.get_running_loop())
            src = OpcuaSourceRunner(cfg, inbox, tmp_path)
            task = asyncio.create_task(src.run())
            got: list[tuple[Any, ...]] = []

            async def until(cond: Any, what: str, timeout: float = 30) -> None:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    for d in inbox.drain():
                        got.extend(d.samples or [])
                    if cond():
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"timed out waiting for {what}; got {got[-5:]}")

            try:
                await until(lambda: src.status.connected, "connected")
                before_us = int(time.time() * 1e6)
                server.write("line.speed", 1.5, before_us)
                await until(lambda: any(s[1] == "line.speed" and s[3] == 1.5 for s in got), "a value before")
                proxy.stop()
                await until(lambda: src.status.events.get("gap_markers", 0) == 1, "line.temp's gap marker")
                for i in range(5):  # changes no session sees
                    stored = _history_len(server, "line.speed")
                    ts = int(time.time() * 1e6)
                    missed[ts] = 10.0 + i
                    server.write("line.speed", 10.0 + i, ts)
                    # The server historizes by sampling its own subscription: one change at a time.
                    await until(lambda n=stored: _history_len(server, "line.speed") > n, "the change historized")
                proxy.start()
                await until(lambda: src.status.events.get("history_recovered", 0) > 0, "the gap read back")
                return got, src, before_us
            finally:
                await src.stop()
                await asyncio.wait_for(task, 10)
                proxy.stop()

        got, src, before_us = asyncio.run(main())
    markers = [s for s in got if s[8] and s[8].startswith("gap:")]
    assert [s[1] for s in markers] == ["line.temp"], markers
    speed = {s[2]: s[3] for s in got if s[1] == "line.speed"}
    assert {ts: speed.get(ts) for ts in missed} == missed  # every missed change, at its own time
    assert src.status.events["history_recovered"] >= len(missed)
    assert len(missed) == 5 and min(missed) > before_us
    # The read starts after the last value delivered: 1.5 arrives once, not again from history.
    assert [s[2] for s in got if s[1] == "line.speed" and s[3] == 1.5] == [before_us]
