"""Sparkplug B connector: the shared MQTT connection (persistent session, manual acks, TLS) plus
the :class:`SparkplugDecoder` state machine, rebirth requests and optional primary-host STATE.

Primary host (``host_id``), as Sparkplug 3.0 asks: the will is ``spBv1.0/STATE/<host_id>``
``{"online": false, "timestamp": T}`` (QoS 1, retained); the agent subscribes to the groups and
to its own STATE topic, and only once the broker granted them publishes ``{"online": true,
"timestamp": T}`` with the same T (edge nodes answer it with births, which must not be missed).
Its own STATE seen as offline while connected (a stale will) is answered with the birth again.
Sequence gaps wait ``reorder_timeout_s`` for the missing messages before a rebirth is requested.

A message's readings and dead letters are handed over together; the message is acknowledged
(QoS 1) only after all of them are committed. The births (alias tables) are persisted beside the
buffer, written before the message that changed them is acknowledged, so a restarted agent
decodes the backlog its persistent session holds instead of dead-lettering it until the node's
next birth. Data from a node whose birth was never seen is still dead-lettered (original bytes
kept) and a rebirth requested.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Hashable
from pathlib import Path

import paho.mqtt.client as mqtt

from plantstream.config import Settings
from plantstream.contract import Origin
from plantstream.edge.config import SparkplugSource
from plantstream.edge.mqtt.source import MqttClientSource, with_broker_url
from plantstream.edge.registry import SourceContext
from plantstream.edge.source import DeadLetter, Delivery, Inbox, now_us
from plantstream.edge.sparkplug.decode import NAMESPACE, Malformed, SparkplugDecoder, ncmd_topic, rebirth_request
from plantstream.edge.vet import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)


class SparkplugBSource(MqttClientSource):
    origin = Origin.SPARKPLUG
    kind = "sparkplug"

    def __init__(
        self,
        cfg: SparkplugSource,
        agent_id: str,
        inbox: Inbox,
        limits: Limits = DEFAULT_LIMITS,
        state_path: Path | None = None,
    ) -> None:
        super().__init__(cfg, agent_id, inbox)
        self.cfg = cfg
        self.decoder = SparkplugDecoder(cfg, limits=limits)
        self.state_path = state_path or Settings.from_env().state_dir / "edge" / f"sparkplug-{agent_id}-{cfg.id}.json"
        self._births_seen = 0  # births + deaths at the last save
        # One timestamp for the will and the birth of the STATE this client publishes (the spec
        # pairs them); the decoder is fed from paho's thread and ticked from the agent's loop.
        self._state_ts = time.time_ns() // 1_000_000
        self._decoder_lock = threading.Lock()
        self._load_births()

    def _load_births(self) -> None:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            restored = self.decoder.restore(data)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A damaged file costs a rebirth per node, never the agent.
            log.error("sparkplug: births file unreadable; nodes will be asked to rebirth",
                      extra={"kv": {"source": self.id, "path": str(self.state_path), "error": str(exc)}})  # fmt: skip
            return
        log.info("sparkplug: births restored", extra={"kv": {"source": self.id, "nodes": restored}})

    def _save_births(self) -> None:
        """Atomically, before the message that changed the births is acknowledged."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(self.decoder.snapshot(), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def subscriptions(self) -> list[tuple[str, int]]:
        subs = [(f"{NAMESPACE}/{g}/#", int(self.cfg.qos)) for g in self.cfg.group_ids]
        if self.cfg.host_id:
            subs.append((self._state_topic(), 1))
        return subs

    def _state_topic(self) -> str:
        return f"{NAMESPACE}/STATE/{self.cfg.host_id}"

    def _state(self, online: bool) -> bytes:
        return json.dumps({"online": online, "timestamp": self._state_ts}).encode()

    def configure(self, client: mqtt.Client) -> None:
        if self.cfg.host_id:
            # Sparkplug 3.0 primary host: edge nodes hold data while we are offline.
            client.will_set(self._state_topic(), self._state(False), qos=1, retain=True)

    def subscribed(self, client: mqtt.Client) -> None:
        if self.cfg.host_id:
            client.publish(self._state_topic(), self._state(True), qos=1, retain=True)

    async def run(self) -> None:
        ticks = asyncio.create_task(self._reorder_ticks())
        try:
            await super().run()
        finally:
            ticks.cancel()
            await asyncio.gather(ticks, return_exceptions=True)

    async def _reorder_ticks(self) -> None:
        """Expired reorder timeouts become rebirth requests even when the node sends nothing more."""
        period = min(0.25, max(self.cfg.reorder_timeout_s / 4, 0.05))
        while not await self.sleep(period):
            with self._decoder_lock:
                due = self.decoder.due_rebirths()
                self.status.events["rebirth_requested"] = self.decoder.counters.rebirths_requested
            client = self._client
            for group, node in due:
                if client is not None:
                    self._request_rebirth(client, group, node, "seq gap: missing messages did not arrive in time")

    def _request_rebirth(self, client: mqtt.Client, group: str, node: str, why: str) -> None:
        client.publish(ncmd_topic(group, node), rebirth_request(), qos=0)
        log.warning(
            "sparkplug: rebirth requested", extra={"kv": {"source": self.id, "node": f"{group}/{node}", "why": why}}
        )

    def _own_state(self, client: mqtt.Client, payload: bytes, token: Hashable | None) -> None:
        try:
            online = json.loads(payload).get("online")
        except (ValueError, AttributeError):
            online = None
        if online is not True:
            # Our will (or someone's) says we are offline while we are connected: edge nodes would
            # stop sending; the spec asks for the birth again at once.
            log.warning(
                "sparkplug: own STATE seen offline; publishing it online again", extra={"kv": {"source": self.id}}
            )
            client.publish(self._state_topic(), self._state(True), qos=1, retain=True)
        if token is not None:
            self.inbox.put(Delivery(self.id, Origin.SPARKPLUG, [], ack=token))

    def handle(self, client: mqtt.Client, msg: mqtt.MQTTMessage, topic: str, token: Hashable | None) -> None:
        payload = bytes(msg.payload)
        if self.cfg.host_id and topic == self._state_topic():
            self._own_state(client, payload, token)
            return
        with self._decoder_lock:
            self._decode(client, msg, payload, topic, token)

    def _decode(
        self, client: mqtt.Client, msg: mqtt.MQTTMessage, payload: bytes, topic: str, token: Hashable | None
    ) -> None:
        try:
            out = self.decoder.handle(topic, payload, now_us(), redelivered=bool(msg.dup))
        except Malformed as exc:
            self._dead(payload, exc.reason, topic, token)
            return
        if out.rebirth is not None:
            group, node = out.rebirth
            self._request_rebirth(client, group, node, out.note or "unknown state")
        for tag, why in list(self.decoder.unsupported.items()):
            if self.mark_failing(tag, why):
                log.error(
                    "sparkplug: metric type is not a reading; skipped",
                    extra={"kv": {"source": self.id, "tag": tag, "why": why}},
                )
        c = self.decoder.counters
        if c.births + c.deaths != self._births_seen:
            try:
                self._save_births()
                self._births_seen = c.births + c.deaths
            except OSError as exc:  # e.g. a full disk: retried at the next birth or death
                log.error("sparkplug: births not persisted", extra={"kv": {"source": self.id, "error": str(exc)}})
        self.status.events.update(
            birth=c.births,
            death=c.deaths,
            stale_death=c.stale_deaths,
            seq_gap=c.seq_gaps,
            rebirth_requested=c.rebirths_requested,
            unknown_alias=c.unknown_aliases,
            reordered=c.reordered,
        )
        deliveries: list[Delivery] = [
            Delivery(self.id, Origin.SPARKPLUG, None, DeadLetter(payload, reason, f"{self.id}:{topic}"))
            for reason in out.deadletters
        ]
        if out.samples:
            deliveries.append(Delivery(self.id, Origin.SPARKPLUG, out.samples, redelivered=bool(msg.dup)))
        if not deliveries:
            if token is None:
                return
            deliveries.append(Delivery(self.id, Origin.SPARKPLUG, []))  # nothing to store; still ack after commit
        deliveries[-1].ack = token
        for d in deliveries:
            self.inbox.put(d)


def build(cfg: SparkplugSource, ctx: SourceContext) -> SparkplugBSource:
    """The registry's factory (edge/sparkplug/connector.py); births survive restarts beside the buffer."""
    return SparkplugBSource(
        with_broker_url(cfg, ctx), ctx.agent_id, ctx.inbox, ctx.limits, ctx.state_file(f"sparkplug-{cfg.id}.json")
    )
