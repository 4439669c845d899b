"""MQTT JSON connector (paho-mqtt 2.x, callback API v2, manual acks, persistent session).

Delivery contract: a QoS 1 message is PUBACKed only after its reading (or its dead letter) is
committed to the edge buffer. The session is persistent (fixed client id, clean_session False /
MQTT 5 clean_start False with a session expiry), so messages published while the agent is down
or restarting are held by the broker and delivered on reconnect. Acks of a previous connection
are never sent on a new one (the broker redelivers those messages, flagged DUP; the agent drops
a redelivered reading it already committed, see ``Delivery.redelivered``).

:class:`MqttClientSource` is the connection (TLS, credentials, session, acks) shared with the
Sparkplug B source; subclasses say what to subscribe to and how a message becomes deliveries.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Hashable
from typing import Any, TypeVar, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from plantstream.config import ConfigError, mask_url
from plantstream.contract import Origin
from plantstream.edge.config import MqttConnection, MqttSource
from plantstream.edge.mqtt.decode import Malformed, MqttDecoder
from plantstream.edge.registry import SourceContext
from plantstream.edge.source import DeadLetter, Delivery, Inbox, Source, message_identity, now_us
from plantstream.edge.vet import DEFAULT_LIMITS, Limits
from plantstream.log import Throttle

log = logging.getLogger(__name__)

MqttConnectionT = TypeVar("MqttConnectionT", bound=MqttConnection)


class MqttClientSource(Source):  # type: ignore[misc]  # Source is Any to mypy: editable-install namespace
    """One paho client with a persistent session and manual acks; subclasses decode messages."""

    kind = "mqtt"

    def __init__(self, cfg: MqttConnection, agent_id: str, inbox: Inbox) -> None:
        url = cfg.url.get_secret_value() if cfg.url is not None else ""
        super().__init__(cfg.id, self.kind, mask_url(url), inbox)
        self.conn = cfg
        self.client_id = cfg.client_id or f"plantstream-{agent_id}-{cfg.id}"
        self._gen = 0  # connection generation: acks are only valid on the connection that got the message
        self._lock = threading.Lock()
        self._throttle = Throttle(30.0)
        self._client: mqtt.Client | None = None
        self._ever_connected = False

    # --- for subclasses ---------------------------------------------------------------------------

    def subscriptions(self) -> list[tuple[str, int]]:
        raise NotImplementedError

    def handle(self, client: mqtt.Client, msg: mqtt.MQTTMessage, topic: str, token: Hashable | None) -> None:
        """Turn one message into deliveries; the last one carries ``token`` (acked after commit)."""
        raise NotImplementedError

    def configure(self, client: mqtt.Client) -> None:
        """Hook before connecting (e.g. a will message)."""

    def connected(self, client: mqtt.Client) -> None:
        """Hook after each successful connect, before the subscriptions are granted."""

    def subscribed(self, client: mqtt.Client) -> None:
        """Hook once the broker granted this connection's subscriptions (e.g. a birth/state
        message that peers answer with data we must already be subscribed to)."""

    # --- connection ---------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.conn
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        user, pwd = cfg.credentials()
        if user:
            client.username_pw_set(user, pwd)
        if cfg.use_tls:
            client.tls_set_context(self._tls_context())
        client.reconnect_delay_set(max(1, int(cfg.reconnect.min_s)), max(1, int(cfg.reconnect.max_s)))
        # paho's own queue of outgoing packets is in memory; we only send acks and subscribes.
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.configure(client)
        return client

    def _tls_context(self) -> ssl.SSLContext:
        """Verified TLS (1.2+): the configured CA file or the system CAs; client cert when configured."""
        tls = self.conn.tls
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls is not None:
            ctx.check_hostname = tls.check_hostname
            if tls.cert_file is not None:
                ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        return ctx

    async def run(self) -> None:
        client = self._client = self._make_client()
        props = None
        kwargs: dict[str, Any] = {}
        cfg = self.conn
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}
        client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, **kwargs)
        client.loop_start()
        try:
            await self._stop.wait()
        finally:
            await asyncio.to_thread(self._shutdown, client)

    def _shutdown(self, client: mqtt.Client) -> None:
        with self._lock:
            self._gen += 1  # no ack after this point: the broker keeps those messages for us
        client.disconnect()
        client.loop_stop()
        self.status.connected = False

    # --- paho callbacks (paho's network thread) ---------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        rc: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if rc.is_failure:
            self.status.last_error = f"connect refused: {rc}"
            if self._throttle.should("refused") >= 0:
                log.warning("mqtt connect refused", extra={"kv": {"source": self.id, "reason": str(rc)}})
            return
        with self._lock:
            self._gen += 1
        if self._ever_connected:
            self.status.reconnects += 1
        self._ever_connected = True
        subs = self.subscriptions()
        client.subscribe(subs)
        self.connected(client)
        log.info(
            "mqtt connected",
            extra={
                "kv": {
                    "source": self.id,
                    "session_present": flags.session_present,
                    "subscriptions": [f for f, _ in subs],
                }
            },
        )

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho does not hand over the exception: TCP refused, TLS handshake (unknown CA, name), timeout.
        self.status.last_error = "connect failed (unreachable, or TLS handshake refused: check url, CA file)"
        self.status.connected = False
        n = self._throttle.should("connect_fail")
        if n >= 0:
            log.warning(
                "mqtt connect failed; retrying with backoff",
                extra={"kv": {"source": self.id, "endpoint": self.status.endpoint, "suppressed": n}},
            )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        # "Connected" means readings can flow: only once the broker has granted the subscriptions.
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            self.status.last_error = f"subscription refused: {', '.join(failed)}"
            log.warning("mqtt subscription refused", extra={"kv": {"source": self.id, "reasons": failed}})
        self.status.connected = not failed
        if not failed:
            self.subscribed(client)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        rc: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._gen += 1
        was = self.status.connected
        self.status.connected = False
        if self._stopping:
            return
        self.status.last_error = f"disconnected: {rc}"
        n = self._throttle.should("disconnect")
        if was or n >= 0:
            log.warning(
                "mqtt disconnected; reconnecting with backoff",
                extra={"kv": {"source": self.id, "reason": str(rc), "suppressed": max(n, 0)}},
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        token: Hashable | None = (self._gen, msg.mid) if msg.qos > 0 else None
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self._dead(msg.payload, "topic is not UTF-8", repr(msg._topic), token)
            return
        try:
            self.handle(client, msg, topic, token)
        except Exception as exc:  # a decoder bug must not kill paho's thread or lose the message
            log.exception("mqtt decode failed unexpectedly", extra={"kv": {"source": self.id, "topic": topic}})
            self._dead(msg.payload, f"internal error: {exc!r}", topic, token, bool(msg.dup))

    def _dead(
        self, payload: bytes | bytearray, reason: str, topic: str, token: Hashable | None, dup: bool = False
    ) -> None:
        """The whole message to the dead-letter topic (one delivery: deduplicated as a message)."""
        ident = message_identity(self.id, topic, payload) if token is not None else None
        dl = DeadLetter(bytes(payload), reason, f"{self.id}:{topic}")
        self.inbox.put(Delivery(self.id, self.origin, None, dl, token, redelivered=dup, identity=ident))

    # --- agent side ----------------------------------------------------------------------------

    def ack(self, tokens: list[Hashable]) -> None:
        client = self._client
        if client is None:
            return
        with self._lock:
            gen = self._gen
            for tok in tokens:
                g, mid = cast(tuple[int, int], tok)
                if g == gen:
                    client.ack(mid, 1)


class MqttJsonSource(MqttClientSource):
    """JSON readings (one per message, or a list with ``readings_path``), topic segments mapped by templates."""

    origin = Origin.MQTT

    def __init__(self, cfg: MqttSource, agent_id: str, inbox: Inbox, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(cfg, agent_id, inbox)
        self.cfg = cfg
        self.decoder = MqttDecoder(cfg, limits)

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(s.filter, s.qos if s.qos is not None else self.cfg.qos) for s in self.cfg.subscriptions]

    def handle(self, client: mqtt.Client, msg: mqtt.MQTTMessage, topic: str, token: Hashable | None) -> None:
        payload = msg.payload
        dup = bool(msg.dup)
        try:
            samples, problems = self.decoder.decode_all(topic, payload, now_us())
        except Malformed as exc:
            self._dead(payload, exc.reason, topic, token, dup)
            return
        # Invalid elements of a list: the message (original bytes) is dead-lettered with their
        # reasons, in the same delivery as the valid readings, so both commit (and dedup) together.
        dl = None
        if problems:
            reason = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            dl = DeadLetter(bytes(payload), reason, f"{self.id}:{topic}")
        ident = message_identity(self.id, topic, payload) if token is not None else None
        self.inbox.put(Delivery(self.id, Origin.MQTT, samples, dl, token, redelivered=dup, identity=ident))


def with_broker_url(cfg: MqttConnectionT, ctx: SourceContext) -> MqttConnectionT:
    """``cfg`` with PLANTSTREAM_MQTT_URL (``ctx.settings.mqtt``) where the file has no url."""
    if cfg.url is not None:
        return cfg
    try:
        return cfg.with_default_url(ctx.settings.mqtt)
    except ValueError as exc:
        raise ConfigError(
            f"source {cfg.id!r}: no url in the config and PLANTSTREAM_MQTT_URL is unusable: {exc}"
        ) from None


def build(cfg: MqttSource, ctx: SourceContext) -> MqttJsonSource:
    """The registry's factory (edge/mqtt/connector.py)."""
    return MqttJsonSource(with_broker_url(cfg, ctx), ctx.agent_id, ctx.inbox, ctx.limits)
