"""node-opcua (npm, an independent OPC-UA implementation) as the server: the agent subscribes with
security None and with Basic256Sha256 SignAndEncrypt (server certificate trusted via the rejected
list), as a user, and every value type arrives in Kafka as its own type."""

from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from plantstream.config import Settings
from plantstream.edge.config import EdgeConfig
from plantstream.edge.opcua.pki import create_client_certificate, trust
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, batches, read_topic
from plantstream.testing.plugin import free_port, wait_until

PEERS = Path(__file__).resolve().parents[3] / "tests" / "peers"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(150),
    pytest.mark.skipif(
        shutil.which("node") is None or not (PEERS / "node_modules" / "node-opcua").is_dir(),
        reason="needs node and `npm install` in tests/peers (./dev does it)",
    ),
]

TAGS = {"Temperature": float, "Counter": int, "Running": bool, "Label": str}


def _start_server(port: int, pki: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["node", str(PEERS / "opcua_server.js"), str(port), str(pki)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=PEERS,
    )
    ready = threading.Event()
    lines: list[str] = []

    def watch() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if '"ready"' in line:
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    if not ready.wait(60):
        proc.kill()
        raise AssertionError(f"node-opcua server did not start: {lines[-5:]}")
    return proc


def _cfg(port: int, pki: Path, tmp: Path, agent: str, policy: str, mode: str) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "agent_id": agent,
            "plant": "fiber",
            "sources": [
                {
                    "type": "opcua",
                    "id": f"{agent}-plc",
                    "endpoint": f"opc.tcp://127.0.0.1:{port}/peer",
                    "publishing_interval_ms": 100,
                    "sampling_interval_ms": 100,
                    "request_timeout_s": 5,
                    "reconnect": {"min_s": 0.2, "max_s": 1},
                    "security": {"policy": policy, "mode": mode, "pki_dir": str(pki)},
                    "username": "operator",
                    "password": "s3cret",
                    "tags": [
                        {"node_id": f"ns=2;s={name}", "tag": f"{agent}.{name}", "equipment": "acme/site/line1"}
                        for name in TAGS
                    ],
                }
            ],
            "batch": {"max_delay_ms": 20},
            "kafka": {"partitions": 2},
            "buffer": {"path": str(tmp / agent / "buf.db"), "synchronous": "normal"},
        }
    )


def _check(kafka_bootstrap: str, topic: str, agent: str) -> dict[str, list[Any]]:
    def enough(ms: list[Any]) -> bool:
        got: dict[str, set[Any]] = {}
        for b in batches(ms):
            for t, v in zip(b.tag, b.value, strict=True):
                got.setdefault(t, set()).add(v)
        return len(got.get(f"{agent}.Temperature", ())) >= 5 and all(f"{agent}.{n}" in got for n in TAGS)

    raw = read_topic(kafka_bootstrap, topic, enough, 40)
    out: dict[str, list[Any]] = {}
    for b in batches(raw):
        for t, v, q in zip(b.tag, b.value, b.quality, strict=True):
            if t.startswith(f"{agent}.") and q == 0:
                out.setdefault(t.split(".", 1)[1], []).append(v)
    return out


def test_node_opcua_server_none_and_sign_and_encrypt(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> None:
    port = free_port()
    pki = tmp_path / "pki"
    create_client_certificate(pki)
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )
    topic = Topics(topic_prefix, 2).raw
    server = _start_server(port, tmp_path / "node-pki")
    try:
        results = {}
        with AgentThread(_cfg(port, pki, tmp_path, "plain", "None", "None"), settings) as a:
            src = a.agent.sources[0]
            wait_until(lambda: src.status.connected, 30, "connected without security")
            results["plain"] = _check(kafka_bootstrap, topic, "plain")
            assert not src.status.failing, src.status.failing
        with AgentThread(_cfg(port, pki, tmp_path, "secure", "Basic256Sha256", "SignAndEncrypt"), settings) as a:
            src = a.agent.sources[0]
            rejected = wait_until(lambda: list((pki / "rejected").glob("*.der")), 30, "server certificate rejected")
            assert not src.status.connected
            trust(pki, rejected[0])
            wait_until(lambda: src.status.connected, 30, "connected with SignAndEncrypt after trusting")
            results["secure"] = _check(kafka_bootstrap, topic, "secure")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    for agent, values in results.items():
        for name, typ in TAGS.items():
            assert values.get(name) and all(type(v) is typ for v in values[name]), (agent, name, values.get(name))
        temps = sorted(set(values["Temperature"]))
        # the server steps by 0.5 every 100 ms; sampling may skip a step, never invent a value
        assert len(temps) >= 5 and all((b - a) % 0.5 == 0 for a, b in itertools.pairwise(temps))
        assert values["Label"][0] == "line one" and values["Running"][0] is True
