"""Streams worker configuration (optional YAML; every key has a default)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from plantstream.config import load_yaml
from plantstream.streams.logic.processor import ProcessorConfig


class StreamsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_lateness_s: float = Field(
        default=2.0, ge=0, le=3600, description="event-time lateness before a window closes"
    )
    idle_timeout_s: float = Field(default=90.0, gt=0, description="close a silent tag's windows after this long")
    checkpoint_interval_s: float = Field(default=5.0, gt=0, description="flush outputs, save checkpoint, ack offsets")
    progress_interval_s: float = Field(default=10.0, gt=0)
    web_port: int | None = Field(default=None, ge=0, le=65535, description="faust web server port; none = disabled")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Prometheus /metrics; env PLANTSTREAM_METRICS_PORT"
    )
    session_timeout_s: float = Field(
        default=10.0, ge=2, le=300, description="a dead worker's partitions move to the others after this long"
    )
    fetch_wait_ms: int = Field(
        default=50, ge=1, le=10_000, description="longest the broker may hold a fetch (latency; see README)"
    )
    linger_ms: int = Field(default=5, ge=0, le=1000, description="producer linger for outputs")
    batch_max_events: int = Field(default=5000, ge=1, le=100_000, description="raw records processed per take")
    batch_within_ms: float = Field(default=5.0, gt=0, le=5000, description="longest a take waits to fill")
    dedup_max_streams: int = Field(default=200_000, ge=1)
    lot_history: int = Field(default=256, ge=1)

    def processor(self) -> ProcessorConfig:
        return ProcessorConfig(self.allowed_lateness_s, self.idle_timeout_s, self.dedup_max_streams, self.lot_history)


def load(path: str | Path | None) -> StreamsConfig:
    """Defaults when ``path`` is None; ConfigError (file:line: key) on a bad file."""
    return StreamsConfig() if path is None else load_yaml(path, StreamsConfig)
