"""MQTT ingest throughput of one edge agent process: publisher processes (paho, QoS 1) -> Mosquitto
-> ``plantstream edge run`` -> Kafka; readings per second counted on the raw topic.

``python -m plantstream.edge.mqtt.benchmark [--publishers 2] [--per-message 1] [--seconds 15]``

``--per-message N`` > 1 publishes JSON arrays of N readings per message (``readings_path: $``).
Connections come from ``PLANTSTREAM_*`` (or the local stack). Prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

EQUIPMENT = "acme/bench/area/line"


def _payload(ts_us: int, value: float, n: int) -> bytes:
    one = b'{"ts_us":%d,"value":%r,"unit":"degC","quality":"good"}'
    if n == 1:
        return one % (ts_us, value)
    return b"[" + b",".join(one % (ts_us + k, value + k) for k in range(n)) + b"]"


def publish(host: str, port: int, root: str, seconds: float, per_message: int, tags: int, qos: int) -> None:
    """One publisher process: as fast as the broker acknowledges, up to 2000 messages unacknowledged."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{root}")
    client.max_inflight_messages_set(1000)
    done = [0]
    lock = threading.Lock()
    connected = threading.Event()

    def on_publish(*_a: Any) -> None:
        with lock:
            done[0] += 1

    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    client.connect(host, port, 30)
    client.loop_start()
    connected.wait(10)
    topics = [f"{root}/{EQUIPMENT}/u{i % 10}/t{i}" for i in range(tags)]
    sent = 0
    stop = time.monotonic() + seconds
    halt = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: halt.set())
    while time.monotonic() < stop and not halt.is_set():
        if sent - done[0] >= 2000:
            halt.wait(0.0005)
            continue
        ts = time.time_ns() // 1000
        for _ in range(100):
            client.publish(topics[sent % tags], _payload(ts, sent * 0.5, per_message), qos=qos)
            sent += 1
    print(json.dumps({"sent": sent, "acked": done[0]}), flush=True)
    client.disconnect()
    client.loop_stop()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(publishers: int, per_message: int, seconds: float, warmup: float, tags: int, qos: int) -> dict[str, Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from plantstream.config import Settings
    from plantstream.producers.codec import decode_readings
    from plantstream.producers.kafka import ensure_contract_topics
    from plantstream.producers.topics import Topics

    settings = Settings.from_env()
    url = urlsplit(settings.mqtt)
    root = f"psmb{uuid.uuid4().hex[:8]}"
    topics = Topics(f"psmb{uuid.uuid4().hex[:8]}", 3)
    ensure_contract_topics(settings.kafka_bootstrap, topics)
    work = Path(tempfile.mkdtemp(prefix="edge-mqtt-bench-"))
    sub: dict[str, Any] = {"template": f"{root}/{{_}}/{{equipment+}}/{{tag}}"}
    if per_message > 1:
        sub["readings_path"] = "$"
    cfg = {
        "agent_id": "mqtt-bench",
        "plant": "bench",
        "kafka": {"topic_prefix": topics.prefix, "partitions": 3, "bootstrap": settings.kafka_bootstrap},
        "buffer": {"path": str(work / "buffer.db")},
        "progress_interval_s": 5,
        "sources": [
            {
                "type": "mqtt",
                "id": "bench",
                "url": settings.mqtt,
                "client_id": f"bench-edge-{root}",
                "qos": qos,
                "session_expiry_s": 0,
                "max_payload_bytes": 1 << 20,
                "subscriptions": [sub],
            }
        ],
    }
    (work / "edge.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PLANTSTREAM_STATE_DIR": str(work / "state")}
    log = (work / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "plantstream.cli", "edge", "run", "--config", str(work / "edge.yaml")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    status = work / "buffer.status.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            st = json.loads(status.read_text())
            if all(s.get("connected") for s in st.get("sources", [])) and st.get("sources"):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    else:
        raise SystemExit(f"agent did not connect; see {work / 'agent.log'}")
    events: list[tuple[float, int]] = []
    halt = threading.Event()

    def count() -> None:
        from plantstream.producers.kafka import librdkafka_conf

        c = Consumer(librdkafka_conf(settings.kafka_bootstrap, {"group.id": "unused", "enable.auto.commit": False}))
        c.assign([TopicPartition(topics.raw, p, OFFSET_BEGINNING) for p in range(3)])
        while not halt.is_set():
            for m in c.consume(1000, timeout=0.2):
                if m.error() is None:
                    events.append((time.time(), len(decode_readings(m.value() or b""))))
        c.close()

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    host, port = url.hostname or "127.0.0.1", str(url.port or 1883)

    def publisher(i: int) -> subprocess.Popen[str]:
        args = ["--host", host, "--port", port, "--root", f"{root}/p{i}", "--seconds", str(warmup + seconds + 1)]
        args += ["--per-message", str(per_message), "--tags", str(tags), "--qos", str(qos)]
        cmd = [sys.executable, "-m", "plantstream.edge.mqtt.benchmark", "--pub", *args]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    pubs = [publisher(i) for i in range(publishers)]
    try:
        time.sleep(warmup)
        t0, c0 = time.time(), _cpu_s(agent.pid)
        time.sleep(seconds)
        t1, c1 = time.time(), _cpu_s(agent.pid)
        time.sleep(0.5)
        got = sum(n for t, n in list(events) if t0 <= t < t1)
        sent = [json.loads((p.communicate(timeout=30)[0] or "{}").strip().splitlines()[-1]) for p in pubs]
    finally:
        halt.set()
        for p in pubs:
            if p.poll() is None:
                p.terminate()
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        counter.join(5)
    return {
        "readings_per_s": round(got / (t1 - t0)),
        "messages_per_s": round(got / (t1 - t0) / per_message),
        "per_message": per_message,
        "publishers": publishers,
        "qos": qos,
        "agent_cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 1),
        "published_messages": sum(s.get("sent", 0) for s in sent),
        "log": str(work / "agent.log"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m plantstream.edge.mqtt.benchmark")
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--per-message", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--tags", type=int, default=200)
    ap.add_argument("--qos", type=int, choices=[0, 1], default=1)
    ap.add_argument("--pub", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=1883, help=argparse.SUPPRESS)
    ap.add_argument("--root", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.pub:
        publish(a.host, a.port, a.root, a.seconds, a.per_message, a.tags, a.qos)
        return
    print(json.dumps(run(a.publishers, a.per_message, a.seconds, a.warmup, a.tags, a.qos)))


if __name__ == "__main__":
    main()
