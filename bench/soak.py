"""Memory soak of one edge agent process (issue 3: "memory flat over a 10-minute soak with the buffer bounded").

One ``plantstream edge run`` process reads an OPC-UA server process (paced writes) and MQTT JSON
arrays (a paced publisher process) for the whole soak, in two phases:

1. **steady**: Kafka reachable; readings flow through the buffer to the raw topic.
2. **outage**: Kafka unreachable (the stoppable proxy in front of a private broker is stopped, so
   the agent's connections really break); the buffer fills to ``buffer.max_bytes`` and then drops
   its oldest entries, counted.

Every ``sample_s`` the agent's RSS (``/proc/<pid>/status`` VmRSS) and its status file (buffer
bytes, drops, readings in/out) are sampled. The verdict uses :func:`model.judge_flat`.
The private broker (not the shared one) is used because clients reconnect to a broker's
advertised address, which must be the proxy's for an outage to be real.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plantstream.bench import workers
from plantstream.bench.model import Flatness, judge_flat, percentile, slope
from plantstream.bench.procs import Worker, peak_rss_mb, python_module, spawn
from plantstream.config import Settings
from plantstream.edge.config import EdgeConfig
from plantstream.pipeline import wait_for
from plantstream.producers.kafka import ensure_topics
from plantstream.producers.topics import Topics
from plantstream.sim.edgeconfig import dump_config
from plantstream.testing.plugin import free_port

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 10.0
    outage_share: float = 0.5  # the last half of the soak runs with Kafka unreachable
    mqtt_msgs_per_s: float = 300.0
    per_message: int = 20  # -> 6000 MQTT readings/s
    opcua_tags: int = 200
    opcua_writes_per_s: float = 2000.0  # 10 Hz per tag
    buffer_max_bytes: int = 32 << 20
    sample_s: float = 5.0

    @property
    def offered_per_s(self) -> float:
        return self.mqtt_msgs_per_s * self.per_message + self.opcua_writes_per_s


@dataclass
class Sample:
    t: float  # seconds since the load started
    phase: str  # steady | outage
    rss_mb: float
    buffer_bytes: int
    buffer_readings: int
    dropped: int  # readings dropped at the cap, cumulative
    readings_in: int  # cumulative, all sources
    delivered: int  # readings acknowledged by Kafka, cumulative
    db_file_mb: float  # buffer.db + WAL on disk


@dataclass
class SoakResult:
    config: SoakConfig
    samples: list[Sample] = field(default_factory=list)
    outage_at_s: float = 0.0
    peak_rss_mb: float | None = None  # VmHWM at the end
    flat: Flatness | None = None
    steady_in_per_s: float = 0.0
    steady_out_per_s: float = 0.0
    outage_in_per_s: float = 0.0
    cap_reached_at_s: float | None = None
    max_buffer_bytes: int = 0
    dropped: int = 0
    phase_slopes: dict[str, float] = field(default_factory=dict)  # MB/min over each phase's second half

    @property
    def buffer_bounded(self) -> bool:
        return self.max_buffer_bytes <= self.config.buffer_max_bytes

    @property
    def ok(self) -> bool:
        return bool(self.flat and self.flat.flat and self.buffer_bounded and self.dropped > 0)

    def summary(self) -> dict[str, Any]:
        rss = [s.rss_mb for s in self.samples]
        return {
            "minutes": self.config.minutes,
            "offered_readings_per_s": self.config.offered_per_s,
            "rss_start_mb": rss[0] if rss else None,
            "rss_end_mb": rss[-1] if rss else None,
            "rss_max_mb": max(rss, default=None),
            "rss_median_mb": percentile(rss, 50),
            "peak_rss_vmhwm_mb": self.peak_rss_mb,
            "slope_mb_per_min_second_half": self.flat.slope_mb_per_min if self.flat else None,
            "max_above_median_mb": self.flat.above_median_mb if self.flat else None,
            "flat": self.flat.flat if self.flat else False,
            "not_flat_because": self.flat.reason if self.flat else "",
            "phase_slopes_mb_per_min": self.phase_slopes,
            "steady_in_per_s": self.steady_in_per_s,
            "steady_out_per_s": self.steady_out_per_s,
            "outage_in_per_s": self.outage_in_per_s,
            "outage_at_s": self.outage_at_s,
            "buffer_cap_bytes": self.config.buffer_max_bytes,
            "buffer_max_bytes_seen": self.max_buffer_bytes,
            "buffer_bounded": self.buffer_bounded,
            "cap_reached_at_s": self.cap_reached_at_s,
            "dropped_readings": self.dropped,
            "ok": self.ok,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "summary": self.summary(),
            "samples": [asdict(s) for s in self.samples],
        }


def rss_mb(pid: int) -> float | None:
    """VmRSS of a live process in MB; None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _rate(samples: list[Sample], attr: str) -> float:
    """Per-second rate of a cumulative counter over the samples (least squares, robust to a late sample)."""
    pts: list[tuple[float, float]] = [(s.t, float(getattr(s, attr))) for s in samples]
    return slope(pts)


