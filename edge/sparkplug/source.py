"""Sparkplug B connector: the shared MQTT connection (persistent session, manual acks, TLS) plus
the :class:`SparkplugDecoder` state machine, rebirth requests and optional primary-host STATE.

A message's readings and dead letters are handed over together; the message is acknowledged
(QoS 1) only after all of them are committed. Births seen by this process are kept in memory:
after an agent restart, data arriving before the node's next birth is dead-lettered (original
bytes kept) and a rebirth is requested, so the node announces its aliases again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Hashable

import paho.mqtt.client as mqtt

from plantstream.contract import Origin
from plantstream.edge.config import SparkplugSource
from plantstream.edge.mqtt.source import MqttClientSource
from plantstream.edge.source import DeadLetter, Delivery, Inbox, now_us
from plantstream.edge.sparkplug.decode import NAMESPACE, Malformed, SparkplugDecoder, ncmd_topic, rebirth_request
from plantstream.edge.vet import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)


class SparkplugBSource(MqttClientSource):
    origin = Origin.SPARKPLUG
    kind = "sparkplug"

    def __init__(self, cfg: SparkplugSource, agent_id: str, inbox: Inbox, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(cfg, agent_id, inbox)
        self.cfg = cfg
        self.decoder = SparkplugDecoder(cfg, limits=limits)

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(f"{NAMESPACE}/{g}/#", int(self.cfg.qos)) for g in self.cfg.group_ids]

    def _state_topic(self) -> str:
        return f"{NAMESPACE}/STATE/{self.cfg.host_id}"

    def _state(self, online: bool) -> bytes:
        return json.dumps({"online": online, "timestamp": time.time_ns() // 1_000_000}).encode()

    def configure(self, client: mqtt.Client) -> None:
        if self.cfg.host_id:
            # Sparkplug 3.0 primary host: edge nodes hold data while we are offline.
            client.will_set(self._state_topic(), self._state(False), qos=1, retain=True)

    def connected(self, client: mqtt.Client) -> None:
        if self.cfg.host_id:
            client.publish(self._state_topic(), self._state(True), qos=1, retain=True)

    def handle(self, client: mqtt.Client, msg: mqtt.MQTTMessage, topic: str, token: Hashable | None) -> None:
        payload = bytes(msg.payload)
        try:
            out = self.decoder.handle(topic, payload, now_us(), redelivered=bool(msg.dup))
        except Malformed as exc:
            self._dead(payload, exc.reason, topic, token)
            return
        if out.rebirth is not None:
            group, node = out.rebirth
            client.publish(ncmd_topic(group, node), rebirth_request(), qos=0)
            log.warning(
                "sparkplug: rebirth requested",
                extra={"kv": {"source": self.id, "node": f"{group}/{node}", "why": out.note or "unknown state"}},
            )
        for tag, why in list(self.decoder.unsupported.items()):
            if self.mark_failing(tag, why):
                log.error(
                    "sparkplug: metric type is not a reading; skipped",
                    extra={"kv": {"source": self.id, "tag": tag, "why": why}},
                )
        c = self.decoder.counters
        self.status.events.update(
            birth=c.births,
            death=c.deaths,
            stale_death=c.stale_deaths,
            seq_gap=c.seq_gaps,
            rebirth_requested=c.rebirths_requested,
            unknown_alias=c.unknown_aliases,
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
