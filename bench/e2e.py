"""End to end at stepped rates: simulators -> edge agents -> Kafka -> streams worker -> sink -> PostgreSQL.

The pipeline runs as real processes (:class:`plantstream.pipeline.Pipeline`). Sink and streams stay
up for the whole run; for each rate step the simulators restart at ``--rate`` samples/s per tag and
the edge agents restart against them. Stepping stops at the first step the pipeline cannot sustain.

Latency (source timestamp -> database commit). The schema has no insertion-time column and
``track_commit_timestamp`` is off, so a poller asks every ``poll_s`` for the rows committed since its
previous query (rows whose ``xmin`` transaction id is newer than the newest it has seen - one sink
commits sequentially, so transaction ids grow in commit order). Such a row committed between the
two queries; its latency is the midpoint of those two wall-clock instants minus its ``time``
(resolution +- poll_s/2). A deterministic 1-in-``sample_every`` subset (by ``seq``) is kept. The
simulators stamp sample k with ``t0 + k/rate`` where ``t0`` is taken just before their OPC-UA
server starts, so latencies include that start-up offset (a fraction of a second, an overestimate).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from plantstream.bench.infra import RawCounter
from plantstream.bench.model import StepObservation, judge_step, per_second, percentile, window_rate
from plantstream.bench.procs import (
    collapsed_top,
    cpu_seconds,
    peak_rss_mb,
    py_spy_available,
    py_spy_top,
    service_cpu,
)
from plantstream.config import Settings
from plantstream.pipeline import Pipeline, Proc
from plantstream.producers.topics import Topics
from plantstream.progress import consumer_lag
from plantstream.testing.plugin import free_port

log = logging.getLogger(__name__)


@dataclass
class E2EConfig:
    plants: tuple[str, ...] = ("steel", "chemical", "fiber")
    steps_hz: tuple[float, ...] = (20, 50, 100, 200, 400, 800)
    step_s: float = 20.0
    settle_s: float = 3.0
    poll_s: float = 0.5
    sample_every: int = 8
    first_rows_timeout_s: float = 120.0
    profile_s: float = 0.0  # py-spy the bounding process this long (0: no profile)


@dataclass
class StepResult:
    obs: StepObservation
    sustained: bool
    reason: str
    t_start: float
    t_end: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.obs), "sustained": self.sustained, "reason": self.reason,
                "t_start": self.t_start, "t_end": self.t_end}  # fmt: skip


@dataclass
class E2EResult:
    steps: list[StepResult] = field(default_factory=list)
    sustained_per_s: float = 0.0
    sustained_hz: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    bound: str = ""
    profile: list[tuple[str, float]] = field(default_factory=list)
    profiled: str = ""
    peaks_mb: dict[str, float] = field(default_factory=dict)
    db_series: list[tuple[float, float]] = field(default_factory=list)
    raw_series: list[tuple[float, float]] = field(default_factory=list)
    latency_series: list[tuple[float, float]] = field(default_factory=list)
    t0: float = 0.0


class DbPoller:
    """Rows committed to ``readings`` since the previous poll, and their source->commit latency."""

    SQL = """
        SELECT count(*), max(xmin::text::bigint), max(time),
               array_agg((extract(epoch FROM time) * 1000000)::bigint) FILTER (WHERE seq %% %(k)s = 0)
        FROM readings
        WHERE time > %(lo)s AND xmin::text::bigint > %(x)s
    """

    def __init__(self, dsn: str, poll_s: float, sample_every: int) -> None:
        self.dsn = dsn
        self.poll_s = poll_s
        self.k = sample_every
        self.events: list[tuple[float, int]] = []
        self.latencies: list[tuple[float, float]] = []
        self.freshness: list[tuple[float, float]] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-poller", daemon=True)

    def start(self) -> DbPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.events)

    def _run(self) -> None:
        newest_us: int | None = None
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="plantstream-bench-poller") as conn:
                row = conn.execute("SELECT coalesce(max(xmin::text::bigint), 0) FROM readings").fetchone()
                last_x = int(row[0]) if row else 0
                prev = time.time()
                while not self._stop.wait(self.poll_s):
                    q = time.time()
                    lo = datetime.fromtimestamp(q - 600).astimezone()
                    row = conn.execute(self.SQL, {"k": self.k, "lo": lo, "x": last_x}).fetchone()
                    mid = (prev + q) / 2
                    prev = q
                    if row is None:
                        continue
                    n, x, newest, sample = row
                    if n:
                        last_x = int(x)
                        self.events.append((mid, int(n)))
                        self.latencies.extend((mid, mid - ts / 1e6) for ts in (sample or ()))
                        newest_us = max(newest_us or 0, int(newest.timestamp() * 1e6))
                    if newest_us is not None:
                        self.freshness.append((q, q - newest_us / 1e6))
        except Exception as exc:
            self.error = repr(exc)
            log.warning("db poller failed", extra={"kv": {"error": self.error}})


def _sim_progress(proc: Proc) -> list[tuple[float, int, float]]:
    """(wall time, values emitted so far, lag_s) from a simulator's progress log lines."""
    out = []
    with contextlib.suppress(OSError):
        for line in proc.logfile.read_text(errors="replace").splitlines():
            if '"sim progress"' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError):
                rec = json.loads(line)
                t = datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=None)
                wall = (t - datetime(1970, 1, 1)).total_seconds()
                out.append((wall, int(rec["values"]), float(rec.get("lag_s", 0.0))))
    return out


