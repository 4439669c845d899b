"""Prometheus metrics of one monitor process (own registry: several apps can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.clients = Gauge("plantstream_monitor_clients", "Live-stream (SSE) clients connected", registry=r)
        self.fanned_out = Counter(
            "plantstream_monitor_events_fanned_out", "Live events queued to clients", ["kind"], registry=r
        )
        self.dropped = Counter(
            "plantstream_monitor_events_dropped", "Live events dropped because a client's queue was full", registry=r
        )
        self.kafka_messages = Counter(
            "plantstream_monitor_kafka_messages", "Kafka records read by the monitor's consumer", ["topic"], registry=r
        )
        self.decode_errors = Counter(
            "plantstream_monitor_decode_errors", "Undecodable Kafka records skipped", ["topic"], registry=r
        )
        self.pulls = Counter(
            "plantstream_monitor_dataset_pulls",
            "Dataset pulls started over HTTP that ended, by outcome",
            ["status"],
            registry=r,
        )
        self.pulls_running = Gauge(
            "plantstream_monitor_dataset_pulls_running", "Dataset pulls running in this monitor", registry=r
        )
        self.api_seconds = Histogram(
            "plantstream_monitor_api_seconds",
            "HTTP API latency by route and status class",
            ["route", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
