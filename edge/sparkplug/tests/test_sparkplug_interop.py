"""Eclipse Tahu's sparkplug-client (npm, an independent implementation) -> real Mosquitto -> edge agent
-> real Kafka: exact datatypes, aliases, unknown alias dead-lettered, seq gap -> rebirth -> births
again, deaths mark tags bad."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, cast

import pytest

from plantstream.config import Settings
from plantstream.edge.config import EdgeConfig
from plantstream.producers.topics import Topics
from plantstream.testing.edge import AgentThread, batches, read_topic
from plantstream.testing.plugin import wait_until

PEERS = Path(__file__).resolve().parents[3] / "tests" / "peers"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("node") is None or not (PEERS / "node_modules" / "sparkplug-client").is_dir(),
        reason="needs node and `npm install` in tests/peers (./dev does it)",
    ),
]

NODE_GOOD = {  # name -> value as published by the peer
    "i8": -5,
    "i16": -300,
    "i32": -70000,
    "i64": -5_000_000_000,
    "u8": 250,
    "u16": 65000,
    "u32": 4_000_000_000,
    "u64": 9007199254740991,
    "f": 1.5,
    "d": 3.141592653589793,
    "b": True,
    "s": "héllo",
}


def test_tahu_edge_node_through_mosquitto_to_kafka(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, topic_prefix: str
) -> None:
    group = f"g{uuid.uuid4().hex[:8]}"
    node = "gw1"
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": "spb-test",
            "plant": "steel",
            "sources": [
                {
                    "type": "sparkplug",
                    "id": "spb",
                    "url": f"mqtt://127.0.0.1:{mqtt_port}",
                    "client_id": f"edge-{group}",
                    "group_ids": [group],
                    "equipment_prefix": "acme/site",
                    "tags": [{"tag": "gw1.press.Inputs/Force", "equipment": f"acme/site/{group}/gw1/press"}],
                }
            ],
            "batch": {"max_delay_ms": 20},
            "kafka": {"partitions": 2},
        }
    )
    settings = Settings.model_validate(
        {"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix, "partitions": 2, "state_dir": tmp_path}
    )
    topics = Topics(topic_prefix, 2)
    base = int(time.time() * 1000) // 1000 * 1000
    with AgentThread(cfg, settings) as agent:
        src = agent.agent.sources[0]
        wait_until(lambda: src.status.connected, 20, "sparkplug source subscribed")
        res = subprocess.run(
            ["node", str(PEERS / "sparkplug_node.js"), f"mqtt://127.0.0.1:{mqtt_port}", group, node, str(base)],
            capture_output=True,
            text=True,
            timeout=45,
            cwd=PEERS,
        )
        events = [json.loads(line)["event"] for line in res.stdout.splitlines() if line.startswith("{")]
        assert res.returncode == 0 and "rebirth" in events, (res.stdout, res.stderr[-2000:])

        def complete(ms: list[Any]) -> bool:
            bad = [q for b in batches(ms) for q in b.quality if q == 2]
            return len(bad) >= 2 + 13  # DDEATH: 2 device metrics; NDEATH: 13 node metrics

        raw = read_topic(kafka_bootstrap, topics.raw, complete, 40)
        dead = read_topic(kafka_bootstrap, topics.deadletter, lambda ms: len(ms) >= 1, 20)
        ev = dict(src.status.events)
    rows = [
        (b.equipment, t, ts, v, u, q)
        for b in batches(raw)
        for t, ts, v, u, q in zip(b.tag, b.ts_us, b.value, b.unit, b.quality, strict=True)
    ]
    us = 1000
    good = {(t, ts, v) for _e, t, ts, v, _u, q in rows if q == 0}
    for birth in (base, base + 20):
        for name, value in NODE_GOOD.items():
            assert (f"gw1.{name}", birth * us, value) in good, (name, birth)
        assert ("gw1.dt", birth * us, base) in good
        assert ("gw1.press.Inputs/Force", birth * us, 0.5) in good
        assert ("gw1.press.Inputs/Count", birth * us, -1) in good
    for i in range(1, 6):
        assert ("gw1.i8", (base + i) * us, -i) in good
        assert ("gw1.i64", (base + i) * us, -i * 1_000_000_000) in good
        assert ("gw1.press.Inputs/Force", (base + i) * us, i + 0.25) in good
        assert ("gw1.press.Inputs/Count", (base + i) * us, -i) in good
    assert ("gw1.u8", (base + 7) * us, 7) in good, "the message after the gap still delivers"
    assert ("gw1.press.Inputs/Force", (base + 21) * us, 42.0) in good
    # exact types survive: ints are ints (signed), floats floats, bools bools
    typed = {(t, ts): v for _e, t, ts, v, _u, q in rows if q == 0}
    assert type(typed[("gw1.b", base * us)]) is bool and type(typed[("gw1.i64", base * us)]) is int
    assert type(typed[("gw1.f", base * us)]) is float
    units = {t: u for _e, t, _ts, _v, u, _q in rows}
    assert units["gw1.press.Inputs/Force"] == "kN"
    equipment = {t: e for e, t, *_ in rows}
    assert equipment["gw1.i8"] == f"acme/site/{group}/gw1"
    assert equipment["gw1.press.Inputs/Force"] == f"acme/site/{group}/gw1/press"
    # deaths: device metrics bad at the DDEATH timestamp, node metrics bad at NDEATH
    bad = [(t, ts, v) for _e, t, ts, v, _u, q in rows if q == 2]
    assert {(t, ts) for t, ts, _ in bad if t.startswith("gw1.press.")} == {
        ("gw1.press.Inputs/Force", (base + 22) * us),
        ("gw1.press.Inputs/Count", (base + 22) * us),
    }
    assert {t for t, _, _ in bad if not t.startswith("gw1.press.")} == {f"gw1.{n}" for n in NODE_GOOD} | {"gw1.dt"}
    assert all(isinstance(v, float) and math.isnan(v) for _, _, v in bad)
    # protocol events
    assert ev["seq_gap"] == 1 and ev["rebirth_requested"] >= 1 and ev["unknown_alias"] == 1
    assert ev["birth"] == 4 and ev["death"] == 2
    # unknown alias -> dead letter with the reason, original bytes kept
    h = {k: bytes(v) for k, v in cast("list[tuple[str, bytes]]", dead[0].headers() or [])}
    assert h["plantstream-reason"].decode() == f"unknown alias 999 for {group}/gw1/press (not in its birth)"
    assert h["plantstream-origin"].decode() == f"spb:spBv1.0/{group}/DDATA/gw1/press"
    assert dead[0].value(), "original payload kept"
