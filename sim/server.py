"""Serve a simulated plant over real protocols: OPC-UA (asyncua), MQTT JSON (paho), MES context
over Kafka, with a ledger of everything sent.

Timing (``engine.SimClock``): sample ``k`` carries source timestamp ``t0 + k * speed / rate`` seconds
and goes out at wall time ``start + k / rate``, but never before its timestamp: nothing is stamped
after the wall clock. A fast run starts its sim clock ``(speed - 1) * duration`` in the past
(``backfill_s``), so it fast-forwards through history that ends now; once the stamps reach the
wall clock, sim time runs at wall-clock pace. A slow loop catches up in bursts (the lag is
logged), so the sequence of samples never depends on machine speed. The run id (``t0`` in base
36) is part of every lot id, so runs never reuse one. A tag is written only when its value or
quality changes (report by exception), so every write is a data change an OPC-UA subscription
reports and the ledger lists exactly the changes that were served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from asyncua import ua
from asyncua.common.methods import uamethod
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors._base import UaStatusCodeError
from paho.mqtt.enums import CallbackAPIVersion

from plantstream.config import ConfigError, Settings
from plantstream.contract import ContextEvent, Value, now_us
from plantstream.sim.engine import MQTT_PREFIX, Fault, PlantModel, SimClock
from plantstream.sim.ledger import Ledger
from plantstream.sim.plants import DEFAULT_PORTS, build

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
VARIANT = {"float": ua.VariantType.Double, "int": ua.VariantType.Int64, "bool": ua.VariantType.Boolean,
           "str": ua.VariantType.String}  # fmt: skip
GOOD = ua.StatusCode(StatusCodes.Good)  # type: ignore[arg-type]
BAD_DROPOUT = ua.StatusCode(StatusCodes.BadNoCommunication)  # type: ignore[arg-type]
YIELD_EVERY = 256  # writes between event-loop yields, so clients are served during bursts


def namespace_uri(plant: str) -> str:
    return f"urn:plantstream:sim:{plant}"


def endpoint_url(plant: str, port: int, host: str = "127.0.0.1") -> str:
    return f"opc.tcp://{host}:{port}/plantstream/{plant}"


@dataclass
class FaultRequest:
    """A fault to inject ``at_s`` wall seconds after start, lasting ``duration_s`` wall seconds."""

    tag: str
    kind: str
    duration_s: float
    at_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> FaultRequest:
        """``TAG:KIND:DURATION_S[@AT_S]``, e.g. ``caster1.casting_speed:spike:10@30``."""
        spec, _, at = text.partition("@")
        parts = spec.rsplit(":", 2)
        if len(parts) != 3:
            raise ValueError(f"fault {text!r}: expected TAG:KIND:DURATION_S[@AT_S]")
        try:
            return cls(parts[0], parts[1], float(parts[2]), float(at) if at else 0.0)
        except ValueError:
            raise ValueError(f"fault {text!r}: duration and start must be numbers of seconds") from None


@dataclass
class SimOptions:
    plant: str
    seed: int = 0
    speed: float = 1.0
    rate: float = 1.0
    opcua_port: int | None = None
    host: str = "127.0.0.1"
    mqtt_url: str | None = None  # None: Settings.mqtt; "": MQTT off (MQTT tags are then not served)
    mqtt_prefix: str = MQTT_PREFIX
    ledger: Path | None = None
    duration_s: float | None = None
    # Sim seconds of history before now the run starts at; None: (speed - 1) * duration, so a fast
    # run ends at the wall clock (see engine.SimClock).
    backfill_s: float | None = None
    mes: bool = True
    faults: list[FaultRequest] = field(default_factory=list)
    settings: Settings | None = None
    progress_s: float = 5.0
    # After the last sample, keep serving this long so subscribers receive the final values
    # (an OPC-UA subscription publishes once per publishing interval).
    linger_s: float = 1.0
    # Serve the first sample, then hold until Start() is called (so a test can first wait for every
    # subscriber); MQTT publishes of the first sample are held too, as nobody can be subscribed yet.
    paused: bool = False

    def validate(self) -> None:
        if not self.speed > 0:
            raise ConfigError(f"--speed must be > 0 (got {self.speed})")
        if not self.rate > 0:
            raise ConfigError(f"--rate must be > 0 samples/s (got {self.rate})")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError(f"--duration must be > 0 s (got {self.duration_s})")
        if self.backfill_s is not None and not self.backfill_s >= 0:
            raise ConfigError(f"--backfill must be >= 0 s (got {self.backfill_s})")
        if round(1e6 * self.speed / self.rate) < 1:
            raise ConfigError("--speed / --rate must be at least 1 us of sim time per sample")


class _Mqtt:
    """paho client on its own network thread; QoS 1; counts acknowledged publishes."""

    def __init__(self, url: str, client_id: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp", ""):
            raise ConfigError(f"MQTT URL {parts.scheme}://...: only mqtt://host:port is supported")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if parts.username:
            self.client.username_pw_set(parts.username, parts.password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.connected = threading.Event()
        self.sent = 0
        self.acked = 0
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            self.connected.set()
            log.info("mqtt connected", extra={"kv": {"broker": f"{self.host}:{self.port}"}})
        else:
            log.warning("mqtt connect refused", extra={"kv": {"reason": str(rc)}})

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected.clear()
        if rc.is_failure:
            log.warning("mqtt disconnected; paho reconnects", extra={"kv": {"reason": str(rc)}})

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        with self._lock:
            self.acked += 1

    def start(self, wait_s: float = 5.0) -> None:
        self.client.reconnect_delay_set(1, 5)
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(wait_s):
            log.warning("mqtt broker not reachable yet; publishing into paho's queue",
                        extra={"kv": {"broker": f"{self.host}:{self.port}"}})  # fmt: skip

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)
        self.sent += 1

    def stop(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acked < self.sent and self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.acked < self.sent:
            log.warning(
                "mqtt: stopping with unacknowledged messages", extra={"kv": {"unacked": self.sent - self.acked}}
            )
        self.client.disconnect()
        self.client.loop_stop()


class SimServer:
    """One simulated plant served until ``duration_s`` passes or :meth:`request_stop` is called."""

    def __init__(self, opts: SimOptions) -> None:
        opts.validate()
        self.opts = opts
        # The clock is fixed before the model: its start names the run in every lot id.
        created = now_us()
        self.clock = SimClock.backfill(created, opts.speed, opts.rate, opts.duration_s, opts.backfill_s)
        # History the run covers before "now"; the clock is re-anchored to the loop's start with it
        # (below), so building the model, starting the server or a pause never make stamps lag.
        self._back_us = created - self.clock.t0_us
        self.step_us = self.clock.step_us
        self.t0_us = self.clock.t0_us
        self.run_id = self.clock.run
        self.model: PlantModel = build(opts.plant, opts.seed, self.step_us, self.run_id)
        if opts.speed > 1.0 and not SimClock.default_backfill_s(opts.speed, opts.duration_s) and not opts.backfill_s:
            log.warning("nothing to fast-forward (no --duration or --backfill): sim time runs at wall pace",
                        extra={"kv": {"plant": opts.plant, "seconds_per_sample": self.step_us / 1e6}})  # fmt: skip
        self.port = opts.opcua_port or DEFAULT_PORTS[opts.plant]
        self.endpoint = endpoint_url(opts.plant, self.port, opts.host)
        self.settings = opts.settings
        self.k = 0  # next sample index
        self.emitted = 0
        self.events_sent = 0
        self.ready = asyncio.Event()
        self.done = asyncio.Event()  # last sample served and ledger flushed; the server lingers
        self._stop = asyncio.Event()
        self._server: Server | None = None
        self._mqtt: _Mqtt | None = None
        self._producer: Any = None
        self._context_topic = ""
        self._ledger: Ledger | None = None
        self._nodeids: list[ua.NodeId | None] = []
        self._topics: list[str] = []
        self._last: list[tuple[Value | None, bool] | None] = [None] * len(self.model.tags)
        self._write: Callable[..., Any] | None = None
        self._emitting = False
        self.released = asyncio.Event()
        if not opts.paused:
            self.released.set()
        self._held_mqtt: list[tuple[str, bytes]] = []

    def release(self) -> None:
        """Start emitting (a no-op unless started with ``paused``)."""
        self.released.set()

    # --- control ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def inject_fault(self, tag: str, kind: str, duration_s: float) -> Fault:
        """Fault from the next sample on, ``duration_s`` wall seconds long; ValueError if invalid."""
        # Mid-sample (a client call served while _emit yields), sample k is already computed.
        start_k = self.k + 1 if self._emitting else self.k
        fault = self.model.add_fault(tag, kind, start_k, duration_s * self.opts.speed)
        log.info(
            "fault injected", extra={"kv": {"tag": tag, "kind": kind, "from_k": fault.start_k, "to_k": fault.end_k}}
        )
        return fault

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until stopped; everything opened is closed on the way out, whatever happened."""
        try:
            await self._open()
            await self._loop()
            if self._ledger is not None:
                self._ledger.flush()
            self.done.set()
            if self.opts.linger_s > 0:
                await asyncio.sleep(self.opts.linger_s)
        finally:
            await self._close()

    async def _open(self) -> None:
        o = self.opts
        if o.ledger is not None:
            self._ledger = Ledger(o.ledger)
        use_mqtt = any(t.meta.transport == "mqtt" for t in self.model.tags)
        mqtt_url = o.mqtt_url if o.mqtt_url is not None else self._settings().mqtt
        if use_mqtt and mqtt_url:
            self._mqtt = _Mqtt(mqtt_url, f"plantstream-sim-{o.plant}-{o.seed}-{id(self) & 0xFFFF:x}")
            await asyncio.get_running_loop().run_in_executor(None, self._mqtt.start)
        if o.mes:
            from plantstream.producers.kafka import make_producer
            from plantstream.producers.topics import Topics

            st = self._settings()
            self._producer = make_producer(st.kafka_bootstrap, client_id=f"plantstream-sim-{o.plant}")
            self._context_topic = Topics(st.topic_prefix).context
        await self._open_opcua()

    def _settings(self) -> Settings:
        if self.settings is None:
            self.settings = Settings.from_env()
        return self.settings

    async def _open_opcua(self) -> None:
        o = self.opts
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"plantstream simulated {o.plant} plant")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(namespace_uri(o.plant))
        if idx != 2:
            raise RuntimeError(f"namespace {namespace_uri(o.plant)} got index {idx}, expected 2")
        plant_obj = await server.nodes.objects.add_object(_nid(o.plant, 2), ua.QualifiedName(o.plant, 2))
        folders: dict[str, Any] = {}

        async def folder(path: str) -> Any:
            if path not in folders:
                parent, _, name = path.rpartition("/")
                base = await folder(parent) if parent else plant_obj
                folders[path] = await base.add_folder(_nid(path, 2), ua.QualifiedName(name, 2))
            return folders[path]

        for tm in self.model.tags:
            meta = tm.meta
            if meta.transport != "opcua":
                self._nodeids.append(None)
                self._topics.append(f"{o.mqtt_prefix}/{o.plant}/{meta.equipment}/{meta.tag}")
                continue
            self._topics.append("")
            nid = _nid(meta.tag, 2)
            parent = await folder(meta.equipment)
            vt = VARIANT[meta.datatype]
            var = await parent.add_variable(nid, ua.QualifiedName(meta.tag, 2), ua.Variant(_zero(meta.datatype), vt))
            if meta.description:
                await var.write_attribute(
                    AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(meta.description)))
                )
            if meta.datatype in ("float", "int"):
                await var.add_property(_nid(f"{meta.tag}.EURange", 2), "EURange", ua.Range(meta.lo, meta.hi),
                                       datatype=_nid(ObjectIds.Range, 0))  # fmt: skip
                eu = ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact", UnitId=-1,
                                      DisplayName=ua.LocalizedText(meta.unit), Description=ua.LocalizedText(meta.unit))  # fmt: skip
                await var.add_property(_nid(f"{meta.tag}.EngineeringUnits", 2), "EngineeringUnits", eu,
                                       datatype=_nid(ObjectIds.EUInformation, 0))  # fmt: skip
            self._nodeids.append(nid)

        @uamethod
        async def inject(parent: ua.NodeId, tag: str, kind: str, duration_s: float) -> str:
            try:
                f = self.inject_fault(tag, kind, float(duration_s))
            except ValueError as exc:
                log.warning("InjectFault refused", extra={"kv": {"tag": tag, "kind": kind, "error": str(exc)}})
                raise UaStatusCodeError(StatusCodes.BadInvalidArgument) from None  # type: ignore[no-untyped-call]
            return f"{f.kind.value} on {f.tag} for samples {f.start_k}..{f.end_k - 1}"

        @uamethod
        async def start(parent: ua.NodeId) -> bool:
            self.release()
            log.info("sim released", extra={"kv": {"plant": o.plant}})
            return True

        await plant_obj.add_method(
            _nid(f"{o.plant}.Start", 2), ua.QualifiedName("Start", 2), start, [], [ua.VariantType.Boolean]
        )
        await plant_obj.add_method(
            _nid(f"{o.plant}.InjectFault", 2), ua.QualifiedName("InjectFault", 2), inject,
            [ua.VariantType.String, ua.VariantType.String, ua.VariantType.Double], [ua.VariantType.String],
        )  # fmt: skip
        self._server = server
        self._write = server.iserver.aspace.write_attribute_value
        # The first sample is written before clients can connect: nobody sees the placeholders.
        for fr in o.faults:
            if fr.at_s <= 0:
                self.model.add_fault(fr.tag, fr.kind, 0, fr.duration_s * o.speed)
        await self._emit(0)
        self.k = 1
        await server.start()
        log.info("sim serving", extra={"kv": {"plant": o.plant, "endpoint": self.endpoint, "seed": o.seed,
                                              "speed": o.speed, "rate": o.rate, "tags": len(self.model.tags),
                                              "run": self.run_id, "t0_us": self.t0_us}})  # fmt: skip

    async def _close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.stop()
            self._server = None
        if self._mqtt is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._mqtt.stop)
            self._mqtt = None
        if self._producer is not None:
            left = await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, 15.0)
            if left:
                log.warning("kafka: context events not delivered at exit", extra={"kv": {"undelivered": left}})
            self._producer = None
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        log.info("sim stopped", extra={"kv": {"plant": self.opts.plant, "samples": self.k, "values": self.emitted,
                                              "events": self.events_sent}})  # fmt: skip
        self.ready.clear()

    # --- serving ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        o = self.opts
        pending = sorted((fr for fr in o.faults if fr.at_s > 0), key=lambda f: f.at_s)
        self.ready.set()
        if not self.released.is_set():
            log.info("sim paused until Start() is called", extra={"kv": {"plant": o.plant, "endpoint": self.endpoint}})
            released = asyncio.ensure_future(self.released.wait())
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({released, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for fut in (released, stopped):
                fut.cancel()
        if self._mqtt is not None:
            for topic, payload in self._held_mqtt:
                self._mqtt.publish(topic, payload)
        self._held_mqtt.clear()
        start = now_us() - math.ceil(1e6 / o.rate)  # sample 0 went out at start
        # Stamps from here on are anchored to this start (the run id keeps the first anchor):
        # sample k is due at start + k/rate and, at speed 1 without backfill, stamped then too.
        t0 = max(self.clock.t0_us, (start - self._back_us) // 1000 * 1000)
        clock = self.clock = replace(self.clock, t0_us=t0)
        self.t0_us = t0
        end_k: int | None = None
        if o.duration_s is not None:
            # duration x rate samples, but none stamped after the run's end on the wall clock: a
            # backfill shorter than (speed - 1) x duration reaches the wall clock before that.
            end_k = max(1, min(round(o.duration_s * o.rate), clock.ready(start + round(o.duration_s * 1e6))))
        last_log, last_emitted = time.monotonic(), self.emitted
        while not self._stop.is_set() and (end_k is None or self.k < end_k):
            wall = now_us()
            # Every sample below `due` is stamped at or before `wall` (SimClock.due_count).
            due = clock.due_count(wall, start)
            if end_k is not None:
                due = min(due, end_k)
            while pending and wall - start >= pending[0].at_s * 1e6:
                fr = pending.pop(0)
                try:
                    self.inject_fault(fr.tag, fr.kind, fr.duration_s)
                except ValueError as exc:
                    log.warning("fault refused", extra={"kv": {"fault": fr.tag, "error": str(exc)}})
            while self.k < due and not self._stop.is_set():
                await self._emit(self.k)
                self.k += 1
            if self._ledger is not None:
                self._ledger.maybe_flush()
            now = time.monotonic()
            if now - last_log >= o.progress_s:
                rate = (self.emitted - last_emitted) / (now - last_log)
                lag_s = max(0, now_us() - clock.due_us(self.k, start)) / 1e6
                log.info("sim progress", extra={"kv": {
                    "plant": o.plant, "samples": self.k, "values": self.emitted, "values_per_s": round(rate, 1),
                    "events": self.events_sent, "lag_s": round(lag_s, 3),
                    "behind_wall_s": round((now_us() - clock.stamp(self.k - 1)) / 1e6, 3)}})  # fmt: skip
                last_log, last_emitted = now, self.emitted
            wait = (clock.due_us(self.k, start) - now_us()) / 1e6
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)
            else:
                await asyncio.sleep(0)

    async def _emit(self, k: int) -> None:
        """Serve sample ``k``: changed values to OPC-UA/MQTT, due context events to Kafka, all to the ledger."""
        ts_us = self.clock.stamp(k)
        src = EPOCH + timedelta(microseconds=ts_us)
        srv = datetime.now(UTC)
        n = 0
        self._emitting = True
        try:
            n = await self._emit_values(k, ts_us, src, srv)
        finally:
            self._emitting = False
        self.emitted += n
        if self._producer is not None:
            t = self.model.t_of(k)
            for ev in self.model.events(self.model.t_of(k - 1) if k else -1.0, t, self.t0_us):
                self._publish_event(ev)

    async def _emit_values(self, k: int, ts_us: int, src: datetime, srv: datetime) -> int:
        plant, ledger, last, write = self.opts.plant, self._ledger, self._last, self._write
        assert write is not None
        n = 0
        for i, (v, good) in enumerate(self.model.sample(k)):
            prev = last[i]
            if prev is not None and prev[1] == good and type(prev[0]) is type(v) and prev[0] == v:
                continue
            last[i] = (v, good)
            meta = self.model.tags[i].meta
            nid = self._nodeids[i]
            if nid is not None:
                variant = ua.Variant(v, VARIANT[meta.datatype]) if good else ua.Variant(None, ua.VariantType.Null)
                dv = ua.DataValue(variant, GOOD if good else BAD_DROPOUT, SourceTimestamp=src, ServerTimestamp=srv)  # type: ignore[arg-type]
                await write(nid, AttributeIds.Value, dv)
                transport = "opcua"
            elif self._mqtt is not None:
                payload = {"ts_us": ts_us, "value": v, "unit": meta.unit, "quality": "good" if good else "bad"}
                data = json.dumps(payload, separators=(",", ":")).encode()
                if self.released.is_set():
                    self._mqtt.publish(self._topics[i], data)
                else:
                    self._held_mqtt.append((self._topics[i], data))
                transport = "mqtt"
            else:
                continue
            if ledger is not None:
                ledger.reading(plant, meta.tag, ts_us, v, transport, good)
            n += 1
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return n

    def _publish_event(self, ev: ContextEvent) -> None:
        from plantstream.producers.codec import encode_context
        from plantstream.producers.kafka import produce

        produce(self._producer, self._context_topic, encode_context(ev), key=ev.key)
        if self._ledger is not None:
            self._ledger.event(ev)
        self.events_sent += 1


def _nid(identifier: str | int, ns: int = 2) -> ua.NodeId:
    # asyncua annotates NodeId with its own str/int subclasses; plain values are what it uses itself.
    return ua.NodeId(identifier, ns)  # type: ignore[arg-type]


_ZERO: dict[str, Value] = {"float": 0.0, "int": 0, "bool": False, "str": ""}


def _zero(datatype: str) -> Value:
    return _ZERO[datatype]


async def serve(opts: SimOptions, install_signals: bool = True) -> SimServer:
    """Run one plant until done; SIGTERM/SIGINT stop it cleanly. Returns the finished server."""
    sim = SimServer(opts)
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sim.request_stop)
    try:
        await sim.run()
    finally:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return sim


async def call_start(endpoint: str, plant: str | None = None, timeout_s: float = 10.0) -> None:
    """Release a simulator started with ``paused``."""
    from asyncua.client.client import Client

    plant = plant or endpoint.rstrip("/").rsplit("/", 1)[-1]
    async with Client(endpoint, timeout=timeout_s) as client:
        await client.get_node(_nid(plant, 2)).call_method(_nid(f"{plant}.Start", 2))


async def call_inject_fault(endpoint: str, plant: str | None, tag: str, kind: str, duration_s: float,
                            timeout_s: float = 10.0) -> str:  # fmt: skip
    """Call InjectFault on a running simulator; the plant is read from the endpoint path if not given."""
    from asyncua.client.client import Client

    plant = plant or endpoint.rstrip("/").rsplit("/", 1)[-1]
    async with Client(endpoint, timeout=timeout_s) as client:
        obj = client.get_node(_nid(plant, 2))
        result = await obj.call_method(_nid(f"{plant}.InjectFault", 2), ua.Variant(tag, ua.VariantType.String),
                                       ua.Variant(kind, ua.VariantType.String),
                                       ua.Variant(float(duration_s), ua.VariantType.Double))  # fmt: skip
        return str(result)
