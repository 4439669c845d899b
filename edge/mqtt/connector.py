"""Registers the MQTT (JSON) connector (edge/registry.py)."""

from plantstream.edge.registry import Connector

CONNECTOR = Connector(
    type="mqtt",
    config="plantstream.edge.config:MqttSource",
    factory="plantstream.edge.mqtt.source:build",
    order=20,
)
