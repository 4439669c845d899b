"""OPC-UA connector alone (no buffer, no Kafka) against an asyncua server on a free 127.0.0.1 port
(the kit's OpcuaServerThread) with the in-memory kit: data changes arrive as samples with their
source timestamps, a NaN and a month-old timestamp are flagged bad with a reason, a node the server
does not have does not stop the others, OPC-UA hands back no ack tokens, stop() ends run() promptly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from plantstream.edge.config import OpcuaSource
from plantstream.testing.edge import OpcuaServerThread
from plantstream.testing.plugin import free_port
from plantstream.testing.sources import run_source

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EQ = "acme/dui/sm/caster1"


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def config(srv: OpcuaServerThread) -> OpcuaSource:
    return OpcuaSource.model_validate(
        {
            "type": "opcua",
            "id": "plc1",
            "endpoint": srv.endpoint,
            "publishing_interval_ms": 50,
            "sampling_interval_ms": 0,
            "queue_size": 1000,
            "request_timeout_s": 2,
            "watchdog_interval_s": 0.5,
            "reconnect": {"min_s": 0.2, "max_s": 1},
            "tags": [
                {"node_id": srv.node_id("level"), "tag": "level", "equipment": EQ, "unit": "mm", "lo": 0, "hi": 200},
                {"node_id": "ns=2;s=no.such.node", "tag": "ghost", "equipment": EQ},
            ],
        }
    )


def test_data_changes_arrive_flagged_where_suspect_and_stop_is_prompt() -> None:
    now = int(time.time() * 1e6) // 1000 * 1000  # OPC-UA DateTime has 100 ns ticks: keep it exact
    old = now - 30 * 86400 * 10**6

    async def body() -> None:
        with OpcuaServerThread(free_port(), ["level"]) as srv:
            async with run_source(config(srv)) as r:
                # the subscription is live once the initial value (0.0) has arrived
                await r.wait_for(lambda r: len(r.samples("level")) >= 1, timeout=15)
                values = [12.5, 13.5, float("nan"), 14.5]
                for i, v in enumerate(values):
                    await asyncio.to_thread(srv.write, "level", v, now + i * 1000)
                await asyncio.to_thread(srv.write, "level", 15.5, old)
                await r.wait_for(lambda r: any(s[2] == old for s in r.samples("level")), timeout=10)
                by_ts = {s[2]: s for s in r.samples("level")}
                for i, v in enumerate(values):
                    s = by_ts[now + i * 1000]
                    assert s[0] == EQ and s[4] == "mm", s
                    if v == v:
                        assert (s[3], s[5]) == (v, 0), s
                    else:
                        assert s[5] == 2 and "not finite" in (s[8] or ""), s
                stale = by_ts[old]
                assert stale[3] == 15.5 and stale[5] == 2 and "window" in (stale[8] or ""), stale
                failing = r.source.status.failing
                assert any("ghost" in k or "no.such.node" in k for k in failing), failing
                assert all(d.ack is None for d in r.deliveries), "OPC-UA has no acknowledgement to hand back"
                assert r.acked == []
                t0 = time.monotonic()
            assert time.monotonic() - t0 < 5, "stop() ends run() promptly"

    run(body())
