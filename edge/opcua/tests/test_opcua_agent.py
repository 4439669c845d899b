"""In-process asyncua server -> edge agent -> real Kafka: every sample exactly, bad status flagged,
an invalid node not stopping the others, and the subscription back after a server restart."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from plantstream.config import Settings
from plantstream.edge.agent import Agent
from plantstream.edge.config import EdgeConfig, dump_dict
from plantstream.producers.codec import decode_tag_meta
from plantstream.producers.topics import Topics
from plantstream.testing.edge import batches, read_topic
from plantstream.testing.plugin import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NS = "urn:plantstream:test"


async def _server(port: int) -> tuple[Server, dict[str, Any]]:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/ps/")
    idx = await server.register_namespace(NS)
    objs = server.nodes.objects
    nodes = {
        "level": await objs.add_variable(ua.NodeId(ua.String("caster.level"), ua.Int16(idx)), "level", 0.0),
        "count": await objs.add_variable(ua.NodeId(ua.String("caster.count"), ua.Int16(idx)), "count", 0),
    }
    await server.start()
    return server, nodes


async def _until(cond: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _dv(
    value: Any,
    ts: datetime,
    status: int = 0,
    server_ts: datetime | None = None,
    vtype: ua.VariantType = ua.VariantType.Double,
) -> ua.DataValue:
    return ua.DataValue(
        Value=ua.Variant(value, vtype) if value is not None else ua.Variant(None),
        StatusCode=ua.StatusCode(ua.UInt32(status)),
        SourceTimestamp=cast(ua.DateTime, ts),
        ServerTimestamp=cast(ua.DateTime, server_ts or ts),
    )


def _us(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _cfg(port: int, tmp_path: Path) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "agent_id": "opcua-test",
            "plant": "steel",
            "sources": [
                {
                    "type": "opcua",
                    "id": "plc1",
                    "endpoint": f"opc.tcp://127.0.0.1:{port}/ps/",
                    "publishing_interval_ms": 50,
                    "sampling_interval_ms": 0,
                    "queue_size": 1000,
                    "monitored_item_batch": 2,
                    "request_timeout_s": 2,
                    "watchdog_interval_s": 0.5,
                    "reconnect": {"min_s": 0.2, "max_s": 1},
                    "tags": [
                        {
                            "node_id": "ns=2;s=caster.level",
                            "tag": "caster.level",
                            "equipment": "acme/dui/sm/caster1",
                            "unit": "mm",
                            "lo": 0,
                            "hi": 200,
                        },
                        {"node_id": "ns=2;s=no.such.node", "tag": "ghost", "equipment": "acme/dui/sm/caster1"},
                        {
                            "node_id": "ns=2;s=caster.count",
                            "tag": "caster.count",
                            "equipment": "acme/dui/sm/caster1",
                            "datatype": "int",
                        },
                    ],
                }
            ],
            "batch": {"max_delay_ms": 20},
            "kafka": {"partitions": 2},
            "buffer": {"path": str(tmp_path / "buf" / "buffer.db"), "synchronous": "normal"},
        }
    )


def test_opcua_subscription_every_sample_bad_status_invalid_node_and_restart(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    port = free_port()
    cfg = _cfg(port, tmp_path)
    settings = Settings.model_validate(
        {
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": topic_prefix,
            "partitions": 2,
            "state_dir": tmp_path / "state",
        }
    )
    topics = Topics(topic_prefix, 2)

    async def main() -> tuple[list[tuple[int, Any, int, int | None, int | None]], list[tuple[int, Any]], int]:
        server, nodes = await _server(port)
        agent = Agent(cfg, settings)
        task = asyncio.create_task(agent.run(install_signals=False))
        src = agent.sources[0]
        try:
            await _until(lambda: src.status.connected and "ghost" in src.status.failing, 20, "subscribed")
            base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
            expected: list[tuple[int, Any, int, int | None, int | None]] = []
            for i in range(60):
                ts = base + timedelta(milliseconds=i)
                if i == 20:  # bad, no value: delivered flagged, never the last good value
                    code = StatusCodes.BadSensorFailure
                    await server.write_attribute_value(nodes["level"].nodeid, _dv(None, ts, code))
                    expected.append((_us(ts), None, 2, code, None))
                elif i == 30:  # uncertain with a value: kept as is, flagged
                    code = StatusCodes.UncertainLastUsableValue
                    await server.write_attribute_value(nodes["level"].nodeid, _dv(7.5, ts, code))
                    expected.append((_us(ts), 7.5, 1, code, None))
                elif i == 40:  # server timestamp differs from the source's: both recorded
                    srv = ts + timedelta(milliseconds=3)
                    await server.write_attribute_value(nodes["level"].nodeid, _dv(float(i // 2), ts, server_ts=srv))
                    expected.append((_us(ts), float(i // 2), 0, None, _us(srv)))
                else:  # pairs of repeated values with new source timestamps must all arrive
                    await server.write_attribute_value(nodes["level"].nodeid, _dv(float(i // 2), ts))
                    expected.append((_us(ts), float(i // 2), 0, None, None))
                await server.write_attribute_value(nodes["count"].nodeid, _dv(i, ts, vtype=ua.VariantType.Int64))
                await asyncio.sleep(0.002)
            first_ts = {e[0] for e in expected}
            raw = await asyncio.to_thread(
                read_topic,
                kafka_bootstrap,
                topics.raw,
                lambda ms: (
                    first_ts
                    <= {t for b in batches(ms) for tag, t in zip(b.tag, b.ts_us, strict=True) if tag == "caster.level"}
                ),
                40,
            )
            got = sorted(
                (s, (t, v, q, sc, st))
                for b in batches(raw)
                for tag, t, v, q, sc, st, s in zip(
                    b.tag, b.ts_us, b.value, b.quality, b.status_code, b.server_ts_us, b.seq, strict=True
                )
                if tag == "caster.level" and t in first_ts
            )
            levels = [
                (t, None if isinstance(v, float) and math.isnan(v) else v, q, sc, st) for _, (t, v, q, sc, st) in got
            ]
            counts = sorted(
                (t, v)
                for b in batches(raw)
                for tag, t, v in zip(b.tag, b.ts_us, b.value, strict=True)
                if tag == "caster.count" and t in first_ts
            )

            # Server restart on the same port: the agent must rebuild session and subscription itself.
            await server.stop()
            await _until(lambda: not src.status.connected, 15, "agent noticed the server is gone")
            server, nodes = await _server(port)
            await _until(lambda: src.status.connected, 20, "agent reconnected")
            after = datetime.now(UTC) + timedelta(seconds=10)
            later = [_us(after + timedelta(milliseconds=i)) for i in range(5)]
            for i in range(5):
                await server.write_attribute_value(
                    nodes["level"].nodeid, _dv(100.0 + i, after + timedelta(milliseconds=i))
                )
            raw2 = await asyncio.to_thread(
                read_topic,
                kafka_bootstrap,
                topics.raw,
                lambda ms: set(later) <= {t for b in batches(ms) for t in b.ts_us},
                30,
            )
            resumed = sorted((t, v) for b in batches(raw2) for t, v in zip(b.ts_us, b.value, strict=True) if t in later)
            assert src.status.reconnects >= 1
            return levels, counts, len(resumed)
        finally:
            agent.request_stop()
            await asyncio.wait_for(task, 20)
            await server.stop()

    levels, counts, resumed = asyncio.run(main())
    # expected order is source order; compare by timestamp order (seq follows arrival)
    assert len(levels) == 60, f"every sample exactly once, got {len(levels)}"
    assert [lv[0] for lv in levels] == sorted(lv[0] for lv in levels), "seq follows source order"
    bad = [lv for lv in levels if lv[2] == 2]
    assert len(bad) == 1 and bad[0][1] is None and bad[0][3] == StatusCodes.BadSensorFailure
    unc = [lv for lv in levels if lv[2] == 1]
    assert unc and unc[0][1] == 7.5 and unc[0][3] == StatusCodes.UncertainLastUsableValue
    good_values = [lv[1] for lv in levels if lv[2] == 0]
    assert good_values == [float(i // 2) for i in range(60) if i not in (20, 30)], "repeated values all delivered"
    srv_ts = next(lv[4] for lv in levels if lv[4] is not None)
    assert srv_ts - levels[40][0] == 3000
    assert [v for _, v in counts] == list(range(60)) and all(isinstance(v, int) for _, v in counts)
    assert resumed == 5

    metas = read_topic(kafka_bootstrap, topics.tags, lambda ms: len(ms) >= 3, 20)
    assert {decode_tag_meta(m.value() or b"").tag for m in metas} == {"caster.level", "ghost", "caster.count"}

    # `plantstream edge status` reads the stopped agent's state: failing node listed.
    cfg_file = tmp_path / "edge.yaml"
    data = dump_dict(cfg)
    data["kafka"]["bootstrap"] = kafka_bootstrap
    cfg_file.write_text(yaml.safe_dump(data))
    res = subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "edge", "status", "--config", str(cfg_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PLANTSTREAM_LOG_FORMAT": "text"},
    )
    assert res.returncode == 0, res.stderr
    assert "failing: ghost" in res.stdout and "BadNodeIdUnknown" in res.stdout, res.stdout


def test_opcua_poll_mode_reads_changes_and_flags_unknown_nodes(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    port = free_port()
    data = dump_dict(_cfg(port, tmp_path))
    data["sources"][0].update({"mode": "poll", "poll_interval_ms": 50})
    cfg = EdgeConfig.model_validate(data)
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )
    topics = Topics(topic_prefix, 2)

    async def main() -> list[tuple[int, Any]]:
        server, nodes = await _server(port)
        agent = Agent(cfg, settings)
        task = asyncio.create_task(agent.run(install_signals=False))
        src = agent.sources[0]
        try:
            await _until(lambda: src.status.connected and "ghost" in src.status.failing, 20, "polling")
            base = datetime.now(UTC) + timedelta(seconds=5)
            want = []
            for i in range(3):
                ts = base + timedelta(milliseconds=i)
                await server.write_attribute_value(nodes["level"].nodeid, _dv(10.0 + i, ts))
                want.append(_us(ts))
                await asyncio.sleep(0.3)  # several polls per value: unchanged polls must not repeat it
            raw = await asyncio.to_thread(
                read_topic,
                kafka_bootstrap,
                topics.raw,
                lambda ms: set(want) <= {t for b in batches(ms) for t in b.ts_us},
                30,
            )
            return sorted((t, v) for b in batches(raw) for t, v in zip(b.ts_us, b.value, strict=True) if t in want)
        finally:
            agent.request_stop()
            await asyncio.wait_for(task, 20)
            await server.stop()

    got = asyncio.run(main())
    assert [v for _, v in got] == [10.0, 11.0, 12.0], "each polled change exactly once"