def analyse(res: SoakResult) -> SoakResult:
    """Fill the verdict fields of ``res`` from its samples (pure; unit-tested)."""
    ss = res.samples
    res.flat = judge_flat([(s.t, s.rss_mb) for s in ss])
    steady = [s for s in ss if s.phase == "steady"]
    outage = [s for s in ss if s.phase == "outage"]
    res.steady_in_per_s = _rate(steady, "readings_in")
    res.steady_out_per_s = _rate(steady, "delivered")
    res.outage_in_per_s = _rate(outage, "readings_in")
    for name, part in (("steady", steady), ("outage", outage)):
        half = part[len(part) // 2 :]
        res.phase_slopes[name] = slope([(s.t / 60.0, s.rss_mb) for s in half])
    res.max_buffer_bytes = max((s.buffer_bytes for s in ss), default=0)
    res.dropped = ss[-1].dropped if ss else 0
    # "Reached the cap": within one typical entry batch (~2 %) of it.
    near = [s.t for s in outage if s.buffer_bytes >= 0.98 * res.config.buffer_max_bytes or s.dropped > 0]
    res.cap_reached_at_s = near[0] if near else None
    return res


def _status(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _db_mb(path: Path) -> float:
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total / 1e6


def run(settings: Settings, out: Path, cfg: SoakConfig) -> SoakResult:
    """Run the soak (``cfg.minutes`` of load) and return its samples and verdict.

    Raises when the agent or a load process dies, or the agent never connects; everything
    started here is stopped before returning or raising."""
    from urllib.parse import urlsplit

    from plantstream.testing.edge import IsolatedKafka

    work = out / "soak"
    logs = work / "logs"
    work.mkdir(parents=True, exist_ok=True)
    prefix = f"psb{uuid.uuid4().hex[:8]}s"
    root = f"psbsoak{uuid.uuid4().hex[:8]}"
    url = urlsplit(settings.mqtt)
    port = free_port()
    buffer = work / "buffer.db"
    status = buffer.with_suffix(".status.json")
    res = SoakResult(cfg)
    started: list[Worker] = []
    kafka = IsolatedKafka(logs / "private-broker.log").start()
    try:
        ensure_topics(kafka.bootstrap, Topics(prefix, 3).all(), 3)
        server = spawn("soak-opcua-server", python_module("plantstream.bench.workers", "opcua-server", "--port",
                       str(port), "--tags", str(cfg.opcua_tags), "--rate", str(cfg.opcua_writes_per_s)), logs)  # fmt: skip
        started.append(server)
        wait_for(lambda: any(x.get("ready") for x in server.lines()), 60, "soak OPC-UA server", server.check)
        edge_cfg = {
            "agent_id": "bench-soak",
            "plant": "bench",
            "kafka": {"bootstrap": kafka.bootstrap, "topic_prefix": prefix, "partitions": 3},
            "buffer": {"path": str(buffer), "max_bytes": cfg.buffer_max_bytes},
            "progress_interval_s": 30,
            "sources": [
                {
                    "type": "opcua",
                    "id": "soak-opcua",
                    "endpoint": workers.opcua_endpoint(port),
                    "publishing_interval_ms": 100,
                    "sampling_interval_ms": 0,
                    "queue_size": 1000,
                    "tags": [
                        {
                            "tag": f"o.u{i % 10}.t{i}",
                            "equipment": f"{workers.EQUIPMENT}/o{i % 10}",
                            "node_id": workers.opcua_node(i),
                            "unit": "degC",
                        }
                        for i in range(cfg.opcua_tags)
                    ],
                },
                {
                    "type": "mqtt",
                    "id": "soak-mqtt",
                    "url": settings.mqtt,
                    "client_id": f"bench-soak-{root}",
                    "qos": 1,
                    "session_expiry_s": 0,
                    "max_payload_bytes": 1 << 20,
                    "subscriptions": [{"template": f"{root}/{{equipment+}}/{{tag}}", "readings_path": "$"}],
                },
            ],
        }
        path = work / "edge-soak.yaml"
        dump_config(EdgeConfig.model_validate(edge_cfg), path)
        env = {
            "PLANTSTREAM_STATE_DIR": str(work / "state"),
            "PLANTSTREAM_LOG_FORMAT": "json",
            "PLANTSTREAM_MQTT_URL": settings.mqtt,
        }
        edge = spawn("soak-edge", python_module("plantstream.cli", "edge", "run", "--config", str(path)), logs,
                     {**os.environ, **env})  # fmt: skip
        started.append(edge)

        def connected() -> bool:
            srcs = _status(status).get("sources", [])
            return bool(srcs) and all(s.get("connected") for s in srcs)

        wait_for(connected, 90, "soak agent connected to both sources", edge.check)
        seconds = cfg.minutes * 60.0
        pub = spawn("soak-mqtt-pub", python_module("plantstream.bench.workers", "mqtt-pub", "--host",
                    url.hostname or "127.0.0.1", "--port", str(url.port or 1883), "--root", root, "--qos", "1",
                    "--seconds", str(seconds + 60), "--tags", "200", "--per-message", str(cfg.per_message),
                    "--rate", str(cfg.mqtt_msgs_per_s)), logs)  # fmt: skip
        started.append(pub)
        t0 = time.monotonic()
        outage_at = seconds * (1.0 - cfg.outage_share)
        phase = "steady"
        next_sample = t0
        while True:
            now = time.monotonic() - t0
            if phase == "steady" and now >= outage_at:
                kafka.proxy.stop()
                phase = "outage"
                res.outage_at_s = now
                log.info("soak: Kafka cut off", extra={"kv": {"at_s": round(now, 1)}})
            if now >= seconds:
                break
            for w in started:
                w.check()
            if time.monotonic() >= next_sample:
                next_sample += cfg.sample_s
                st = _status(status)
                buf = st.get("buffer", {})
                rss = rss_mb(edge.pid)
                if rss is not None:
                    res.samples.append(Sample(
                        t=round(now, 2), phase=phase, rss_mb=round(rss, 2), buffer_bytes=int(buf.get("bytes", 0)),
                        buffer_readings=int(buf.get("readings", 0)),
                        dropped=int(sum(int(v) for v in buf.get("dropped", {}).values())),
                        readings_in=sum(int(s.get("readings_in", 0)) for s in st.get("sources", [])),
                        delivered=int(st.get("kafka", {}).get("delivered_readings", 0)),
                        db_file_mb=round(_db_mb(buffer), 2),
                    ))  # fmt: skip
            time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
        res.peak_rss_mb = peak_rss_mb(edge.pid)
    finally:
        for w in reversed(started):
            w.stop()
        kafka.stop()
    return analyse(res)


def plot(res: SoakResult, path: Path) -> Path:
    """soak.png: agent RSS and buffer bytes vs time, the outage shaded, the cap drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s.t / 60.0 for s in res.samples]
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax = axes[0]
    ax.plot(ts, [s.rss_mb for s in res.samples], marker=".", label="agent RSS (VmRSS)")
    if res.peak_rss_mb:
        ax.axhline(res.peak_rss_mb, color="grey", linestyle=":", label=f"VmHWM {res.peak_rss_mb:.0f} MB")
    verdict = "flat" if res.flat and res.flat.flat else "NOT flat"
    slope_txt = f"{res.flat.slope_mb_per_min:.2f}" if res.flat else "?"
    above = f"{res.flat.above_median_mb:.1f}" if res.flat else "?"
    ax.set_title(f"Edge agent RSS: {verdict} (2nd-half slope {slope_txt} MB/min, max - median {above} MB)", fontsize=10)
    ax.set_ylabel("MB")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax = axes[1]
    ax.plot(ts, [s.buffer_bytes / 1e6 for s in res.samples], marker=".", label="buffer bytes (stored messages)")
    ax.plot(ts, [s.db_file_mb for s in res.samples], linestyle="--", label="buffer.db + WAL on disk")
    ax.axhline(res.config.buffer_max_bytes / 1e6, color="red", linestyle="--", label="buffer.max_bytes")
    ax2 = ax.twinx()
    ax2.plot(ts, [s.dropped for s in res.samples], color="purple", alpha=0.6, label="dropped readings (cum.)")
    ax2.set_ylabel("readings dropped")
    ax.set_xlabel("minutes since the load started")
    ax.set_ylabel("MB")
    ax.grid(alpha=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    for a in axes:
        a.axvspan(res.outage_at_s / 60.0, max(ts, default=0.0), alpha=0.08, color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown(res: SoakResult, started: str) -> str:
    s = res.summary()
    c = res.config

    def mb(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    flat = "yes" if s["flat"] else f"**no** ({s['not_flat_because']})"
    cap = "yes" if s["buffer_bounded"] else "**no**"
    reached = "-" if s["cap_reached_at_s"] is None else f"{(s['cap_reached_at_s'] - res.outage_at_s) / 60:.1f} min"
    lines = [
        f"# plantstream bench --soak - {started}",
        "",
        f"One `plantstream edge run` process, {c.minutes:g} min: OPC-UA {c.opcua_tags} tags at "
        f"{c.opcua_writes_per_s:g} writes/s + MQTT {c.mqtt_msgs_per_s:g} msgs/s x {c.per_message} readings "
        f"(offered {c.offered_per_s:,.0f} readings/s); Kafka reachable for {res.outage_at_s / 60:.1f} min, then "
        f"unreachable (proxy stopped); buffer.max_bytes {c.buffer_max_bytes / 2**20:g} MiB; sampled every "
        f"{c.sample_s:g} s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| RSS start / end / max / median (MB) | {mb(s['rss_start_mb'])} / {mb(s['rss_end_mb'])} / "
        f"{mb(s['rss_max_mb'])} / {mb(s['rss_median_mb'])} |",
        f"| peak RSS (VmHWM, MB) | {mb(s['peak_rss_vmhwm_mb'])} |",
        f"| RSS slope, second half (MB/min) | {s['slope_mb_per_min_second_half']:.2f} |",
        "| RSS slope, second half of each phase (MB/min) | "
        + ", ".join(f"{k} {v:.2f}" for k, v in s["phase_slopes_mb_per_min"].items())
        + " |",
        f"| max - median RSS (MB) | {s['max_above_median_mb']:.1f} |",
        f"| memory flat (slope < 1 MB/min and max - median < 20 MB) | {flat} |",
        f"| readings in / delivered per s, Kafka up | {s['steady_in_per_s']:,.0f} / {s['steady_out_per_s']:,.0f} |",
        f"| readings in per s, Kafka down | {s['outage_in_per_s']:,.0f} |",
        f"| buffer bytes max seen / cap | {s['buffer_max_bytes_seen']:,} / {s['buffer_cap_bytes']:,} |",
        f"| buffer stayed at or below the cap | {cap} |",
        f"| cap reached after the outage began | {reached} |",
        f"| readings dropped (oldest first, counted) | {s['dropped_readings']:,} |",
        "",
        "Plot: soak.png (RSS and buffer bytes vs time; outage shaded). Samples: soak.json.",
    ]
    return "\n".join(lines) + "\n"


def run_and_report(settings: Settings, out: Path, cfg: SoakConfig) -> SoakResult:
    """:func:`run`, then soak.md, soak.json and soak.png in ``out``."""
    from datetime import UTC, datetime

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out.mkdir(parents=True, exist_ok=True)
    res = run(settings, out, cfg)
    (out / "soak.json").write_text(json.dumps(res.to_json(), indent=1))
    (out / "soak.md").write_text(markdown(res, started))
    try:
        plot(res, out / "soak.png")
    except Exception as exc:  # a plotting problem must not lose the numbers
        log.error("soak plot failed", extra={"kv": {"error": repr(exc)}})
    return res
