"""Run the whole pipeline as real processes: simulators, edge agents, streams worker, sink (and the
monitor when present). Used by ``plantstream demo`` and by the end-to-end tests, so the demo a
user runs is exactly what the tests check."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plantstream.config import KafkaSecurity, Settings
from plantstream.stack import port_open

log = logging.getLogger(__name__)

SIM_PORTS = {"steel": 4841, "chemical": 4842, "fiber": 4843}


def wait_for(cond: Callable[[], Any], timeout: float, what: str, check: Callable[[], None] | None = None) -> Any:
    """Poll ``cond`` until truthy; TimeoutError naming ``what`` otherwise; ``check`` raises on a dead child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if check is not None:
            check()
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    logfile: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Pipeline:
    settings: Settings
    workdir: Path
    plants: Sequence[str] = ("steel", "chemical", "fiber")
    seed: int = 7
    speed: float = 1.0
    rate: float | None = None
    sim_ports: dict[str, int] = field(default_factory=lambda: dict(SIM_PORTS))
    monitor_port: int | None = None
    # Per plant, simulator --fault options (TAG:KIND:SECONDS@AT), e.g. to show deviations in a demo.
    faults: dict[str, list[str]] = field(default_factory=dict)
    # Per plant, more simulator options (e.g. --no-mes); and a streams worker config file.
    sim_args: dict[str, list[str]] = field(default_factory=dict)
    streams_config: Path | None = None
    # Edge agents serve Prometheus /metrics on a free port (written to their status file).
    edge_metrics: bool = False
    procs: list[Proc] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **{k: v for k, v in os.environ.items() if k not in KafkaSecurity.ENV.values()},
            **s.kafka.to_env(),
            "PLANTSTREAM_DB_DSN": s.dsn,
            "PLANTSTREAM_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "PLANTSTREAM_MQTT_URL": s.mqtt,
            "PLANTSTREAM_TOPIC_PREFIX": s.topic_prefix,
            "PLANTSTREAM_PARTITIONS": str(s.partitions),
            "PLANTSTREAM_STATE_DIR": str(s.state_dir),
            "PLANTSTREAM_LOG_FORMAT": os.environ.get("PLANTSTREAM_LOG_FORMAT", "json"),
            "PYTHONUNBUFFERED": "1",
        }

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        logfile = logs / f"{name}.log"
        argv = [sys.executable, "-m", "plantstream.cli", *args]
        with open(logfile, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or self.env(),
                start_new_session=True,
            )
        proc = Proc(name, popen, logfile)
        self.procs.append(proc)
        log.info("started %s", name, extra={"kv": {"pid": popen.pid, "log": str(logfile)}})
        return proc

    # --- stages ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Topics and schema exist before anything produces or consumes."""
        from plantstream.producers.kafka import ensure_contract_topics
        from plantstream.producers.topics import Topics

        self.workdir.mkdir(parents=True, exist_ok=True)
        ensure_contract_topics(
            self.settings.kafka_bootstrap,
            Topics(self.settings.topic_prefix, self.settings.partitions),
            security=self.settings.kafka,
        )
        out = subprocess.run(
            [sys.executable, "-m", "plantstream.cli", "--log-format", "text", "db", "migrate"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"`plantstream db migrate` failed (exit {out.returncode}):\n{out.stderr.strip()}")

    def ledger(self, plant: str) -> Path:
        return self.workdir / f"ledger-{plant}.jsonl"

    def start_sims(self, duration: float | None = None, paused: bool = False) -> None:
        """Start one simulator per plant; ``paused`` ones serve their address space but emit
        nothing until ``release_sims()``, so a test can wait until every edge is subscribed."""
        for plant in self.plants:
            args = [
                "sim",
                plant,
                "--seed",
                str(self.seed),
                "--speed",
                str(self.speed),
                "--opcua-port",
                str(self.sim_ports[plant]),
                "--mqtt-url",
                self.settings.mqtt,
                "--ledger",
                str(self.ledger(plant)),
            ]
            if self.rate is not None:
                args += ["--rate", str(self.rate)]
            if duration is not None:
                args += ["--duration", str(duration)]
            if paused:
                args.append("--paused")
            for fault in self.faults.get(plant, []):
                args += ["--fault", fault]
            args += self.sim_args.get(plant, [])
            self.spawn(f"sim-{plant}", *args)
        for plant in self.plants:
            self.wait_port(self.sim_ports[plant], f"simulator {plant}", 60)

    def sim_endpoint(self, plant: str) -> str:
        return f"opc.tcp://127.0.0.1:{self.sim_ports[plant]}/plantstream/{plant}"

    def release_sims(self) -> None:
        for plant in self.plants:
            subprocess.run(
                [sys.executable, "-m", "plantstream.cli", "sim", "start", "--endpoint", self.sim_endpoint(plant)],
                env=self.env(),
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=60,
            )

    def sims_finished(self) -> bool:
        sims = [p for p in self.procs if p.name.startswith("sim-")]
        for p in sims:
            if p.popen.poll() not in (None, 0):
                raise RuntimeError(f"{p.name} failed with {p.popen.returncode}:\n{p.tail()}")
        return all(p.popen.poll() == 0 for p in sims)

    def ledger_units(self) -> dict[tuple[str, str], str]:
        from plantstream.sim.catalog import CATALOGS

        return {(plant, t.tag): t.unit for plant in self.plants for t in CATALOGS[plant]}

    def edges_ready(self) -> bool:
        """Every edge source connected (OPC-UA monitored items created, MQTT subscriptions granted)."""
        import json

        self.check_alive()
        for plant in self.plants:
            status_file = self.workdir / "edge-state" / plant / "buffer.status.json"
            try:
                status = json.loads(status_file.read_text())
            except (OSError, ValueError):
                return False
            sources = status.get("sources", [])
            if not sources or not all(src.get("connected") for src in sources):
                return False
        return True

    def edge_config(self, plant: str) -> Path:
        from plantstream.sim.edgeconfig import config_for_sim, dump_config

        # The MQTT session is this pipeline's (its topic prefix): a run that stopped its edge agents
        # leaves a persistent session queuing the simulators' messages on the shared broker, and a
        # later run under the same client id was handed them (extra readings in a fresh database).
        cfg = config_for_sim(plant, self.sim_endpoint(plant), self.settings.mqtt, session=self.settings.topic_prefix)
        # Each agent's buffer and status file in a known place, so supervisors can read its status.
        update: dict[str, Any] = {
            "buffer": cfg.buffer.model_copy(update={"path": self.workdir / "edge-state" / plant / "buffer.db"})
        }
        if self.edge_metrics:
            update["metrics_port"] = 0
        cfg = cfg.model_copy(update=update)
        path = self.workdir / f"edge-{plant}.yaml"
        dump_config(cfg, path)
        return path

    def start_edges(self) -> None:
        for plant in self.plants:
            self.spawn(f"edge-{plant}", "edge", "run", "--config", str(self.edge_config(plant)))

    def start_streams(self, workers: int = 1) -> None:
        for i in range(workers):
            extra = ["--config", str(self.streams_config)] if self.streams_config is not None else []
            self.spawn(f"streams-{i}", "streams", "worker", *extra)

    def start_sink(self) -> None:
        self.spawn("sink", "sink", "run")

    def start_monitor(self, port: int) -> None:
        self.monitor_port = port
        self.spawn("monitor", "monitor", "--host", "127.0.0.1", "--port", str(port))

    def start_all(self, sim_duration: float | None = None, monitor_port: int | None = None) -> None:
        self.prepare()
        self.start_sink()
        self.start_streams()
        if monitor_port is not None:
            self.start_monitor(monitor_port)
        self.start_sims(sim_duration)
        self.start_edges()

    def run_ledgered(self, sim_duration: float, connect_timeout: float = 90.0) -> None:
        """The run the end-to-end tests check against the simulators' ledgers: sink and streams up,
        simulators paused until every edge source is subscribed (no sample is emitted before it
        can be read), then released; returns once the simulators finished their run."""
        self.prepare()
        self.start_sink()
        self.start_streams()
        self.start_sims(duration=sim_duration, paused=True)
        self.start_edges()
        wait_for(self.edges_ready, connect_timeout, "edge agents connected and subscribed", self.check_alive)
        self.release_sims()
        wait_for(self.sims_finished, sim_duration + connect_timeout,
                 f"simulators to finish their {sim_duration:g} s run", self.check_alive)  # fmt: skip

    # --- supervision ---------------------------------------------------------------------------

    def wait_port(self, port: int, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open(port):
                return
            self.check_alive()
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")

    def check_alive(self, allow_exited: Sequence[str] = ()) -> None:
        for p in self.procs:
            if (
                not p.alive()
                and p.name not in allow_exited
                and not (p.name.startswith("sim-") and p.popen.returncode == 0)
            ):
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}; last log lines:\n{p.tail()}")

    def stop(self, names: Sequence[str] | None = None, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        targets = [p for p in self.procs if names is None or p.name in names]
        for p in targets:
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, sig)
        deadline = time.monotonic() + timeout
        for p in targets:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait()
        for p in targets:
            self.procs.remove(p)
