"""Helpers for edge tests against the real local services (Kafka read-back, agent in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from plantstream.config import Settings
from plantstream.edge.agent import Agent
from plantstream.edge.config import EdgeConfig
from plantstream.producers.codec import ReadingBatch, decode_readings
from plantstream.producers.kafka import librdkafka_conf
from plantstream.producers.topics import Topics
from plantstream.stack import tansu_binary, wait_port
from plantstream.testing.plugin import free_port
from plantstream.testing.proxy import TcpProxy


def read_topic(
    bootstrap: str, topic: str, done: Callable[[list[Message]], bool], timeout: float = 30.0
) -> list[Message]:
    """All messages of ``topic`` from the beginning (assign(), no consumer group join) until
    ``done(messages)`` or timeout; returns what was read either way."""
    c = Consumer(
        {
            **librdkafka_conf(bootstrap),
            "group.id": f"t{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        parts: list[int] = []
        while time.monotonic() < deadline:
            md = c.list_topics(topic, timeout=5).topics.get(topic)
            if md is not None and md.error is None and md.partitions:
                parts = sorted(md.partitions)
                break
            time.sleep(0.2)
        if not parts:
            return out
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        while time.monotonic() < deadline and not done(out):
            for m in c.consume(500, timeout=0.2):
                err = m.error()
                if err is None:
                    out.append(m)
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(err.str())
        return out
    finally:
        c.close()


def batches(messages: list[Message]) -> list[ReadingBatch]:
    return [decode_readings(m.value() or b"") for m in messages]


def reading_count(messages: list[Message]) -> int:
    return sum(len(b) for b in batches(messages))


@dataclass(frozen=True)
class AgentSetup:
    """An edge agent's config with one source, the settings it runs under, the topics it writes."""

    cfg: EdgeConfig
    settings: Settings
    topics: Topics


def one_source_agent(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    source: dict[str, Any],
    *,
    agent_id: str,
    plant: str = "steel",
    partitions: int = 2,
    batch: dict[str, Any] | None = None,
) -> AgentSetup:
    """What a connector's agent test runs: ``source`` (a config mapping) in an agent of ``plant``
    whose buffer and state live under ``tmp_path``, writing to this test's topics (created by the
    agent with ``partitions``). ``batch`` defaults to a 20 ms delay so readings arrive quickly."""
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": agent_id,
            "plant": plant,
            "sources": [source],
            "batch": batch if batch is not None else {"max_delay_ms": 20},
            "kafka": {"partitions": partitions},
        }
    )
    settings = Settings.model_validate(
        {
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": topic_prefix,
            "partitions": partitions,
            "state_dir": tmp_path / "state",
        }
    )
    return AgentSetup(cfg, settings, Topics(topic_prefix, partitions))


class AgentThread:
    """An Agent on its own event loop thread; ``stop()`` is a graceful SIGTERM-like stop."""

    def __init__(self, cfg: EdgeConfig, settings: Settings) -> None:
        self.agent = Agent(cfg, settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name=f"agent-{cfg.agent_id}")

    def _main(self) -> None:
        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            self._started.set()
            await self.agent.run(install_signals=False)

        try:
            asyncio.run(go())
        except BaseException as exc:
            self.error = exc
            self._started.set()

    def start(self) -> AgentThread:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.agent.request_stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("agent did not stop in time")
        if self.error is not None:
            raise AssertionError(f"agent failed: {self.error!r}") from self.error

    def __enter__(self) -> AgentThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- fault-test helpers ------------------------------------------------------------------------


