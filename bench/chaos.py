"""Standing proof under faults (issue 15): ``plantstream bench --chaos [--chaos-minutes 10] [--chaos-seed N]``.

The whole pipeline runs as real processes - three plant simulators (OPC-UA + MQTT JSON) and
high-rate data loggers (MQTT JSON arrays, QoS 1) -> edge agents -> a private Kafka-protocol broker
behind a stoppable proxy -> streams worker -> sink -> a private PostgreSQL cluster, plus the
monitor - while a fault schedule drawn from ``random.Random(seed)`` hits it:

- ``kill_edge`` / ``kill_streams`` / ``kill_sink`` / ``kill_monitor``: SIGKILL of the process group,
  restarted after the fault's duration (same arguments, same buffer/state);
- ``kafka_outage``: the proxy in front of the broker is stopped (every client's connection breaks
  and reconnects are refused) for longer than the edges' ``message.timeout.ms`` (set low for the run);
- ``pg_restart``: ``pg_ctl stop -m immediate`` (a crash: no shutdown checkpoint), started again after
  the duration; the run owns this cluster (initdb on a free port), the shared one is never touched;
- ``edge_disk_full``: the edges' buffers live on one small tmpfs (the edge server's disk); it is
  filled to ENOSPC for the duration, then the filler is removed (left out, and said so, where no
  tmpfs can be mounted);
- ``hostile``: a burst of hostile MQTT payloads on the loggers' topics (lone surrogates, NaN,
  year 9999 and beyond, oversize, not JSON); each on its own topic so its dead letter is found by origin.

Every emitter keeps a ledger (simulators: ``--ledger``; logger publishers: this module's ``logger``
worker writes one line per message it hands to the broker). At the end the database is compared
with the ledgers: lost, duplicated, unexpected and differing readings; every 1 s / 1 min aggregate
row equal to the readings of its window; every hostile payload dead-lettered with its reason (or,
for a NaN value or a year-9999 stamp that decodes, stored flagged BAD). ``chaos.json`` and
``chaos.md`` hold the schedule (seed, each fault's planned and actual time, duration and evidence
that it happened) and the counts. Loopback only; bounded in faults and time; stops by itself.

Lost OPC-UA readings are split: a sample a simulator served while its plant's edge agent was dead
(from the kill until the restarted agent's subscription is up, +-1 s) was never delivered to any
client - OPC-UA subscriptions do not queue for a client that is gone and the agent does not
HistoryRead the gap - so it is counted as ``opcua_unobserved`` beside ``lost`` (which is every other
missing reading, and what the verdict requires to be 0). Both are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from plantstream.bench.procs import Worker, python_module, spawn
from plantstream.config import Settings
from plantstream.pipeline import Pipeline, Proc, wait_for
from plantstream.stack import PG_BIN
from plantstream.testing.plugin import free_port

BAD_NO_COMMUNICATION = 0x80310000  # the StatusCode of an OPC-UA gap marker (edge/opcua/source.py)

log = logging.getLogger(__name__)

PLANTS = ("steel", "chemical", "fiber")
EDGES = ("loggers", *PLANTS)
EDGE_DISK_BYTES = 128 << 20  # the edges' tmpfs: room for minutes of outage, quick to fill
LOGGER_PLANT = "loggers"
LOGGER_EQUIPMENT = "acme/chaos/area/line"
KILLED = "killed"


# --- configuration and schedule ------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosConfig:
    minutes: float = 10.0  # load + faults; the drain and the comparison come after
    seed: int = 15
    plant_rate_hz: float = 5.0  # samples/s per simulator tag (105 tags in all)
    logger_publishers: int = 2
    logger_msgs_per_s: float = 40.0  # per publisher
    logger_per_message: int = 20  # -> 2 x 40 x 20 = 1600 readings/s
    logger_tags: int = 200
    message_timeout_ms: int = 2000  # the edges' librdkafka message.timeout.ms for the run
    rounds: int | None = None  # faults of each kind (default: one per ~3 minutes of load)
    drain_timeout_s: float = 300.0  # after the load: until every ledgered reading is in (or this)
    idle_timeout_s: float = 90.0  # ... or until nothing new arrived for this long
    hostile_per_burst: int = 1  # payloads of each hostile kind per burst

    @property
    def load_s(self) -> float:
        return self.minutes * 60.0

    @property
    def fault_rounds(self) -> int:
        return self.rounds if self.rounds is not None else max(1, round(self.minutes / 3.0))


@dataclass
class Fault:
    kind: str  # kill_edge | kill_streams | kill_sink | kill_monitor | kafka_outage | pg_restart | hostile | edge_disk_full
    target: str
    at_s: float  # planned, seconds after the load started
    duration_s: float
    started_s: float | None = None  # actual
    ended_s: float | None = None
    recovered_s: float | None = None  # the restarted process ready / clients reconnected
    happened: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def schedule(seed: int, cfg: ChaosConfig, disk: bool = True) -> list[Fault]:
    """The fault schedule of a run: every kind ``fault_rounds`` times (edges two per round, the
    loggers' agent and a plant's in the first), in shuffled order, one per slot of the load's
    middle 8-85 %, at a random offset inside its slot; durations random within each kind's range
    and the slot. Pure: the same seed and config give the same schedule."""
    rng = random.Random(seed)
    timeout_s = cfg.message_timeout_ms / 1000.0
    kinds: list[tuple[str, str]] = []
    for r in range(cfg.fault_rounds):
        edges = ["loggers", rng.choice(PLANTS)] if r == 0 else rng.sample(list(EDGES), 2)
        kinds += [("kill_edge", e) for e in edges]
        kinds += [("kill_streams", "streams-0"), ("kill_sink", "sink"), ("kill_monitor", "monitor"),
                  ("kafka_outage", "proxy"), ("pg_restart", "postgres"), ("hostile", "mqtt")]  # fmt: skip
        if disk:
            kinds.append(("edge_disk_full", "edge-state"))
    rng.shuffle(kinds)
    lo, hi = 0.08 * cfg.load_s, 0.85 * cfg.load_s
    slot = (hi - lo) / len(kinds)
    out: list[Fault] = []
    for i, (kind, target) in enumerate(kinds):
        if kind == "kafka_outage":
            # Longer than the producer's message timeout (twice, so in-flight batches time out too).
            want = 2.0 * timeout_s + 1.0 + rng.uniform(0.0, 4.0)
        elif kind == "pg_restart":
            want = rng.uniform(2.0, 6.0)
        elif kind == "edge_disk_full":
            want = rng.uniform(3.0, 8.0)
        elif kind == "hostile":
            want = 0.0
        else:
            want = rng.uniform(1.0, 5.0)
        duration = round(min(want, max(0.0, slot - 1.5)) if kind != "kafka_outage" else want, 2)
        start = lo + i * slot + rng.uniform(0.0, max(0.0, slot - duration - 1.0))
        out.append(Fault(kind, target, round(start, 2), duration))
    return out


# --- hostile payloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    kind: str
    topic: str
    payload: bytes
    expect: str  # "deadletter": dead-lettered with a reason containing `reason`; "bad": stored flagged BAD
    reason: str
    tag: str
    ts_us: int | None = None  # for "bad": the stored reading's timestamp ...
    value: float | None = None  # ... and value (None: NaN)


YEAR_9999_US = 253402300799000000  # 9999-12-31T23:59:59Z: representable, far ahead of any clock
YEAR_10000_US = 253402300800000000  # 10000-01-01: beyond every stage


def hostile_payloads(root: str, burst: int, n: int, now_us: int) -> list[Hostile]:
    """One burst: ``n`` payloads of every hostile kind, each on its own topic (its dead letter's origin)."""
    out: list[Hostile] = []
    one = b'[{"ts_us":%d,"value":%s,"unit":"degC","quality":"good"}]'
    for j in range(n):
        ts = now_us + j
        kinds: list[tuple[str, bytes, str, str]] = [
            ("lone_surrogate_bytes", b'[{"ts_us":%d,"value":"\xed\xa0\x80","unit":"degC"}]' % ts, "deadletter",
             "not UTF-8"),
            ("lone_surrogate_escape", one % (ts, b'"\\ud800"'), "deadletter", "lone surrogate"),
            ("nan_timestamp", b'[{"ts_us":NaN,"value":1.5,"unit":"degC","quality":"good"}]', "deadletter",
             "not a number"),
            ("year_10000", one % (YEAR_10000_US, b"1.5"), "deadletter", "after year 9999"),
            ("oversize", one % (ts, b'"' + b"x" * 70_000 + b'"'), "deadletter", "exceeds max_payload_bytes"),
            ("not_json", b"\x00\x01{not json", "deadletter", "not JSON"),
            ("nan_value", one % (ts, b"NaN"), "bad", "not finite"),
            ("year_9999", one % (YEAR_9999_US, b"2.5"), "bad", "after the receiving clock"),
        ]  # fmt: skip
        for kind, payload, expect, reason in kinds:
            tag = f"h{burst}x{j}{kind}"
            stamp = {"nan_value": ts, "year_9999": YEAR_9999_US}.get(kind)
            value = 2.5 if kind == "year_9999" else None
            out.append(
                Hostile(kind, f"{root}/hostile/{LOGGER_EQUIPMENT}/u0/{tag}", payload, expect, reason, tag, stamp, value)
            )
    return out


# --- a PostgreSQL cluster the run owns (so restarting it disturbs nobody) ---------------------------


class PrivatePostgres:
    """initdb on a free loopback port in a temporary directory; trust auth on loopback only."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="psbchaos-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    @property
    def dsn(self) -> str:
        return f"postgresql://plantstream@127.0.0.1:{self.port}/plantstream"

    def start(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(self._as_owner([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "plantstream", "-A",
                       "trust", "-E", "UTF8", "--locale=C.UTF-8"]), check=True, stdout=subprocess.DEVNULL,
                       timeout=120)  # fmt: skip
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.data}'",
            "shared_buffers = '128MB'",
            "max_connections = 100",
            "fsync = on",
            "synchronous_commit = on",
        ]
        with (self.data / "postgresql.auto.conf").open("a") as f:
            f.write("\n".join(conf) + "\n")
        self.start_again()
        import psycopg

        with psycopg.connect(self.dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE plantstream")
        return self

    def start_again(self) -> None:
        subprocess.run(self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w",
                       "-t", "60", "start"]), check=True, stdout=subprocess.DEVNULL, timeout=90)  # fmt: skip

    def crash(self) -> None:
        """Immediate shutdown: every backend killed, no checkpoint; recovery replays WAL at start."""
        subprocess.run(self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                       "stop"]), check=True, stdout=subprocess.DEVNULL, timeout=60)  # fmt: skip

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if self.postmaster_pid() is not None:
            subprocess.run(self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


# --- the pipeline of a chaos run -----------------------------------------------------------------


class ChaosPipeline(Pipeline):
    """The plant edges of :class:`Pipeline` with the run's MQTT topic root (the simulators publish
    under ``--mqtt-prefix``: other runs on the shared broker use the default root), a short Kafka
    message timeout and a bounded MQTT session."""

    mqtt_root: str = ""
    message_timeout_ms: int = 2000

    def edge_config(self, plant: str) -> Path:
        from plantstream.edge.config import EdgeConfig, MqttSubscription
        from plantstream.sim.edgeconfig import MQTT_ROOT, dump_config

        path = super().edge_config(plant)
        cfg = EdgeConfig.model_validate(_load_yaml(path))
        sources = []
        for src in cfg.sources:
            if src.type == "mqtt":
                subs = [
                    MqttSubscription.model_validate(
                        {**s.model_dump(), "template": (s.template or "").replace(MQTT_ROOT, self.mqtt_root, 1)}
                    )
                    for s in src.subscriptions
                ]
                src = src.model_copy(update={"subscriptions": subs, "session_expiry_s": 900})
            sources.append(src)
        kafka = cfg.kafka.model_copy(update={"producer": {"message.timeout.ms": self.message_timeout_ms}})
        update = {"sources": sources, "kafka": kafka, "metrics_port": self.edge_metrics_port(plant)}
        dump_config(cfg.model_copy(update=update), path)
        return path

    def edge_metrics_port(self, edge: str) -> int:
        """A fixed /metrics port per edge (kept across its restarts): on a full disk the status
        file cannot be rewritten, the metrics still say what the agent is doing."""
        ports: dict[str, int] = self.__dict__.setdefault("_edge_metrics", {})
        if edge not in ports:
            ports[edge] = free_port()
        return ports[edge]


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(path.read_text())
    return doc if isinstance(doc, dict) else {}


def _status(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _refused(port: int) -> bool:
    """A TCP connect to 127.0.0.1:port is refused (nothing listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except OSError:
        return True


@dataclass
class Recovery:
    fault: Fault
    t0: float
    ready: Callable[[], bool]
    deadline: float


class Chaos:
    """One chaos run: start everything, play the schedule, drain, compare, stop everything."""

    def __init__(self, settings: Settings, out: Path, cfg: ChaosConfig,
                 progress: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.base = settings
        # Absolute: the edges resolve their buffer paths relative to their config file.
        self.out = out.resolve()
        self.work = self.out / "chaos"
        self.logs = self.work / "logs"
        self.progress = progress or (lambda line: None)
        self.disk: Path | None = None  # the edges' filesystem (a tmpfs), when one could be mounted
        self.disk_note = ""
        self._stack = contextlib.ExitStack()
        self.faults = schedule(cfg.seed, cfg)
        run = uuid.uuid4().hex[:8]
        self.prefix = f"psb{run}c"
        self.mqtt_root = f"psbchaos{run}"
        self.logger_root = f"psbchaosl{run}"
        self.sink_metrics = free_port()
        self.streams_metrics = free_port()
        self.monitor_port = free_port()
        self.args: dict[str, list[str]] = {}  # restartable process -> its plantstream arguments
        self.publishers: list[Worker] = []
        self.killed: set[str] = set()  # names currently down on purpose
        self.unplanned: list[dict[str, Any]] = []
        self.recoveries: list[Recovery] = []
        self.hostiles: list[Hostile] = []
        self.t0 = 0.0
        self.t0_wall_us = 0
        self.release_wall_us = 0
        self.kafka: Any = None
        self.pg: PrivatePostgres | None = None
        self.pipe: ChaosPipeline | None = None
        self._lock = threading.Lock()

    # --- processes ----------------------------------------------------------------------------

    def _proc(self, name: str) -> Proc | None:
        assert self.pipe is not None
        return next((p for p in self.pipe.procs if p.name == name), None)

    def _start(self, name: str) -> Proc:
        assert self.pipe is not None
        if name.startswith("edge-"):
            _status_path(self.pipe, name).unlink(missing_ok=True)  # a stale file would look connected
        return self.pipe.spawn(name, *self.args[name])

    def _kill(self, name: str) -> dict[str, Any]:
        """SIGKILL the process group of ``name``; evidence: the pid and how it ended."""
        assert self.pipe is not None
        p = self._proc(name)
        if p is None or not p.alive():
            raise RuntimeError(f"{name} is not running")
        with self._lock:
            self.killed.add(name)
        pid = p.popen.pid
        os.killpg(pid, signal.SIGKILL)
        rc = p.popen.wait(15)
        self.pipe.procs.remove(p)
        pid_gone = not Path(f"/proc/{pid}").exists()
        return {"pid": pid, "returncode": rc, "pid_gone": pid_gone}

    def _ready(self, name: str) -> Callable[[], bool]:
        assert self.pipe is not None
        pipe = self.pipe

        def edge() -> bool:
            p = self._proc(name)
            st = _status(_status_path(pipe, name))
            srcs = st.get("sources", [])
            return (p is not None and st.get("pid") == p.popen.pid and bool(srcs)
                    and all(s.get("connected") for s in srcs))  # fmt: skip

        if name.startswith("edge-"):
            return edge
        url = {
            "sink": f"http://127.0.0.1:{self.sink_metrics}/metrics",
            "streams-0": f"http://127.0.0.1:{self.streams_metrics}/metrics",
            "monitor": f"http://127.0.0.1:{self.monitor_port}/healthz",
        }[name]
        return lambda: _http_ok(url)

    def _supervise(self) -> None:
        """Restart a process that died without being killed by the schedule (recorded: a crash
        under faults is a finding, and the rest of the run needs the stage)."""
        assert self.pipe is not None
        for p in list(self.pipe.procs):
            if p.alive() or (p.name.startswith("sim-") and p.popen.returncode == 0):
                continue
            with self._lock:
                if p.name in self.killed:
                    continue
            if p.name.startswith("sim-"):
                raise RuntimeError(f"{p.name} failed with {p.popen.returncode}:\n{p.tail()}")
            self.unplanned.append({"name": p.name, "returncode": p.popen.returncode, "at_s": round(self._now(), 1),
                                   "log_tail": p.tail(8)})  # fmt: skip
            log.warning("chaos: unplanned exit, restarting", extra={"kv": {"name": p.name, "rc": p.popen.returncode}})
            self.progress(f"  ! {p.name} exited with {p.popen.returncode} (not a scheduled fault); restarted")
            self.pipe.procs.remove(p)
            self._start(p.name)
        for w in self.publishers:
            w.check()

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _tick(self) -> None:
        """Between schedule steps: supervision and the restarted processes' readiness."""
        self._supervise()
        now = time.monotonic()
        for r in list(self.recoveries):
            if r.ready():
                r.fault.recovered_s = round(r.t0 + (now - r.t0) - self.t0, 2)
                self.recoveries.remove(r)
            elif now > r.deadline:
                r.fault.error = r.fault.error or "did not recover within its deadline"
                self.recoveries.remove(r)

    def _sleep_until(self, t: float) -> None:
        while (left := t - self._now()) > 0:
            self._tick()
            time.sleep(min(0.2, left))

    # --- setup --------------------------------------------------------------------------------

    def start(self) -> None:
        from plantstream.testing.edge import IsolatedKafka

        self.work.mkdir(parents=True, exist_ok=True)
        self.progress("chaos: private PostgreSQL cluster and Kafka-protocol broker behind the proxy")
        self.pg = PrivatePostgres().start()
        self._mount_edge_disk()
        self.kafka = IsolatedKafka(self.logs / "private-broker.log").start()
        settings = self.base.model_copy(update={
            "db_dsn": SecretStr(self.pg.dsn), "kafka_bootstrap": self.kafka.bootstrap, "topic_prefix": self.prefix,
            "partitions": 3, "state_dir": self.work / "state"})  # fmt: skip
        self.settings = settings
        pipe = ChaosPipeline(settings, self.work, plants=PLANTS, seed=self.cfg.seed, speed=1.0,
                             rate=self.cfg.plant_rate_hz, sim_ports={p: free_port() for p in PLANTS},
                             sim_args={p: ["--mqtt-prefix", self.mqtt_root] for p in PLANTS})  # fmt: skip
        pipe.mqtt_root = self.mqtt_root
        pipe.message_timeout_ms = self.cfg.message_timeout_ms
        self.pipe = pipe
        pipe.prepare()
        self.args["sink"] = ["sink", "run", "--static-assignment", "--metrics-port", str(self.sink_metrics)]
        self.args["streams-0"] = ["streams", "worker", "--metrics-port", str(self.streams_metrics)]
        self.args["monitor"] = ["monitor", "--host", "127.0.0.1", "--port", str(self.monitor_port)]
        for plant in PLANTS:
            self.args[f"edge-{plant}"] = ["edge", "run", "--config", str(pipe.edge_config(plant))]
        self.args["edge-loggers"] = ["edge", "run", "--config", str(self._logger_edge_config())]
        for name in ("sink", "streams-0", "monitor"):
            self._start(name)
        self.progress("chaos: simulators (paused) and edge agents")
        pipe.start_sims(duration=self.cfg.load_s, paused=True)
        for name in [f"edge-{p}" for p in PLANTS] + ["edge-loggers"]:
            self._start(name)
        for name in self.args:
            wait_for(self._ready(name), 120, f"{name} ready", self._supervise)
        pipe.release_sims()
        self.release_wall_us = time.time_ns() // 1000
        url = urlsplit(settings.mqtt)
        per_pub = self.cfg.logger_tags // self.cfg.logger_publishers
        for i in range(self.cfg.logger_publishers):
            self.publishers.append(spawn(f"logger-pub-{i}", python_module(
                "plantstream.bench.chaos", "logger", "--host", url.hostname or "127.0.0.1", "--port",
                str(url.port or 1883), "--root", f"{self.logger_root}/p{i}", "--tags", str(per_pub), "--first-tag",
                str(i * per_pub), "--per-message", str(self.cfg.logger_per_message), "--rate",
                str(self.cfg.logger_msgs_per_s), "--seconds", str(self.cfg.load_s), "--ledger",
                str(self._logger_ledger(i))), self.logs))  # fmt: skip
        for w in self.publishers:
            wait_for(partial(_said_ready, w), 30, f"{w.name} connected", w.check)
        self.t0 = time.monotonic()
        self.t0_wall_us = time.time_ns() // 1000

    def wall_us(self, at_s: float) -> int:
        """Wall clock (us) of a time given in seconds since the load started."""
        return self.t0_wall_us + round(at_s * 1e6)

    def _mount_edge_disk(self) -> None:
        """Every edge's buffer on one small tmpfs (the edge server's disk), so the schedule can fill it.
        Without the right to mount one, the disk faults are taken out of the schedule and reported."""
        from plantstream.testing.edge import small_filesystem

        try:
            self.disk = self._stack.enter_context(small_filesystem(self.work / "edge-state", EDGE_DISK_BYTES))
        except (OSError, subprocess.CalledProcessError) as exc:
            err = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else ""
            self.disk_note = f"fill-the-edge-disk: no tmpfs could be mounted for the edge buffers ({err or exc!r})"
            self.faults = schedule(self.cfg.seed, self.cfg, disk=False)
            self.progress(f"chaos: {self.disk_note}; that fault is left out")

    def _logger_ledger(self, i: int) -> Path:
        return self.work / f"ledger-loggers-{i}.jsonl"

    def _logger_edge_config(self) -> Path:
        from plantstream.edge.config import EdgeConfig
        from plantstream.sim.edgeconfig import dump_config

        assert self.pipe is not None
        edge_cfg = {
            "agent_id": "chaos-loggers",
            "plant": LOGGER_PLANT,
            "kafka": {"producer": {"message.timeout.ms": self.cfg.message_timeout_ms}},
            "buffer": {"path": str(self.work / "edge-state" / "loggers" / "buffer.db")},
            "progress_interval_s": 10,
            "metrics_port": self.pipe.edge_metrics_port("loggers"),
            "batch": {"max_readings": 2000, "max_delay_ms": 100},
            "sources": [{
                "type": "mqtt", "id": "loggers", "url": self.settings.mqtt, "client_id": f"chaos-edge-{self.logger_root}",
                "qos": 1, "session_expiry_s": 900,
                "subscriptions": [{"template": f"{self.logger_root}/{{_}}/{{equipment+}}/{{tag}}", "readings_path": "$"}],
            }],
        }  # fmt: skip
        path = self.work / "edge-loggers.yaml"
        dump_config(EdgeConfig.model_validate(edge_cfg), path)
        return path

    # --- faults -------------------------------------------------------------------------------

    def _begin(self, f: Fault) -> None:
        assert self.pipe is not None and self.pg is not None
        if f.kind.startswith("kill_"):
            name = f"edge-{f.target}" if f.kind == "kill_edge" else f.target
            f.evidence.update(self._kill(name))
        elif f.kind == "kafka_outage":
            before = self._edge_failures()
            self.kafka.proxy.stop()
            f.evidence.update(
                {"edge_failures_before": before, "connections_before": self.kafka.proxy.connections_total}
            )
        elif f.kind == "pg_restart":
            f.evidence["postmaster_pid_before"] = self.pg.postmaster_pid()
            self.pg.crash()
            f.evidence["postmaster_pid_down"] = self.pg.postmaster_pid()
        elif f.kind == "hostile":
            self._hostile(f)
        elif f.kind == "edge_disk_full":
            from plantstream.testing.edge import fill_disk

            if self.disk is None:
                raise RuntimeError("no edge filesystem mounted")
            f.evidence["filled_bytes"] = fill_disk(self.disk / "chaos-filler")
            f.evidence["free_bytes_after_fill"] = shutil.disk_usage(self.disk).free

    def _disk_states(self) -> dict[str, Any]:
        """Each edge's storage state from its /metrics (the status file sits on the full disk and
        cannot be rewritten there); the status file where the metrics do not answer (restarting)."""
        from plantstream.testing.edge import metric, scrape

        assert self.pipe is not None
        out: dict[str, Any] = {}
        for e in EDGES:
            try:
                m = scrape(self.pipe.edge_metrics_port(e))
            except OSError:
                buf = _status(_status_path(self.pipe, f"edge-{e}")).get("buffer", {})
                err = buf.get("storage_error")
                out[e] = {"state": err.get("state") if isinstance(err, dict) else None,
                          "held_readings": buf.get("held_readings", 0), "from": "status file"}  # fmt: skip
                continue
            kinds = sorted(
                dict(lbl)["kind"] for (n, lbl), v in m.items() if n == "plantstream_edge_buffer_storage_error" and v > 0
            )
            state = "disk_full" if "disk_full" in kinds else (kinds[0] if kinds else None)
            out[e] = {
                "state": state,
                "held_readings": int(metric(m, "plantstream_edge_held_readings")),
                "from": "metrics",
            }
        return out

    def _during(self, f: Fault) -> None:
        """Mid-fault evidence that the fault is in effect."""
        assert self.pg is not None
        if f.kind == "kafka_outage":
            f.evidence["proxy_refused_mid_outage"] = _refused(self.kafka.proxy.port)
        elif f.kind == "pg_restart":
            f.evidence["pg_refused_mid_outage"] = _refused(self.pg.port)
        elif f.kind == "edge_disk_full":
            f.evidence["mid_fault"] = self._disk_states()

    def _end(self, f: Fault) -> None:
        assert self.pipe is not None and self.pg is not None
        now = time.monotonic()
        if f.kind.startswith("kill_"):
            name = f"edge-{f.target}" if f.kind == "kill_edge" else f.target
            p = self._start(name)
            with self._lock:
                self.killed.discard(name)
            f.evidence["new_pid"] = p.popen.pid
            self.recoveries.append(Recovery(f, now, self._ready(name), now + 180))
        elif f.kind == "kafka_outage":
            f.evidence["edge_failures_at_end"] = self._edge_failures()
            f.evidence["edge_last_errors"] = self._edge_errors()
            conns = self.kafka.proxy.connections_total
            self.kafka.proxy.start()
            self.recoveries.append(Recovery(f, now, lambda: self.kafka.proxy.connections_total > conns, now + 120))
        elif f.kind == "edge_disk_full":
            from plantstream.testing.edge import fill_disk

            if self.disk is not None:
                # Freed meanwhile (deletes of delivered entries): taken too, so the disk stays full to the end.
                f.evidence["filled_bytes"] += fill_disk(self.disk / "chaos-filler")
                f.evidence["at_end"] = self._disk_states()
                (self.disk / "chaos-filler").unlink()

            def cleared() -> bool:
                return all(s["state"] is None for s in self._disk_states().values())

            self.recoveries.append(Recovery(f, now, cleared, now + 120))
        elif f.kind == "pg_restart":
            self.pg.start_again()
            f.evidence["postmaster_pid_after"] = self.pg.postmaster_pid()
            self.recoveries.append(Recovery(f, now, lambda: not _refused(self.pg.port) if self.pg else False, now + 60))

    def _judge(self, f: Fault) -> None:
        e = f.evidence
        if f.kind.startswith("kill_"):
            f.happened = bool(e.get("returncode") == -signal.SIGKILL and e.get("pid_gone")
                              and e.get("new_pid") not in (None, e.get("pid")) and f.recovered_s is not None)  # fmt: skip
        elif f.kind == "kafka_outage":
            timed_out = any("timed out" in s.lower() for s in e.get("edge_last_errors", {}).values())
            e["edge_message_timeouts_seen"] = timed_out
            f.happened = bool(e.get("proxy_refused_mid_outage") and timed_out and f.recovered_s is not None)
        elif f.kind == "pg_restart":
            before, after = e.get("postmaster_pid_before"), e.get("postmaster_pid_after")
            f.happened = bool(before and after and before != after and e.get("postmaster_pid_down") is None
                              and e.get("pg_refused_mid_outage") and f.recovered_s is not None)  # fmt: skip
        elif f.kind == "hostile":
            f.happened = e.get("acked") == e.get("sent") and bool(e.get("sent"))
        elif f.kind == "edge_disk_full":
            states = [s.get("state") for part in ("mid_fault", "at_end") for s in e.get(part, {}).values()]
            e["edges_reporting_disk_full"] = sum(
                1 for s in e.get("at_end", {}).values() if s.get("state") == "disk_full"
            )
            # The fault is the edge host's disk being full; whether an agent's writes then fail
            # depends on free pages inside its buffer file (a buffer Kafka keeps draining reuses
            # them), so reporting disk_full is recorded, not required: the ledger says whether
            # anything was lost. The edges' handling of failing writes is proven in edge/tests.
            e["edges_saw_disk_full"] = "disk_full" in states
            f.happened = bool(e.get("filled_bytes")) and e.get("free_bytes_after_fill", 1) < 1 << 20
            f.happened = f.happened and f.recovered_s is not None

    def _edge_failures(self) -> dict[str, int]:
        assert self.pipe is not None
        return {e: int(_status(_status_path(self.pipe, f"edge-{e}")).get("kafka", {}).get("failures", 0))
                for e in EDGES}  # fmt: skip

    def edge_states(self) -> dict[str, dict[str, Any]]:
        """Every edge agent's buffer depth and Kafka state from its status file (at the end: what is still buffered)."""
        assert self.pipe is not None
        out = {}
        for e in EDGES:
            st = _status(_status_path(self.pipe, f"edge-{e}"))
            k = st.get("kafka", {})
            out[e] = {"buffered_readings": int(st.get("buffer", {}).get("readings", 0)),
                      "delivered_readings": int(k.get("delivered_readings", 0)), "kafka_healthy": k.get("healthy"),
                      "kafka_failures": k.get("failures"), "last_error": k.get("last_error", "")}  # fmt: skip
        return out

    def _edge_errors(self) -> dict[str, str]:
        assert self.pipe is not None
        return {e: str(_status(_status_path(self.pipe, f"edge-{e}")).get("kafka", {}).get("last_error", ""))
                for e in EDGES}  # fmt: skip

    def _hostile(self, f: Fault) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        burst = sum(1 for x in self.faults if x.kind == "hostile" and x.started_s is not None)
        items = hostile_payloads(self.logger_root, burst, self.cfg.hostile_per_burst, time.time_ns() // 1000)
        url = urlsplit(self.settings.mqtt)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chaos-hostile-{self.logger_root}-{burst}")
        client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=30)
        client.loop_start()
        try:
            infos = [client.publish(h.topic, h.payload, qos=1) for h in items]
            deadline = time.monotonic() + 15
            for info in infos:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            acked = sum(1 for info in infos if info.is_published())
        finally:
            client.disconnect()
            client.loop_stop()
        self.hostiles += items
        f.evidence.update({"sent": len(items), "acked": acked, "kinds": sorted({h.kind for h in items})})

    def play(self) -> None:
        """The schedule, in order (faults do not overlap by construction), then the load's end."""
        n = len(self.faults)
        for i, f in enumerate(self.faults, 1):
            self._sleep_until(f.at_s)
            f.started_s = round(self._now(), 2)
            self.progress(f"  [{f.started_s:6.1f} s] fault {i}/{n}: {f.kind} {f.target} for {f.duration_s:g} s")
            try:
                self._begin(f)
                if f.duration_s > 0:
                    self._sleep_until(f.started_s + f.duration_s / 2)
                    self._during(f)
                    self._sleep_until(f.started_s + f.duration_s)
                self._end(f)
            except Exception as exc:  # a fault that could not be made is reported, the run goes on
                f.error = repr(exc)
                log.exception("chaos: fault failed", extra={"kv": {"kind": f.kind, "target": f.target}})
            f.ended_s = round(self._now(), 2)
            log.info("chaos fault", extra={"kv": {"kind": f.kind, "target": f.target, "at_s": f.started_s,
                                                  "duration_s": f.duration_s, "evidence": f.evidence}})  # fmt: skip
        deadline = time.monotonic() + 240
        while self.recoveries and time.monotonic() < deadline:
            self._tick()
            time.sleep(0.2)
        self._sleep_until(self.cfg.load_s)
        for f in self.faults:
            self._judge(f)

    # --- drain and compare ----------------------------------------------------------------------

    def wait_load_done(self) -> None:
        assert self.pipe is not None
        wait_for(self.pipe.sims_finished, 120, "the simulators to finish", self._supervise)
        for w in self.publishers:
            wait_for(partial(_exited, w), 60, f"{w.name} to finish")
            w.check()

    def drain(self, expected: int) -> int:
        """Wait until the database holds ``expected`` readings (of this run's ledgers), or stops growing."""
        assert self.pg is not None
        import psycopg

        deadline = time.monotonic() + self.cfg.drain_timeout_s
        last, last_change = -1, time.monotonic()
        n = 0
        while time.monotonic() < deadline:
            self._tick()
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.pg.dsn, connect_timeout=5) as conn:
                row = conn.execute("SELECT count(*) FROM readings").fetchone()
                n = int(row[0]) if row else 0
            if n >= expected:
                break
            if n != last:
                last, last_change = n, time.monotonic()
                self.progress(f"  drain: {n:,} of {expected:,} readings in the database")
            elif time.monotonic() - last_change > self.cfg.idle_timeout_s:
                break
            time.sleep(2.0)
        return n

    def stop(self) -> None:
        for w in self.publishers:
            with contextlib.suppress(Exception):
                w.stop()
        if self.pipe is not None:
            with contextlib.suppress(Exception):
                self.pipe.stop()
        with contextlib.suppress(Exception):
            self._stack.close()  # the edges' tmpfs, once nothing has a file open on it
        if self.kafka is not None:
            with contextlib.suppress(Exception):
                self.kafka.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop()


def _said_ready(w: Worker) -> bool:
    return any(x.get("ready") for x in w.lines())


def _exited(w: Worker) -> bool:
    return w.popen.poll() is not None


def _status_path(pipe: Pipeline, name: str) -> Path:
    return pipe.workdir / "edge-state" / name.removeprefix("edge-") / "buffer.status.json"


# --- the ledger check --------------------------------------------------------------------------------

Key = tuple[str, str, int]


@dataclass
class Expected:
    value: Any
    unit: str
    bad: bool  # stored flagged BAD (a dropout, a NaN, a year-9999 stamp)
    transport: str


def load_expected(pipe: Pipeline, logger_ledgers: list[Path], hostiles: list[Hostile]) -> dict[Key, Expected]:
    from plantstream.sim.ledger import read_ledger

    units = pipe.ledger_units()
    out: dict[Key, Expected] = {}
    for plant in pipe.plants:
        for rec in read_ledger(pipe.ledger(plant)):
            if "tag" in rec and "event" not in rec:
                key = (rec["plant"], rec["tag"], int(rec["ts_us"]))
                bad = rec.get("quality") == "bad" or rec["value"] is None
                out[key] = Expected(rec["value"], units.get((plant, rec["tag"]), ""), bad, rec.get("transport", ""))
    for path in logger_ledgers:
        with contextlib.suppress(FileNotFoundError), path.open() as f:
            for line in f:
                if not line.endswith("\n"):
                    continue  # a partial last line of a killed writer
                rec = json.loads(line)
                for k, v in enumerate(rec["values"]):
                    out[(LOGGER_PLANT, rec["tag"], int(rec["ts_us"]) + k)] = Expected(v, "degC", False, "mqtt")
    for h in hostiles:
        if h.expect == "bad" and h.ts_us is not None:
            out[(LOGGER_PLANT, h.tag, h.ts_us)] = Expected(h.value, "degC", True, "mqtt")
    return out


def db_rows(dsn: str) -> tuple[dict[Key, tuple[Any, int]], int]:
    """(plant, tag, ts_us) -> (value, quality) of every stored reading, and how many keys occur twice."""
    import psycopg

    sql = """SELECT t.plant, t.tag, (extract(epoch FROM r.time) * 1000000)::bigint, r.v_float, r.v_int, r.v_bool,
                    r.v_text, r.quality FROM readings r JOIN tags t ON t.id = r.tag_id"""
    out: dict[Key, tuple[Any, int]] = {}
    twice = 0
    with psycopg.connect(dsn) as conn:
        for plant, tag, ts_us, vf, vi, vb, vt, q in conn.execute(sql):
            key = (plant, tag, int(ts_us))
            if key in out:
                twice += 1
            out[key] = (next(v for v in (vf, vi, vb, vt) if v is not None), int(q))
    return out, twice


def gap_marker_keys(dsn: str) -> set[Key]:
    """Keys of the OPC-UA gap markers an edge wrote (StatusCode BadNoCommunication, edge/opcua):
    not readings of any ledger, so counted apart from the unexpected rows."""
    import psycopg

    sql = """SELECT t.plant, t.tag, (extract(epoch FROM r.time) * 1000000)::bigint
             FROM readings r JOIN tags t ON t.id = r.tag_id WHERE r.status_code = %s"""
    with psycopg.connect(dsn) as conn:
        return {(p, tag, int(ts)) for p, tag, ts in conn.execute(sql, (BAD_NO_COMMUNICATION,))}


def aggregate_mismatches(dsn: str, table: str, width: str) -> tuple[int, int, list[tuple[Any, ...]]]:
    """(aggregate rows, rows whose count/bad_count differ from the readings of their window, examples)."""
    import psycopg

    sql = f"""
        SELECT t.plant, t.tag, a.start, a.count, a.bad_count, r.good, r.bad
        FROM {table} a JOIN tags t ON t.id = a.tag_id
        CROSS JOIN LATERAL (
            SELECT count(*) FILTER (WHERE quality < 2) AS good, count(*) FILTER (WHERE quality = 2) AS bad
            FROM readings WHERE tag_id = a.tag_id AND time >= a.start AND time < a.start + interval '{width}'
        ) r
        WHERE (a.count, a.bad_count) IS DISTINCT FROM (r.good, r.bad)
    """
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        bad = list(conn.execute(sql).fetchall())
    return (int(row[0]) if row else 0), len(bad), [tuple(str(x) for x in b) for b in bad[:5]]


def windows_without_aggregate(dsn: str, table: str, unit: str, margin: str) -> int:
    """1 s / 1 min windows holding readings but no aggregate row, older than ``margin`` before the
    newest reading of the run (the last windows may still be open when the load stops)."""
    import psycopg

    sql = f"""
        WITH w AS (
            SELECT DISTINCT r.tag_id, date_trunc('{unit}', r.time) AS start FROM readings r
            WHERE r.time < (SELECT max(time) FROM readings WHERE time < now() + interval '1 day') - interval '{margin}'
        )
        SELECT count(*) FROM w WHERE NOT EXISTS (SELECT 1 FROM {table} a WHERE a.tag_id = w.tag_id AND a.start = w.start)
    """
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def conflicts(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM reading_conflicts").fetchone()
        return int(row[0]) if row else 0


def same_value(want: Expected, got: Any) -> bool:
    from plantstream.domain.units import compile_converter

    if want.value is None:  # a dropout or a NaN: delivered as NaN, never the last good value
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want.value, float):
        want_c = compile_converter(want.unit)(want.value)
        return isinstance(got, float) and math.isclose(got, want_c, rel_tol=1e-12, abs_tol=1e-12)
    return bool(got == want.value and type(got) is type(want.value))


def _idle(quiet_s: float) -> Callable[[list[Any]], bool]:
    """A ``done`` for read_topic: true once no new message came for ``quiet_s`` (the topic is read to its end)."""
    state = {"n": -1, "since": time.monotonic()}

    def done(msgs: list[Any]) -> bool:
        if len(msgs) != state["n"]:
            state["n"], state["since"] = len(msgs), time.monotonic()
        return time.monotonic() - state["since"] > quiet_s

    return done


def topic_keys(bootstrap: str, topic: str, keys: set[Key], timeout: float = 60.0) -> set[Key]:
    """Which of ``keys`` occur in a readings topic (to say which stage lost a reading)."""
    from plantstream.testing.edge import batches, read_topic

    msgs = read_topic(bootstrap, topic, _idle(5.0), timeout=timeout)
    found: set[Key] = set()
    for b in batches(msgs):
        for tag, ts in zip(b.tag, b.ts_us, strict=True):
            if (b.plant, tag, ts) in keys:
                found.add((b.plant, tag, ts))
    return found


def dead_letters(bootstrap: str, topic: str, hostiles: list[Hostile], timeout: float = 60.0) -> dict[str, list[str]]:
    """Hostile topic -> reasons of the dead letters whose origin names it."""
    from plantstream.producers.topics import DEADLETTER_ORIGIN_HEADER, DEADLETTER_REASON_HEADER
    from plantstream.testing.edge import read_topic

    want = {h.topic for h in hostiles if h.expect == "deadletter"}
    out: dict[str, list[str]] = {}

    def parse(m: Any) -> tuple[str, str]:
        hdrs = {k: (v or b"").decode(errors="replace") for k, v in (m.headers() or [])}
        origin = hdrs.get(DEADLETTER_ORIGIN_HEADER, "")
        return origin.split(":", 1)[-1], hdrs.get(DEADLETTER_REASON_HEADER, "")

    idle = _idle(10.0)

    def done(msgs: list[Any]) -> bool:
        return want <= {parse(m)[0] for m in msgs} or idle(msgs)

    for m in read_topic(bootstrap, topic, done, timeout=timeout):
        origin, reason = parse(m)
        if origin in want:
            out.setdefault(origin, []).append(reason)
    return out


@dataclass
class Verdict:
    emitted: int = 0
    emitted_by_source: dict[str, int] = field(default_factory=dict)
    in_db: int = 0
    lost: int = 0
    lost_by_stage: dict[str, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)
    lost_groups: list[dict[str, Any]] = field(default_factory=list)
    edges_at_end: dict[str, dict[str, Any]] = field(default_factory=dict)
    opcua_unobserved: int = 0
    duplicated: int = 0
    conflicts: int = 0
    unexpected: int = 0
    gap_markers: int = 0  # OPC-UA gap markers stored (status BadNoCommunication): expected, not readings
    unexpected_examples: list[str] = field(default_factory=list)
    value_mismatches: int = 0
    mismatch_examples: list[str] = field(default_factory=list)
    aggregates: dict[str, Any] = field(default_factory=dict)
    hostile: list[dict[str, Any]] = field(default_factory=list)
    faults_happened: int = 0
    faults_total: int = 0

    @property
    def ledger_ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.unexpected == 0 and self.value_mismatches == 0

    @property
    def aggregates_ok(self) -> bool:
        return all(v.get("mismatched", 0) == 0 for v in self.aggregates.values() if isinstance(v, dict))

    @property
    def hostile_ok(self) -> bool:
        return bool(self.hostile) and all(h["ok"] for h in self.hostile)

    @property
    def ok(self) -> bool:
        return self.ledger_ok and self.aggregates_ok and self.hostile_ok


def unobserved_windows(chaos: Chaos, first_stamp: dict[str, int]) -> dict[str, list[tuple[int, int]]]:
    """Per plant, the spans of sample stamps (us) its simulator served while its edge agent was dead
    (kill until the restarted agent was connected), +-2 s. The simulator anchors its stamps to the
    start of its loop (the release) and never stamps after the wall clock, so a stamp is the wall
    time it was served at (speed 1); only sample 0 is stamped before the release."""
    out: dict[str, list[tuple[int, int]]] = {}
    for f in chaos.faults:
        if f.kind == "kill_edge" and f.target in PLANTS and f.started_s is not None and f.target in first_stamp:
            end = f.recovered_s if f.recovered_s is not None else f.ended_s or f.started_s
            out.setdefault(f.target, []).append(
                (chaos.wall_us(f.started_s) - 2_000_000, chaos.wall_us(end) + 2_000_000)
            )
    return out


def first_stamps(expected: dict[Key, Expected]) -> dict[str, int]:
    out: dict[str, int] = {}
    for plant, _tag, ts in expected:
        if plant in PLANTS and ts < out.get(plant, 1 << 62):
            out[plant] = ts
    return out


def lost_summary(
    chaos: Chaos, lost: set[Key], expected: dict[Key, Expected], first: dict[str, int]
) -> list[dict[str, Any]]:
    """Lost readings per plant and transport, with the span of their emission (seconds since the
    load started), to name the fault they follow."""
    groups: dict[tuple[str, str], list[int]] = {}
    for key in lost:
        groups.setdefault((key[0], expected[key].transport), []).append(key[2])
    out = []
    for (plant, transport), stamps in sorted(groups.items()):
        t = sorted((ts - chaos.t0_wall_us) / 1e6 for ts in stamps)  # stamps are wall times (see above)
        out.append({"plant": plant, "transport": transport, "readings": len(stamps),
                    "emitted_from_s": round(t[0], 1), "emitted_to_s": round(t[-1], 1)})  # fmt: skip
    return out


def compare(chaos: Chaos) -> Verdict:
    assert chaos.pipe is not None and chaos.pg is not None
    v = Verdict(faults_total=len(chaos.faults), faults_happened=sum(f.happened for f in chaos.faults))
    ledgers = [chaos._logger_ledger(i) for i in range(chaos.cfg.logger_publishers)]
    expected = load_expected(chaos.pipe, ledgers, chaos.hostiles)
    v.emitted = len(expected)
    v.emitted_by_source = dict(Counter(f"{k[0]}/{e.transport}" for k, e in expected.items()))
    got, v.duplicated = db_rows(chaos.pg.dsn)
    v.in_db = len(got)
    v.conflicts = conflicts(chaos.pg.dsn)
    first = first_stamps(expected)
    windows = unobserved_windows(chaos, first)
    lost: set[Key] = set()
    for key, want in expected.items():
        if key not in got:
            spans = windows.get(key[0], [])
            if want.transport == "opcua" and any(a <= key[2] <= b for a, b in spans):
                v.opcua_unobserved += 1
            else:
                lost.add(key)
            continue
        value, quality = got[key]
        ok = (quality == 2 if want.bad else quality < 2) and same_value(want, value)
        if not ok:
            v.value_mismatches += 1
            if len(v.mismatch_examples) < 5:
                v.mismatch_examples.append(f"{key}: want {want.value!r} bad={want.bad}, got {value!r} q={quality}")
    v.lost = len(lost)
    v.lost_examples = [str(k) for k in sorted(lost)[:5]]
    v.lost_groups = lost_summary(chaos, lost, expected, first)
    v.edges_at_end = chaos.edge_states()
    with (chaos.work / "lost.jsonl").open("w") as f:
        for key in sorted(lost)[:200_000]:
            f.write(
                json.dumps({"plant": key[0], "tag": key[1], "ts_us": key[2], "transport": expected[key].transport})
                + "\n"
            )
    markers = gap_marker_keys(chaos.pg.dsn)
    v.gap_markers = len(markers - set(expected))
    extra = sorted(set(got) - set(expected) - markers)
    v.unexpected = len(extra)
    v.unexpected_examples = [str(k) for k in extra[:5]]
    if lost:
        # Where did they go missing: never on the raw topic (edge), on raw but not clean (streams),
        # on clean but not in the database (sink).
        on_raw = topic_keys(chaos.settings.kafka_bootstrap, f"{chaos.prefix}.readings.raw.v1", lost)
        on_clean = topic_keys(chaos.settings.kafka_bootstrap, f"{chaos.prefix}.readings.clean.v1", lost)
        v.lost_by_stage = {"edge (not on raw)": len(lost - on_raw), "streams (raw, not clean)": len(on_raw - on_clean),
                           "sink (clean, not in db)": len(on_clean)}  # fmt: skip
    for table, width, unit, margin in (("aggregates_1s", "1 second", "second", "10 seconds"),
                                       ("aggregates_1m", "1 minute", "minute", "3 minutes")):  # fmt: skip
        rows, bad, examples = aggregate_mismatches(chaos.pg.dsn, table, width)
        v.aggregates[table] = {"rows": rows, "mismatched": bad, "examples": examples,
                               "windows_without_row": windows_without_aggregate(chaos.pg.dsn, table, unit, margin)}  # fmt: skip
    dls = dead_letters(chaos.settings.kafka_bootstrap, f"{chaos.prefix}.deadletter.v1", chaos.hostiles)
    for h in chaos.hostiles:
        if h.expect == "deadletter":
            reasons = dls.get(h.topic, [])
            ok = bool(reasons) and all(h.reason in r for r in reasons)
            v.hostile.append({"kind": h.kind, "tag": h.tag, "expect": "dead-lettered", "dead_letters": len(reasons),
                              "reason": reasons[0] if reasons else "", "ok": ok})  # fmt: skip
        else:
            key = (LOGGER_PLANT, h.tag, h.ts_us or 0)
            row = got.get(key)
            ok = row is not None and row[1] == 2
            v.hostile.append({"kind": h.kind, "tag": h.tag, "expect": "stored BAD", "dead_letters": 0,
                              "reason": f"quality {row[1]}" if row else "not stored", "ok": ok})  # fmt: skip
    return v


# --- the run and its report -------------------------------------------------------------------


@dataclass
class ChaosResult:
    config: ChaosConfig
    started: str
    faults: list[Fault]
    verdict: Verdict
    unplanned: list[dict[str, Any]]
    duration_s: float
    not_included: list[str]
    work: str

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    def to_json(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "started": self.started,
            "config": asdict(self.config),
            "seed": self.config.seed,
            "duration_s": self.duration_s,
            "ok": self.ok,
            "ledger_ok": v.ledger_ok,
            "aggregates_ok": v.aggregates_ok,
            "hostile_ok": v.hostile_ok,
            "faults": [asdict(f) for f in self.faults],
            "verdict": asdict(v),
            "unplanned_exits": self.unplanned,
            "not_included": self.not_included,
            "work": self.work,
        }


def markdown(r: ChaosResult) -> str:
    v = r.verdict
    c = r.config

    def yes(b: bool) -> str:
        return "yes" if b else "**NO**"

    lines = [
        f"# plantstream bench --chaos - {r.started}",
        "",
        f"Seed **{c.seed}**, {c.minutes:g} min of load and faults, {r.duration_s:.0f} s in all. Three plant "
        f"simulators at {c.plant_rate_hz:g} samples/s per tag + {c.logger_publishers} data loggers x "
        f"{c.logger_msgs_per_s:g} msgs/s x {c.logger_per_message} readings; edges' message.timeout.ms "
        f"{c.message_timeout_ms}.",
        "",
        f"**Verdict: {'PASS' if r.ok else 'FAIL'}** - ledger {yes(v.ledger_ok)}, aggregates {yes(v.aggregates_ok)}, "
        f"hostile payloads {yes(v.hostile_ok)}; faults that happened as scheduled {v.faults_happened}/{v.faults_total}.",
        "",
        "| count | value |",
        "|---|---|",
        f"| readings emitted (ledgers) | {v.emitted:,} ({', '.join(f'{k} {n:,}' for k, n in sorted(v.emitted_by_source.items()))}) |",
        f"| readings in the database | {v.in_db:,} |",
        f"| lost | {v.lost:,} {json.dumps(v.lost_by_stage) if v.lost_by_stage else ''} |",
        f"| OPC-UA samples served while the plant's edge was dead (no subscriber; not replayed) | {v.opcua_unobserved:,} |",
        f"| duplicated (a key stored twice) | {v.duplicated:,} |",
        f"| reading conflicts (a key re-sent with another value) | {v.conflicts:,} |",
        f"| unexpected (in the database, in no ledger; gap markers apart) | {v.unexpected:,} |",
        f"| OPC-UA gap markers stored (BadNoCommunication, said where the edge could not observe) | {v.gap_markers:,} |",
        f"| values differing | {v.value_mismatches:,} |",
    ]
    for table, a in v.aggregates.items():
        lines.append(f"| {table}: rows / disagreeing with their readings / closed windows without a row | "
                     f"{a['rows']:,} / {a['mismatched']:,} / {a['windows_without_row']:,} |")  # fmt: skip
    lines += ["", "## Schedule", "", "| # | fault | target | planned at s | duration s | actual start-end s | "
              "recovered at s | happened | evidence |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, f in enumerate(r.faults, 1):
        ev = json.dumps(f.evidence, default=str)
        if len(ev) > 300:
            ev = ev[:300] + "..."
        err = f" error: {f.error}" if f.error else ""
        lines.append(f"| {i} | {f.kind} | {f.target} | {f.at_s:.1f} | {f.duration_s:g} | {f.started_s}-{f.ended_s} | "
                     f"{f.recovered_s} | {yes(f.happened)} | `{ev}`{err} |")  # fmt: skip
    lines += ["", "## Hostile payloads", "", "| kind | tag | expected | dead letters | reason / stored | ok |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for h in v.hostile:
        lines.append(f"| {h['kind']} | {h['tag']} | {h['expect']} | {h['dead_letters']} | {h['reason'][:90]} | "
                     f"{yes(h['ok'])} |")  # fmt: skip
    if v.lost_groups:
        lines += ["", "## Lost readings by source", "", "| plant | transport | readings | emitted from-to s |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {g['plant']} | {g['transport']} | {g['readings']:,} | {g['emitted_from_s']}-{g['emitted_to_s']} |"
                  for g in v.lost_groups]  # fmt: skip
    if v.edges_at_end:
        lines += ["", "## Edge agents at the end", "", "| edge | still buffered | delivered (this process) | Kafka healthy | "
                  "failures | last error |", "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {e} | {s['buffered_readings']:,} | {s['delivered_readings']:,} | {s['kafka_healthy']} | "
                  f"{s['kafka_failures']} | {s['last_error'][:100]} |" for e, s in v.edges_at_end.items()]  # fmt: skip
    if r.unplanned:
        lines += ["", "## Unplanned exits (restarted by the run)", ""]
        lines += [f"- {u['name']} exited {u['returncode']} at {u['at_s']} s" for u in r.unplanned]
    if v.lost_examples or v.unexpected_examples or v.mismatch_examples:
        lines += ["", "## Examples", ""]
        lines += [f"- lost {x}" for x in v.lost_examples] + [f"- unexpected {x}" for x in v.unexpected_examples]
        lines += [f"- differs {x}" for x in v.mismatch_examples]
    if r.not_included:
        lines += ["", "## Not included", ""] + [f"- {x}" for x in r.not_included]
    return "\n".join(lines) + "\n"


def run(settings: Settings, out: Path, cfg: ChaosConfig, progress: Callable[[str], None] | None = None) -> ChaosResult:
    """Run the chaos (everything started here is stopped before returning or raising)."""
    say = progress or (lambda line: None)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    t_start = time.monotonic()
    chaos = Chaos(settings, out, cfg, say)
    say(f"chaos: seed {cfg.seed}, {len(chaos.faults)} faults over {cfg.load_s:.0f} s of load")
    try:
        chaos.start()
        chaos.play()
        say("chaos: load done; waiting for the pipeline to drain")
        chaos.wait_load_done()
        ledgers = [chaos._logger_ledger(i) for i in range(cfg.logger_publishers)]
        assert chaos.pipe is not None
        expected = len(load_expected(chaos.pipe, ledgers, chaos.hostiles))
        chaos.drain(expected)
        say("chaos: comparing the database with the ledgers")
        verdict = compare(chaos)
        chaos._supervise()
    finally:
        chaos.stop()
    not_included = [chaos.disk_note] if chaos.disk_note else []
    return ChaosResult(cfg, started, chaos.faults, verdict, chaos.unplanned, round(time.monotonic() - t_start, 1),
                       not_included, str(chaos.work))  # fmt: skip


def run_and_report(settings: Settings, out: Path, cfg: ChaosConfig,
                   progress: Callable[[str], None] | None = None) -> ChaosResult:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    # SIGTERM (a CI timeout) unwinds like an error, so every process and the cluster are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = run(settings, out, cfg, progress)
    (out / "chaos.json").write_text(json.dumps(res.to_json(), indent=1, default=str))
    (out / "chaos.md").write_text(markdown(res))
    return res


# --- the logger worker: MQTT JSON arrays with a ledger ---------------------------------------------


def logger_main(a: argparse.Namespace) -> None:
    """Publish ``--per-message`` readings per JSON array at ``--rate`` msgs/s over QoS 1 and write
    one ledger line per message (tag, first timestamp, values; reading k is 1 us after the first).
    Timestamps are unique per tag (bumped past the tag's last when the clock has not moved)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chaos-pub-{a.root}")
    client.max_inflight_messages_set(1000)
    connected = threading.Event()
    done = [0]
    client.on_connect = lambda *_args: connected.set()

    def on_publish(*_args: Any) -> None:
        done[0] += 1

    client.on_publish = on_publish
    client.connect(a.host, a.port, keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit(f"logger: broker {a.host}:{a.port} not reachable")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    topics = [
        (f"t{i}", f"{a.root}/{LOGGER_EQUIPMENT}/u{i % 10}/t{i}") for i in range(a.first_tag, a.first_tag + a.tags)
    ]
    last_ts: dict[str, int] = {}
    print(json.dumps({"t": time.time(), "ready": True}), flush=True)
    sent = 0
    start = time.monotonic()
    next_say = start + 1.0
    with open(a.ledger, "w", buffering=1 << 16) as ledger:
        while not stopped.is_set() and time.monotonic() - start < a.seconds:
            if sent >= (time.monotonic() - start) * a.rate:
                time.sleep(0.005)
                continue
            tag, topic = topics[sent % len(topics)]
            ts = max(time.time_ns() // 1000, last_ts.get(tag, 0) + a.per_message)
            last_ts[tag] = ts
            values = [round(sent * 0.5 + k * 0.01, 2) for k in range(a.per_message)]
            payload = "[" + ",".join(
                f'{{"ts_us":{ts + k},"value":{v!r},"unit":"degC","quality":"good"}}' for k, v in enumerate(values)
            ) + "]"  # fmt: skip
            client.publish(topic, payload.encode(), qos=1)
            ledger.write(json.dumps({"tag": tag, "ts_us": ts, "values": values}) + "\n")
            sent += 1
            if time.monotonic() >= next_say:
                next_say += 1.0
                print(json.dumps({"t": time.time(), "sent": sent, "done": done[0]}), flush=True)
    deadline = time.monotonic() + 30
    while done[0] < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps({"t": time.time(), "sent": sent, "done": done[0], "finished": True}), flush=True)
    client.disconnect()
    client.loop_stop()
    if done[0] < sent:
        raise SystemExit(f"logger: {sent - done[0]} of {sent} messages not acknowledged by the broker")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m plantstream.bench.chaos")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("logger")
    lg.add_argument("--host", default="127.0.0.1")
    lg.add_argument("--port", type=int, required=True)
    lg.add_argument("--root", required=True)
    lg.add_argument("--tags", type=int, default=100)
    lg.add_argument("--first-tag", type=int, default=0)
    lg.add_argument("--per-message", type=int, default=20)
    lg.add_argument("--rate", type=float, required=True, help="messages/s")
    lg.add_argument("--seconds", type=float, required=True)
    lg.add_argument("--ledger", type=Path, required=True)
    a = ap.parse_args(argv)
    logger_main(a)


if __name__ == "__main__":
    main()
