"""Each stage on its own, at full speed: edge (OPC-UA, MQTT), streams per worker, sink, dataset pull.

Edge stages run the real agent as its own process (``plantstream edge run``) fed by a load
generator process, and count the readings that arrive on the raw topic per second (wall clock,
after a warm-up), so what is measured is what a downstream consumer actually receives.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plantstream.bench import workers
from plantstream.bench.infra import RawCounter
from plantstream.bench.limits import start_opcua_servers, writes_rate
from plantstream.bench.model import per_second, window_rate
from plantstream.bench.procs import (
    Worker,
    cpu_seconds,
    peak_rss_mb,
    py_spy_available,
    py_spy_top,
    python_module,
    service_cpu,
    spawn,
)
from plantstream.config import Settings
from plantstream.edge.config import EdgeConfig
from plantstream.pipeline import wait_for
from plantstream.producers.kafka import ensure_topics
from plantstream.producers.topics import Topics
from plantstream.sim.edgeconfig import dump_config


@dataclass
class EdgeResult:
    readings_per_s: float
    offered_per_s: float | None
    seconds: float
    edge_cpu_pct: float | None
    edge_peak_mb: float | None
    load_peak_mb: float | None
    series: list[tuple[float, float]] = field(default_factory=list)  # (s, readings in that second)
    error: str = ""
    profile: list[tuple[str, float]] = field(default_factory=list)  # py-spy leaf frames, share of samples
    load_cpu_pct: float | None = None  # busiest load generator process
    load_processes: int = 1
    services_cpu_pct: dict[str, float] = field(default_factory=dict)  # postgres/tansu/mosquitto, all instances
    per_message: int = 1  # readings per source message (MQTT JSON arrays); 1 for OPC-UA

    @property
    def msgs_per_s(self) -> float:
        """Source messages/s behind ``readings_per_s`` (what the broker carried)."""
        return self.readings_per_s / max(1, self.per_message)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "msgs_per_s": self.msgs_per_s}


def _env(settings: Settings, prefix: str, state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PLANTSTREAM_DB_DSN": settings.dsn,
        "PLANTSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PLANTSTREAM_MQTT_URL": settings.mqtt,
        "PLANTSTREAM_TOPIC_PREFIX": prefix,
        "PLANTSTREAM_PARTITIONS": "3",
        "PLANTSTREAM_STATE_DIR": str(state),
        "PLANTSTREAM_LOG_FORMAT": "json",
    }


def edge_connected(status_path: Path) -> bool:
    """True once an edge agent's status file says every source is connected."""
    try:
        st = json.loads(status_path.read_text())
    except (OSError, ValueError):
        return False
    srcs = st.get("sources", [])
    return bool(srcs) and all(s.get("connected") for s in srcs)


