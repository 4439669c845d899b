"""Prometheus metrics of one platform process (own registry: several apps can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.harvests = Counter(
            "plantstream_platform_harvests", "Catalog harvests by node and outcome", ["node", "outcome"], registry=r
        )
        self.node_up = Gauge(
            "plantstream_platform_node_up", "1 when the node's last harvest succeeded", ["node"], registry=r
        )
        self.entries = Gauge(
            "plantstream_platform_catalog_entries", "Product versions harvested from the node", ["node"], registry=r
        )
        self.requests = Counter(
            "plantstream_platform_requests",
            "Brokered download requests by outcome (ok, refused, quota, node_error, ...)",
            ["outcome"],
            registry=r,
        )
        self.bytes = Counter(
            "plantstream_platform_bytes", "Bytes streamed from nodes to members, by charge", ["charge"], registry=r
        )
        self.pulls_inflight = Gauge("plantstream_platform_pulls_inflight", "Brokered downloads in progress", registry=r)
        self.alerts = Counter("plantstream_platform_alerts", "Alerts raised, by rule", ["rule"], registry=r)
