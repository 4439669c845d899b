"""Registers the Sparkplug B connector (edge/registry.py)."""

from plantstream.edge.registry import Connector

CONNECTOR = Connector(
    type="sparkplug",
    config="plantstream.edge.config:SparkplugSource",
    factory="plantstream.edge.sparkplug.source:build",
    order=30,
)
