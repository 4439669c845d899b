"""`plantstream edge browse` against an in-process asyncua server: the written config passes
`edge check` unchanged, and the agent run with it delivers readings of every browsed tag."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import ua
from asyncua.server.server import Server

from plantstream.config import Settings
from plantstream.edge.agent import Agent
from plantstream.edge.config import load_config
from plantstream.producers.topics import Topics
from plantstream.testing.edge import batches, read_topic
from plantstream.testing.plugin import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _server(port: int) -> tuple[Server, dict[str, Any]]:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/browse/")
    idx = await server.register_namespace("urn:plantstream:browse")
    line = await server.nodes.objects.add_object(idx, "Line1")
    press = await line.add_object(idx, "Press4")
    nodes = {
        "force": await press.add_variable(idx, "Force", 1.5),
        "count": await press.add_variable(idx, "Count", 7, varianttype=ua.VariantType.Int32),
        "on": await press.add_variable(idx, "Running", True),
        "label": await press.add_variable(idx, "Label", "die 12"),
        "array": await press.add_variable(idx, "Profile", [1.0, 2.0]),
        "temp": await line.add_variable(idx, "Hall Temp", 21.0),
    }
    await server.start()
    return server, nodes


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "edge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PLANTSTREAM_LOG_FORMAT": "text"},
    )


def test_browse_writes_a_config_the_agent_runs_as_is(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> None:
    port = free_port()
    out = tmp_path / "browsed.yaml"
    filtered = tmp_path / "filtered.yaml"
    endpoint = f"opc.tcp://127.0.0.1:{port}/browse/"
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )

    async def main() -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str], list[Any]]:
        server, nodes = await _server(port)
        try:
            res = await asyncio.to_thread(
                _cli, "browse", endpoint, "--out", str(out), "--plant", "steel", "--equipment-prefix", "acme/duisburg"
            )
            res2 = await asyncio.to_thread(
                _cli, "browse", endpoint, "--name-filter", "^(Force|Count)$", "--depth", "3", "--out", str(filtered)
            )
            if res.returncode != 0:
                return res, res2, []
            agent = Agent(load_config(out), settings)
            task = asyncio.create_task(agent.run(install_signals=False))
            try:
                await asyncio.sleep(0.5)
                await nodes["force"].write_value(2.75)
                await nodes["count"].write_value(ua.Variant(8, ua.VariantType.Int32))
                raw = await asyncio.to_thread(
                    read_topic,
                    kafka_bootstrap,
                    Topics(topic_prefix, 2).raw,
                    lambda ms: {2.75, 8} <= {v for b in batches(ms) for v in b.value},
                    30,
                )
            finally:
                agent.request_stop()
                await asyncio.wait_for(task, 20)
            return res, res2, raw
        finally:
            await server.stop()

    res, res2, raw = asyncio.run(main())
    assert res.returncode == 0, res.stderr
    check = _cli("check", "--config", str(out))
    assert check.returncode == 0, check.stderr
    doc = yaml.safe_load(out.read_text())
    tags = {t["tag"]: t for t in doc["sources"][0]["tags"]}
    assert set(tags) == {
        "Line1.Press4.Force",
        "Line1.Press4.Count",
        "Line1.Press4.Running",
        "Line1.Press4.Label",
        "Line1.Hall_Temp",
    }, "the array is skipped; the Server object is not walked"
    assert tags["Line1.Press4.Force"]["equipment"] == "acme/duisburg/Line1/Press4"
    assert [tags[t]["datatype"] for t in ("Line1.Press4.Force", "Line1.Press4.Count", "Line1.Press4.Running")] == [
        "float",
        "int",
        "bool",
    ]
    rows = {(t, v) for b in batches(raw) for t, v in zip(b.tag, b.value, strict=True)}
    assert {("Line1.Press4.Force", 2.75), ("Line1.Press4.Count", 8), ("Line1.Press4.Label", "die 12")} <= rows
    assert ("Line1.Press4.Running", True) in rows
    assert res2.returncode == 0, res2.stderr
    assert {t["tag"] for t in yaml.safe_load(filtered.read_text())["sources"][0]["tags"]} == {
        "Line1.Press4.Force",
        "Line1.Press4.Count",
    }