def _run_edge(
    name: str,
    cfg: dict[str, Any],
    settings: Settings,
    workdir: Path,
    start_load: Callable[[], list[Worker]],
    seconds: float,
    warmup: float,
    counter_key: str,
    profile_s: float = 0.0,
    per_message: int = 1,
) -> EdgeResult:
    prefix = str(cfg["kafka"]["topic_prefix"])
    topics = Topics(prefix, 3)
    ensure_topics(settings.kafka_bootstrap, topics.all(), 3)
    path = workdir / f"{name}.yaml"
    dump_config(EdgeConfig.model_validate(cfg), path)
    status = Path(cfg["buffer"]["path"]).with_suffix(".status.json")
    counter = RawCounter(settings.kafka_bootstrap, topics.raw).start()
    edge = spawn(name, python_module("plantstream.cli", "edge", "run", "--config", str(path)), workdir / "logs",
                 _env(settings, prefix, workdir / "state"))  # fmt: skip
    load: list[Worker] = []
    try:
        wait_for(lambda: edge_connected(status), 60, f"{name} connected", edge.check)
        load = start_load()
        time.sleep(warmup)
        edge.check()
        pids = [edge.pid] + [w.pid for w in load]
        t0, c0, s0 = time.time(), [cpu_seconds(p) or 0.0 for p in pids], service_cpu()
        top: list[tuple[str, float]] = []
        spy = None
        if profile_s > 0 and py_spy_available():
            # Sampled inside the window (py-spy runs out of process, at a low rate).
            spy = threading.Thread(
                target=lambda: top.extend(
                    py_spy_top(edge.pid, min(profile_s, seconds), workdir / f"profile-{name}.txt")
                )
            )
            spy.start()
        time.sleep(seconds)
        t1, c1, s1 = time.time(), [cpu_seconds(p) or 0.0 for p in pids], service_cpu()
        if spy is not None:
            spy.join(seconds + 30)
        # Readings produced inside the window may arrive a moment later; wait for the consumer.
        time.sleep(0.5)
        edge.check()
        rate = window_rate(counter.events, t0, t1)
        cpu = [100.0 * (b - a) / (t1 - t0) for a, b in zip(c0, c1, strict=True)]
        series = per_second(counter.events, t0 - warmup)
        load_mb = max((peak_rss_mb(w.pid) or 0.0 for w in load), default=0.0)
        offered = writes_rate(load, t0, t1, counter_key)
        return EdgeResult(rate, None if offered is None else offered * per_message, t1 - t0, cpu[0],
                          peak_rss_mb(edge.pid), load_mb, series, counter.error, top, max(cpu[1:], default=None),
                          len(load), {k: round(100.0 * (s1[k] - v) / (t1 - t0), 1) for k, v in s0.items()},
                          per_message)  # fmt: skip
    finally:
        edge.stop()
        for w in load:
            w.stop()
        counter.stop()


def edge_opcua(
    settings: Settings,
    workdir: Path,
    ports: list[int],
    tags: int,
    seconds: float,
    warmup: float,
    profile_s: float = 0.0,
) -> EdgeResult:
    """Asyncua server processes (every write a data change) -> one edge agent process -> Kafka raw topic."""
    prefix = f"psb{uuid.uuid4().hex[:8]}o"
    cfg = {
        "agent_id": "bench-opcua",
        "plant": "bench",
        "kafka": {"topic_prefix": prefix, "partitions": 3},
        "buffer": {"path": str(workdir / "edge-opcua" / "buffer.db")},
        "progress_interval_s": 5,
        "sources": [
            {
                "type": "opcua",
                "id": f"bench-opcua-{k}",
                "endpoint": workers.opcua_endpoint(port),
                "publishing_interval_ms": 100,
                "sampling_interval_ms": 0,
                "queue_size": 10_000,
                "tags": [
                    {
                        "tag": f"s{k}.u{i % 10}.t{i}",
                        "equipment": f"{workers.EQUIPMENT}/s{k}u{i % 10}",
                        "node_id": workers.opcua_node(i),
                        "unit": "degC",
                    }
                    for i in range(tags)
                ],
            }
            for k, port in enumerate(ports)
        ],
    }
    # The servers start first: the agent's subscriptions need them (they write from the start).
    servers = start_opcua_servers(ports, tags, workdir / "logs", "edge-opcua-server")
    try:
        return _run_edge("edge-opcua", cfg, settings, workdir, lambda: servers, seconds, warmup, "writes", profile_s)
    finally:
        for srv in servers:
            srv.stop()


