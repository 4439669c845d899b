"""Registers the Modbus TCP connector (edge/registry.py)."""

from plantstream.edge.registry import Connector

CONNECTOR = Connector(
    type="modbus",
    config="plantstream.edge.modbus.config:ModbusSource",
    factory="plantstream.edge.modbus.source:build",
    order=40,
)