class IsolatedKafka:
    """A private Kafka-protocol broker (Tansu, memory storage) behind a stoppable :class:`TcpProxy`.

    The broker advertises the proxy's port, so clients keep going through the proxy after their
    first metadata call and ``proxy.stop()`` really cuts them off; the broker itself keeps running,
    so its (in-memory) topics survive the outage. The shared test broker advertises its own port
    and cannot be used for this.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.broker_port = free_port()
        self.proxy = TcpProxy(self.broker_port, listen_port=free_port())
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def start(self) -> IsolatedKafka:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    f"tcp://127.0.0.1:{self.broker_port}",
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{self.proxy.port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.broker_port, 30, "private Kafka-protocol broker", self._proc, self.log_path)
        self.proxy.start()
        return self

    def stop(self) -> None:
        self.proxy.stop()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)

    def __enter__(self) -> IsolatedKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OpcuaServerThread:
    """An asyncua server on its own event-loop thread with Double variables ``ns=2;s=<name>``,
    for tests that run the agent in another thread or process."""

    NAMESPACE = "urn:plantstream:edge-test"

    def __init__(self, port: int, names: list[str]) -> None:
        self.port = port
        self.names = names
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/ps/"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._nodes: dict[str, Any] = {}
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name=f"opcua-server-{port}")

    @staticmethod
    def node_id(name: str) -> str:
        return f"ns=2;s={name}"

    def _main(self) -> None:
        async def go() -> None:
            from asyncua import ua
            from asyncua.server.server import Server

            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = self._server = Server()
            await server.init()
            server.set_endpoint(self.endpoint)
            idx = await server.register_namespace(self.NAMESPACE)
            for name in self.names:
                nid = ua.NodeId(ua.String(name), ua.Int16(idx))
                self._nodes[name] = await server.nodes.objects.add_variable(nid, name, 0.0)
            await server.start()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await server.stop()

        try:
            asyncio.run(go())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> OpcuaServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise AssertionError(f"OPC-UA test server did not start: {self._error!r}")
        return self

    def write(self, name: str, value: float, ts_us: int) -> None:
        """Set ``name`` to ``value`` with source timestamp ``ts_us`` (a data change the agent sees)."""
        from asyncua import ua

        ts = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us)
        dv = ua.DataValue(
            Value=ua.Variant(value, ua.VariantType.Double),
            StatusCode=ua.StatusCode(ua.UInt32(0)),
            SourceTimestamp=ts,  # type: ignore[arg-type]
            ServerTimestamp=ts,  # type: ignore[arg-type]
        )
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(
            self._server.write_attribute_value(self._nodes[name].nodeid, dv), self._loop
        )
        fut.result(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def __enter__(self) -> OpcuaServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an agent's /metrics endpoint: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): float(s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


# --- a small filesystem (disk-full tests) ---------------------------------------------------------

_IN_USERNS = "PLANTSTREAM_TEST_IN_USERNS"


@contextlib.contextmanager
def small_filesystem(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` mounted at ``path`` for the duration (needs root, real or mapped)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "plantstream-test", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        # Lazy: an SQLite file still open in a leaked thread must not leave the mount behind.
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def run_on_small_filesystem(
    request: pytest.FixtureRequest, path: Path, size_bytes: int, body: Callable[[Path], None]
) -> None:
    """``body(mountpoint)`` with a tmpfs of ``size_bytes`` at ``path``. As root the tmpfs is mounted
    here; otherwise this test re-runs itself in a user + mount namespace where the process is root
    (``unshare --user --map-root-user --mount``) and passes or fails with it. Skips only when
    neither is possible."""
    if os.geteuid() == 0:
        try:
            cm = small_filesystem(path, size_bytes)
            mnt = cm.__enter__()
        except subprocess.CalledProcessError as exc:
            if os.environ.get(_IN_USERNS) or not _userns_works():
                pytest.skip(f"cannot mount a tmpfs: {exc.stderr.decode(errors='replace').strip()}")
        else:
            try:
                body(mnt)
            finally:
                cm.__exit__(None, None, None)
            return
    elif not _userns_works():
        pytest.skip("not root and no user namespaces (unshare --user --map-root-user --mount)")
    cmd = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m", "pytest", "-x", "-q"]
    cmd += ["-p", "no:cacheprovider", request.node.nodeid]
    proc = subprocess.run(
        cmd,
        cwd=request.config.rootpath,
        env={**os.environ, _IN_USERNS: "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and " passed" in proc.stdout, (
        f"in a user namespace: rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    )


def _userns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


def fill_disk(path: Path) -> int:
    """Append to ``path`` until its filesystem is full (ENOSPC); returns the bytes written.
    Called again, it takes whatever was freed meanwhile."""
    written = 0
    chunk = b"\0" * 65536
    with path.open("ab", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    n = f.write(chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += n or 0
    return written


class MqttAckCounter(TcpProxy):
    """A :class:`TcpProxy` in front of an MQTT broker that counts the PUBACK packets clients send
    (what "acknowledged" means on the wire)."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.pubacks = 0
        self._count_lock = threading.Lock()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            to_broker = dst.getpeername()[1] == self.target[1]
        except OSError:
            to_broker = False
        if not to_broker:
            super()._pipe(src, dst)
            return
        pending = bytearray()
        try:
            while data := src.recv(65536):
                pending += data
                self._count(pending)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)

    def _count(self, buf: bytearray) -> None:
        """Consume whole packets from ``buf`` (fixed header, variable-length remaining length)."""
        while len(buf) >= 2:
            length = mult = 0
            i = 1
            while True:
                if i >= len(buf) or i > 4:
                    return  # length incomplete
                b = buf[i]
                length += (b & 0x7F) << (7 * mult)
                mult += 1
                i += 1
                if not b & 0x80:
                    break
            if len(buf) < i + length:
                return
            if buf[0] >> 4 == 4:  # PUBACK
                with self._count_lock:
                    self.pubacks += 1
            del buf[: i + length]
