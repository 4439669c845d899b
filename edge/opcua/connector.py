"""Registers the OPC-UA connector (edge/registry.py)."""

from plantstream.edge.registry import Connector

CONNECTOR = Connector(
    type="opcua",
    config="plantstream.edge.config:OpcuaSource",
    factory="plantstream.edge.opcua.source:build",
    order=10,
)
