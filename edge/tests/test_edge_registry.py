"""Connector registry: every connector folder registers itself; the source union and the agent's
factory dispatch come from it (no per-connector branch)."""

from __future__ import annotations

import pytest

from plantstream.config import Settings
from plantstream.edge import registry
from plantstream.edge.agent import build_source
from plantstream.edge.config import EdgeConfig
from plantstream.edge.modbus.source import ModbusTcpSource
from plantstream.edge.mqtt.source import MqttJsonSource
from plantstream.edge.opcua.source import OpcuaSourceRunner
from plantstream.edge.source import Inbox

EQ = "acme/site/area"


def test_every_connector_folder_is_registered_in_order() -> None:
    assert [c.type for c in registry.connectors()] == ["opcua", "mqtt", "sparkplug", "modbus"]
    for c in registry.connectors():
        model = c.config_model()
        assert model.model_fields["type"].annotation is not None
    with pytest.raises(KeyError, match="'nope'"):
        registry.connector("nope")


def test_union_and_factories_come_from_the_registry() -> None:
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": "a",
            "plant": "p",
            "sources": [
                {"type": "opcua", "id": "o", "endpoint": "opc.tcp://h:4840", "tags": [{"tag": "t1", "equipment": EQ, "node_id": "ns=2;s=x"}]},
                {"type": "mqtt", "id": "m", "url": "mqtt://h:1883", "subscriptions": [{"template": "x/{equipment+}/{tag}"}]},
                {"type": "modbus", "id": "mb", "host": "h", "tags": [{"tag": "t2", "equipment": EQ, "address": 3}]},
            ],
        }
    )  # fmt: skip
    built = [build_source(s, "a", Inbox(), Settings.from_env()) for s in cfg.sources]
    assert [type(b) for b in built] == [OpcuaSourceRunner, MqttJsonSource, ModbusTcpSource]
    assert [b.id for b in built] == ["o", "m", "mb"]


def test_a_registered_type_twice_is_refused() -> None:
    c = registry.connector("modbus")
    registry.register(c)  # the same registration again is harmless
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(registry.Connector("modbus", "x:Y", "x:build"))
