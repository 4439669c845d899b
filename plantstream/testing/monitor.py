"""Test data and helpers for the monitor: a small multi-plant history written by the real sink,
and the monitor application served on a free port from a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from plantstream.access import Tier
from plantstream.contract import ContextEvent, ContextKind, Deviation, Grade, Origin, Quality, Reading, TagMeta, now_us
from plantstream.datasets.api import ENGINE
from plantstream.domain.pullrequest import PullRecord, PullRequest, Requester
from plantstream.monitor.auth import TokenSpec
from plantstream.monitor.web import K_FEED, K_HUB
from plantstream.sinks.base import Record, RecordOrigin
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.testing.plugin import free_port

OWNER, MEMBER, PUBLIC = "owner-token-0001", "member-token-0001", "public-token-0001"
TIERS: dict[str, Tier] = {OWNER: Tier.OWNER, MEMBER: Tier.MEMBER, PUBLIC: Tier.PUBLIC}
TOKENS: dict[str, Tier | TokenSpec] = dict(TIERS)
TOKENS_ENV = ",".join(f"{t}={tier.value}" for t, tier in TIERS.items())

CASTER = "acme/duisburg/steelmaking/caster1"
# (plant, tag, equipment, unit, grade, spec_property, base value, amplitude)
TAGS = [
    ("steel", "caster1.casting_speed", f"{CASTER}/strand", "m/min", Grade.CORE, "casting_speed", 1.25, 0.2),
    ("steel", "caster1.mould_level", f"{CASTER}/mould", "mm", Grade.CORE, "mould_level", 100.0, 6.0),
    ("steel", "caster1.tundish_temperature", f"{CASTER}/tundish", "degC", Grade.IMPORTANT, "", 1545.0, 4.0),
    ("steel", "caster1.cooling_water_flow", f"{CASTER}/strand", "m3/h", Grade.GENERAL, "", 410.0, 15.0),
    ("steel", "caster1.strand_temperature", f"{CASTER}/strand", "degC", Grade.GENERAL, "", 960.0, 12.0),
    ("chemical", "reactor.level", "acme/antwerp/pta/train1/reactor", "percent", Grade.GENERAL, "", 75.0, 2.0),
    (
        "chemical",
        "reactor.temperature",
        "acme/antwerp/pta/train1/reactor",
        "degC",
        Grade.CORE,
        "reactor_temperature",
        120.4,
        1.5,
    ),
    (
        "fiber",
        "poy1.quench_air_temperature",
        "acme/nantong/spinning/poy1/quench",
        "degC",
        Grade.IMPORTANT,
        "quench_air_temperature",
        20.0,
        1.0,
    ),
]
SEC = 1_000_000


def tag_metas() -> list[TagMeta]:
    return [
        TagMeta(plant, tag, eq, unit, "float", grade=grade, spec_property=prop, description=tag.replace("_", " "))
        for plant, tag, eq, unit, grade, prop, _, _ in TAGS
    ]


def value_at(i: int, k: int) -> float:
    _, _, _, _, _, _, base, amp = TAGS[k]
    return round(base + amp * math.sin(i / 40 + k), 4)


def load(dsn: str, minutes: int = 10) -> int:
    """Migrate and write tags, ``minutes`` of 1 Hz readings up to now, lots and deviations through
    the real sink. Returns the first reading's timestamp (us)."""
    migrate(dsn)
    t0 = (now_us() // SEC - minutes * 60) * SEC
    recs: list[tuple[str, Any]] = [("tags", m) for m in tag_metas()]
    for k, (plant, tag, eq, unit, *_rest) in enumerate(TAGS):
        rs = [
            Reading(
                plant,
                eq,
                tag,
                t0 + i * SEC,
                value_at(i, k),
                unit,
                Quality.BAD if i % 97 == 5 else Quality.GOOD,
                Origin.OPCUA,
                "test",
                i,
            )
            for i in range(minutes * 60)
        ]
        recs.append(("readings", _batch(rs)))
    ctx = [
        ContextEvent(ContextKind.LOT_START, "steel", CASTER, t0, "H240117", "heat", "EN10025-2:S355J2"),
        ContextEvent(ContextKind.LOT_START, "chemical", "acme/antwerp/pta/train1", t0, "B-7731", "batch", "PTA:SALES"),
        ContextEvent(
            ContextKind.LOT_START, "fiber", "acme/nantong/spinning/poy1", t0, "D-0412", "doff", "PET:POY-288-288"
        ),
    ]
    recs += [("context", c) for c in ctx]
    devs = [
        _dev(
            "dev-core-1",
            "steel",
            "caster1.casting_speed",
            f"{CASTER}/strand",
            "casting_speed",
            t0 + 60 * SEC,
            1.71,
            0.9,
            1.6,
            "m/min",
        ),
        _dev(
            "dev-gen-1",
            "steel",
            "caster1.cooling_water_flow",
            f"{CASTER}/strand",
            "",
            t0 + 90 * SEC,
            470.0,
            None,
            450.0,
            "m3/h",
        ),
        _dev("dev-lab-1", "steel", None, CASTER, "rm", t0 + 120 * SEC, 655.0, 470.0, 630.0, "MPa", kind="lab"),
    ]
    recs += [("deviations", Deviation.from_map(d)) for d in devs]
    sink = PostgresSink(dsn)
    sink.connect()
    sink.write([Record(RecordOrigin("t", 0, i), kind, payload, b"", None) for i, (kind, payload) in enumerate(recs)])
    dead = sink.flush()
    sink.close()
    assert dead == [], dead
    return t0


def _batch(rs: list[Reading]) -> Any:
    from plantstream.producers import codec

    return codec.ReadingBatch.of(rs)


def _dev(
    ident: str,
    plant: str,
    tag: str | None,
    eq: str,
    prop: str,
    start: int,
    peak: float,
    lo: float | None,
    hi: float | None,
    unit: str,
    kind: str = "process",
) -> dict[str, Any]:
    return {
        "id": ident,
        "kind": kind,
        "status": "closed",
        "plant": plant,
        "equipment": eq,
        "tag": tag,
        "lot": "H240117",
        "spec": "EN10025-2:S355J2",
        "property": prop,
        "limit_min": lo,
        "limit_max": hi,
        "unit": unit,
        "start_us": start,
        "end_us": start + 5 * SEC,
        "peak": peak,
        "duration_s": 5.0,
    }


@dataclass
class Served:
    url: str
    app: web.Application | None = None  # None: a server in another process
    loop: asyncio.AbstractEventLoop | None = None

    def get(self, path: str, token: str | None = OWNER, header: bool = True) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path)
        if token and header:
            req.add_header("Authorization", f"Bearer {token}")
        elif token:
            sep = "&" if "?" in path else "?"
            req = urllib.request.Request(f"{self.url}{path}{sep}token={token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read()
                ctype = r.headers.get("Content-Type", "")
                return r.status, json.loads(body) if "json" in ctype else body.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def post(self, path: str, body: Any, token: str | None = OWNER) -> tuple[int, Any, dict[str, str]]:
        """POST JSON (``body`` bytes are sent as they are); (status, parsed body, headers)."""
        data = body if isinstance(body, bytes) else json.dumps(body, default=str).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read()), dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)

    def raw(self, path: str, token: str | None = OWNER) -> tuple[int, dict[str, str], bytes]:
        """GET without decoding: (status, headers, body bytes)."""
        req = urllib.request.Request(self.url + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    @property
    def hub(self) -> Any:
        assert self.app is not None
        return self.app[K_HUB]

    @property
    def feed(self) -> Any:
        assert self.app is not None
        return self.app.get(K_FEED)


class ServerThread:
    """Runs an aiohttp app on its own event loop in a daemon thread (tests stay synchronous)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._up = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        try:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
        except BaseException as exc:
            self._error = exc
            self._up.set()
            raise
        self._stop = asyncio.Event()
        self._up.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Served:
        self._thread.start()
        self._up.wait(30)
        if self._error is not None:
            raise self._error
        return Served(f"http://127.0.0.1:{self.port}", self.app, self.loop)

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


class SseReader:
    """Collects server-sent events of one stream in a background thread (for tests)."""

    def __init__(self, url: str, path: str) -> None:
        import http.client
        from urllib.parse import urlsplit

        u = urlsplit(url)
        self.events: list[tuple[str, Any]] = []
        self._conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
        self._conn.request("GET", path, headers={"Accept": "text/event-stream"})
        self.response = self._conn.getresponse()
        self._sock = self._conn.sock
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind, data = "message", ""
        try:
            while True:
                raw = self.response.fp.readline() if self.response.fp else b""
                if not raw:
                    return
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif line == "":
                    if data:
                        self.events.append((kind, json.loads(data)))
                    kind, data = "message", ""
        except (OSError, ValueError):
            return

    def of(self, kind: str) -> list[Any]:
        return [d for k, d in list(self.events) if k == kind]

    def close(self) -> None:
        import socket

        # Shut the socket down first: the reader thread holds the response's buffer lock inside
        # readline(), so closing the file alone would wait for the next server heartbeat.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._conn.close()


@dataclass
class EngineOf:
    """A PullEngine around one function, for tests that hold, slow or fail a pull; stored records
    come from the datasets stage's own store."""

    fn: Callable[..., PullRecord]

    def run(self, request: PullRequest, requester: Requester, **kw: Any) -> PullRecord:
        record: PullRecord = self.fn(request, requester, **kw)
        return record

    def record(self, dsn: str, pull_id: int) -> PullRecord | None:
        return ENGINE.record(dsn, pull_id)