def edge_mqtt(
    settings: Settings,
    workdir: Path,
    seconds: float,
    warmup: float,
    publishers: int = 1,
    tags: int = 200,
    profile_s: float = 0.0,
    per_message: int = 1,
) -> EdgeResult:
    """paho publisher processes (QoS 1, JSON) -> Mosquitto -> one edge agent process -> Kafka raw topic.

    ``per_message`` > 1 publishes JSON arrays of that many readings per message (as data loggers
    batch them; the subscription reads them with ``readings_path: $``)."""
    from urllib.parse import urlsplit

    root = f"psbench{uuid.uuid4().hex[:8]}"
    prefix = f"psb{uuid.uuid4().hex[:8]}m"
    url = urlsplit(settings.mqtt)
    name = "edge-mqtt" if per_message == 1 else f"edge-mqtt-x{per_message}"
    sub: dict[str, Any] = {"template": f"{root}/{{_}}/{{equipment+}}/{{tag}}"}
    if per_message > 1:
        sub["readings_path"] = "$"
    cfg = {
        "agent_id": "bench-mqtt",
        "plant": "bench",
        "kafka": {"topic_prefix": prefix, "partitions": 3},
        "buffer": {"path": str(workdir / name / "buffer.db")},
        "progress_interval_s": 5,
        "sources": [
            {
                "type": "mqtt",
                "id": "bench-mqtt",
                "url": settings.mqtt,
                "client_id": f"bench-edge-{root}",
                "qos": 1,
                # The broker must not keep this throwaway session after the run.
                "session_expiry_s": 0,
                "max_payload_bytes": 1 << 20,
                "subscriptions": [sub],
            }
        ],
    }

    def start() -> list[Worker]:
        return [
            spawn(f"{name}-pub-{i}", python_module("plantstream.bench.workers", "mqtt-pub", "--host",
                  url.hostname or "127.0.0.1", "--port", str(url.port or 1883), "--root", f"{root}/p{i}", "--qos",
                  "1", "--seconds", str(warmup + seconds + 2), "--tags", str(tags), "--first-tag", str(i * tags),
                  "--per-message", str(per_message)), workdir / "logs")
            for i in range(publishers)
        ]  # fmt: skip

    return _run_edge(name, cfg, settings, workdir, start, seconds, warmup, "done", profile_s, per_message)


def streams(readings: int, profile_readings: int = 0) -> dict[str, Any]:
    """The streams Processor on one core: decode raw batches -> clean, 1 s/1 min aggregates, lots."""
    from plantstream.streams import bench_processor

    res = bench_processor.run(readings, profile=False, decode=True)
    out: dict[str, Any] = {"readings_per_s": float(res["readings_per_s"]), "readings": res["readings"],
                           "aggregates": res["aggregates"]}  # fmt: skip
    if profile_readings:
        prof = bench_processor.run(profile_readings, profile=True, decode=True)
        out["profile"] = prof.get("profile", "")
    return out


def sink(dsn: str, rows: int, rounds: int = 3) -> dict[str, Any]:
    """The sink's whole write path (decode, registration, binary COPY into readings, commit),
    alternated with the limit it is judged against (binary COPY of as many rows into the same
    ``readings`` table): this machine's speed drifts by tens of percent within minutes, so a limit
    measured minutes earlier made the ratio swing; medians of adjacent rounds do not."""
    from plantstream.bench.limits import pg_copy
    from plantstream.bench.sink import sink_rate

    per_flush = min(50_000, max(1000, rows // 4))
    sink_rates: list[float] = []
    copy_rates: list[float] = []
    flushes = 0
    import psycopg

    from plantstream.monitor.queries import flavor

    for _ in range(rounds):
        copy_rates.append(float(pg_copy(dsn, rows, plain=False)["readings_rows_per_s"]))
        rate, flushes = sink_rate(dsn, rows=rows, rows_per_flush=per_flush)
        sink_rates.append(rate)
    with psycopg.connect(dsn) as conn:
        fl = flavor(conn)  # timescale: both write into the readings hypertable
    return {"flavor": fl, "readings_per_s": statistics.median(sink_rates), "copy_readings_rows_per_s": statistics.median(copy_rates),
            "sink_rounds": sink_rates, "copy_rounds": copy_rates, "rows": rows, "flushes": flushes,
            "rows_per_flush": per_flush}  # fmt: skip


DATASET_API = "plantstream.bench.pull.run(dsn: str, quick: bool) -> {'cells_per_s': float, ...}"


def dataset(dsn: str, quick: bool) -> dict[str, Any] | None:
    """Dataset pull through the datasets stage's own bench, when that stage provides one (None otherwise)."""
    try:
        mod = importlib.import_module("plantstream.bench.pull")
    except ImportError:
        return None
    run = getattr(mod, "run", None)
    if not callable(run):
        return None
    res = run(dsn, quick=quick)
    return dict(res) if isinstance(res, dict) else None