class EndToEnd:
    def __init__(self, settings: Settings, workdir: Path, cfg: E2EConfig) -> None:
        self.cfg = cfg
        prefix = f"psb{uuid.uuid4().hex[:8]}e"
        self.settings = settings.model_copy(
            update={"topic_prefix": prefix, "partitions": 3, "state_dir": workdir / "state"}
        )
        self.topics = Topics(prefix, 3)
        self.workdir = workdir
        self.pipe = Pipeline(self.settings, workdir, plants=cfg.plants, sim_ports={p: free_port() for p in cfg.plants})
        self.peaks: dict[str, float] = {}
        self.poller: DbPoller | None = None
        self.counter: RawCounter | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start_infra(self) -> None:
        """Topics, schema, sink and streams worker: started early, since the worker's first consumer
        group join takes the broker ~20-30 s and can overlap other measurements."""
        self.pipe.prepare()
        self.pipe.spawn("sink", "sink", "run", "--static-assignment")
        self.pipe.start_streams(1)

    def _note_peaks(self, names: list[str] | None = None) -> None:
        for p in self.pipe.procs:
            if names is None or p.name in names:
                mb = peak_rss_mb(p.popen.pid)
                if mb:
                    key = "e2e " + p.name
                    self.peaks[key] = max(self.peaks.get(key, 0.0), mb)

    def _restart_load(self, hz: float) -> None:
        names = [p.name for p in self.pipe.procs if p.name.startswith(("sim-", "edge-"))]
        self._note_peaks(names)
        edges = [n for n in names if n.startswith("edge-")]
        if edges:
            self.pipe.stop(edges)
        sims = [n for n in names if n.startswith("sim-")]
        if sims:
            self.pipe.stop(sims)
        for plant in self.cfg.plants:
            self.pipe.spawn(f"sim-{plant}", "sim", plant, "--seed", "7", "--rate", str(hz), "--opcua-port",
                            str(self.pipe.sim_ports[plant]), "--mqtt-url", self.settings.mqtt)  # fmt: skip
        for plant in self.cfg.plants:
            self.pipe.wait_port(self.pipe.sim_ports[plant], f"simulator {plant}", 60)
            status = self.workdir / "edge-state" / plant / "buffer.status.json"
            status.unlink(missing_ok=True)
        self.pipe.start_edges()
        deadline = time.monotonic() + 60
        while not self.pipe.edges_ready():
            if time.monotonic() > deadline:
                raise TimeoutError("edge agents did not connect within 60 s")
            time.sleep(0.2)

    def _edge_buffered(self) -> int:
        n = 0
        for plant in self.cfg.plants:
            with contextlib.suppress(OSError, ValueError):
                st = json.loads((self.workdir / "edge-state" / plant / "buffer.status.json").read_text())
                n += int(st.get("buffer", {}).get("readings", 0))
        return n

    def _lags(self) -> tuple[int, int]:
        bs = self.settings.kafka_bootstrap
        raw = consumer_lag(bs, f"{self.topics.prefix}-streams", [self.topics.raw]) or 0
        clean = consumer_lag(bs, f"{self.topics.prefix}-sink", [self.topics.clean]) or 0
        return raw, clean

    def _cpu(self) -> dict[str, float]:
        out = {p.name: cpu_seconds(p.popen.pid) or 0.0 for p in self.pipe.procs}
        out.update({f"{k} (all)": v for k, v in service_cpu().items()})
        return out

    def _measure(self, hz: float) -> StepResult:
        assert self.poller is not None and self.counter is not None
        cfg = self.cfg
        time.sleep(cfg.settle_s)
        self.pipe.check_alive()
        t0 = time.time()
        lag0, buf0, cpu0 = self._lags(), self._edge_buffered(), self._cpu()
        t_lags = time.time() - t0
        deadline = t0 + cfg.step_s
        while time.time() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.time())))
            self.pipe.check_alive()
        t1 = time.time()
        cpu1 = self._cpu()
        lag1, buf1 = self._lags(), self._edge_buffered()
        dt = t1 - t0
        cpu = {k: round(100.0 * (cpu1.get(k, 0.0) - v) / dt, 1) for k, v in cpu0.items() if k in cpu1}
        offered, sim_lag = 0.0, 0.0
        for p in self.pipe.procs:
            if p.name.startswith("sim-"):
                pts = [x for x in _sim_progress(p) if t0 - 3 <= x[0] <= t1 + 3]
                if len(pts) >= 2:
                    offered += (pts[-1][1] - pts[0][1]) / max(1e-6, pts[-1][0] - pts[0][0])
                    sim_lag = max(sim_lag, pts[-1][2])
        edge_out = window_rate(self.counter.events, t0, t1)
        # The poller's rows lag the raw topic by the pipeline latency; a window shifted by the median
        # latency would be fairer, but at a steady state both windows see the same rate.
        db = window_rate(self.poller.events, t0, t1)
        lats = [lat for t, lat in self.poller.latencies if t0 <= t < t1]
        fresh = [(t - t0, f) for t, f in self.poller.freshness if t0 <= t < t1]
        obs = StepObservation(
            rate_hz=hz,
            seconds=dt,
            offered_per_s=offered or edge_out,
            edge_out_per_s=edge_out,
            db_per_s=db,
            freshness=fresh,
            sim_lag_s=sim_lag,
            raw_lag_growth=lag1[0] - lag0[0],
            clean_lag_growth=lag1[1] - lag0[1],
            edge_buffer_growth=buf1 - buf0,
            latency_p50_s=percentile(lats, 50),
            latency_p99_s=percentile(lats, 99),
            cpu=cpu,
        )
        ok, why = judge_step(obs)
        log.info("e2e step", extra={"kv": {"hz": hz, "offered": round(obs.offered_per_s), "edge": round(edge_out),
                 "db": round(db), "p99": obs.latency_p99_s, "sustained": ok, "why": why, "lag_probe_s": t_lags}})  # fmt: skip
        return StepResult(obs, ok, why, t0, t1)

    def _profile(self, reason: str, out: Path) -> tuple[str, list[tuple[str, float]]]:
        stage = reason.split(":", 1)[0]
        if stage.startswith("streams/sink"):
            stage = "streams"
        prefix = {"edge": "edge-", "streams": "streams-", "sink": "sink", "simulator": "sim-"}.get(stage)
        if prefix is None or not py_spy_available():
            return "", []
        cands = [p for p in self.pipe.procs if p.name.startswith(prefix) and p.alive()]
        if not cands:
            return "", []
        busiest = max(cands, key=lambda p: cpu_seconds(p.popen.pid) or 0.0)
        top = py_spy_top(busiest.popen.pid, self.cfg.profile_s, out / f"profile-{busiest.name}.txt")
        if not top:
            with contextlib.suppress(OSError):
                top = collapsed_top((out / f"profile-{busiest.name}.txt").read_text())
        return busiest.name, top

    def run(self, out: Path) -> E2EResult:
        """Step through the rates; always stops every process it started."""
        cfg = self.cfg
        res = E2EResult(t0=time.time())
        self.poller = DbPoller(self.settings.dsn, cfg.poll_s, cfg.sample_every).start()
        self.counter = RawCounter(self.settings.kafka_bootstrap, self.topics.raw).start()
        try:
            for i, hz in enumerate(cfg.steps_hz):
                self._restart_load(hz)
                if i == 0:
                    # The streams worker may still be joining its group: wait for the first rows.
                    deadline = time.monotonic() + cfg.first_rows_timeout_s
                    while self.poller.total == 0:
                        if time.monotonic() > deadline:
                            raise TimeoutError(
                                f"no readings reached the database within {cfg.first_rows_timeout_s:.0f} s"
                                f" (poller: {self.poller.error or 'ok'})"
                            )
                        self.pipe.check_alive()
                        time.sleep(0.5)
                step = self._measure(hz)
                res.steps.append(step)
                self._note_peaks()
                if not step.sustained:
                    res.bound = step.reason
                    if cfg.profile_s > 0:
                        res.profiled, res.profile = self._profile(step.reason, out)
                    break
            good = [s for s in res.steps if s.sustained]
            best = max(good, key=lambda s: s.obs.db_per_s) if good else None
            if best is not None:
                res.sustained_per_s = best.obs.db_per_s
                res.sustained_hz = best.obs.rate_hz
                res.latency_p50_s = best.obs.latency_p50_s
                res.latency_p99_s = best.obs.latency_p99_s
            if not res.bound and res.steps:
                res.bound = f"every step sustained up to {res.steps[-1].obs.rate_hz:g} Hz per tag; not pushed further"
            res.db_series = per_second(self.poller.events, res.t0)
            res.raw_series = per_second(self.counter.events, res.t0)
            res.latency_series = [(t - res.t0, lat) for t, lat in self.poller.latencies]
            return res
        finally:
            self._note_peaks()
            res.peaks_mb = dict(self.peaks)
            self.stop()

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        if self.counter is not None:
            self.counter.stop()
        self._note_peaks()
        with contextlib.suppress(Exception):
            self.pipe.stop()
