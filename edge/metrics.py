"""Prometheus metrics of one edge agent, on its own registry (several agents may share a process
in tests; a global registry would collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class EdgeMetrics:
    def __init__(self, agent_id: str) -> None:
        self.registry = r = CollectorRegistry()
        lbl = ["agent", "source"]
        self.agent_id = agent_id
        self.readings_in = Counter("plantstream_edge_readings_in", "Readings committed to the buffer", lbl, registry=r)
        self.readings_out = Counter("plantstream_edge_readings_out", "Readings acknowledged by Kafka", lbl, registry=r)
        self.bad_quality = Counter(
            "plantstream_edge_bad_quality", "Readings with bad or uncertain quality", lbl, registry=r
        )
        self.reconnects = Counter("plantstream_edge_reconnects", "Source reconnects", lbl, registry=r)
        self.deadletters = Counter(
            "plantstream_deadletters_total",
            "Malformed payloads sent to the dead-letter topic",
            ["stage", *lbl, "reason"],
            registry=r,
        )
        self.failing_nodes = Gauge("plantstream_edge_failing_nodes", "Configured nodes not delivering", lbl, registry=r)
        self.connected = Gauge("plantstream_edge_source_connected", "1 while the source session is up", lbl, registry=r)
        self.dropped = Counter(
            "plantstream_edge_dropped_readings", "Readings dropped at a buffer cap", ["agent", "reason"], registry=r
        )
        self.buffer_bytes = Gauge("plantstream_edge_buffer_bytes", "Bytes waiting in the buffer", ["agent"], registry=r)
        self.buffer_readings = Gauge(
            "plantstream_edge_buffer_readings", "Readings waiting in the buffer", ["agent"], registry=r
        )
        self.buffer_age = Gauge(
            "plantstream_edge_buffer_oldest_age_seconds", "Age of the oldest buffered entry", ["agent"], registry=r
        )
        self.kafka_failures = Counter(
            "plantstream_edge_kafka_delivery_failures", "Failed Kafka deliveries (retried)", ["agent"], registry=r
        )
        self.refused = Gauge(
            "plantstream_edge_refused_entries",
            "Buffered entries Kafka refused (e.g. larger than message.max.bytes): kept in the buffer, not sent; "
            "they are tried again at the next start",
            ["agent"],
            registry=r,
        )
        self.duplicates = Counter(
            "plantstream_edge_duplicates_dropped",
            "Redelivered copies of readings already committed (not forwarded again)",
            lbl,
            registry=r,
        )
        self.events = Counter(
            "plantstream_edge_protocol_events",
            "Protocol events per source (Sparkplug: birth, death, stale_death, seq_gap, rebirth_requested, unknown_alias)",
            [*lbl, "event"],
            registry=r,
        )
        self.storage_error = Gauge(
            "plantstream_edge_buffer_storage_error",
            "1 while buffer writes fail (disk full, I/O error): sources are not acknowledged meanwhile",
            ["agent", "kind"],
            registry=r,
        )
        self.write_failures = Counter(
            "plantstream_edge_buffer_write_failures",
            "Failed buffer writes by operation (append, delete, expire, cap); each is retried",
            ["agent", "operation"],
            registry=r,
        )
        self.held_readings = Gauge(
            "plantstream_edge_held_readings",
            "Readings held in memory because the buffer could not store them yet (not acknowledged)",
            ["agent"],
            registry=r,
        )
        self.port: int | None = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start /metrics; returns the bound port (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(server.server_address[1])
        return self.port
