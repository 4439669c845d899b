"""Sparkplug B connector: the shared MQTT connection (persistent session, manual acks, TLS) plus
the :class:`SparkplugDecoder` state machine, rebirth requests and optional primary-host STATE.

A message's readings and dead letters are handed over together; the message is acknowledged
(QoS 1) only after all of them are committed. The births (alias tables) are persisted beside the
buffer, written before the message that changed them is acknowledged, so a restarted agent
decodes the backlog its persistent session holds instead of dead-lettering it until the node's
next birth. Data from a node whose birth was never seen is still dead-lettered (original bytes
kept) and a rebirth requested.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Hashable
from pathlib import Path

import paho.mqtt.client as mqtt

from plantstream.config import Settings
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
