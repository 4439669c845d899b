"""Streams worker configuration (optional YAML; every key has a default)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from plantstream.config import load_yaml
from plantstream.contract import validate_equipment_path
from plantstream.streams.logic.lot_tags import LotTagSpec
from plantstream.streams.logic.processor import ProcessorConfig


class LotTagConfig(BaseModel):
    """A process tag whose value is the lot currently on an equipment unit (see README "Lot tags")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plant: str = Field(min_length=1, description="plant id of the readings, e.g. steel")
    tag: str = Field(min_length=1, description="tag name within the plant, e.g. caster1.current_heat")
    lot_kind: str = Field(default="", description="heat, batch, doff, ... (copied onto lot_start)")
    equipment: str | None = Field(
        default=None, description="ISA-95 path the lot runs on; default: the reading's equipment"
    )
    material: str = Field(default="", description="material spec id for every lot of this tag, if fixed")
    idle_values: tuple[str, ...] = Field(
        default=(), description="values meaning 'no lot' besides the empty string, e.g. ['0', 'NONE']"
    )

    @field_validator("equipment")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return None if v is None else validate_equipment_path(v)

    def spec(self) -> LotTagSpec:
        return LotTagSpec(
            self.plant, self.tag, self.lot_kind, self.equipment, self.material, frozenset(self.idle_values)
        )


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
    max_output_bytes: int = Field(
        default=900_000,
        ge=10_000,
        le=100_000_000,
        description="largest output message value; bigger outputs are cut (keep below the broker's message.max.bytes)",
    )
    output_timeout_s: float = Field(
        default=120.0,
        ge=1,
        le=3600,
        description="librdkafka retries an output this long; then the worker stops with exit status 3",
    )
    batch_max_events: int = Field(default=5000, ge=1, le=100_000, description="raw records processed per take")
    # A take ends every batch_within_ms, and each produces a batch per output partition and wakes
    # the loop even when idle. 5 ms cost an idle worker 9 % of a core (50 ms: 3.6 %) and, at 40k
    # readings/s, the local broker twice the CPU (it lists every stored batch on each fetch); 50 ms
    # adds ~25 ms of latency on average.
    batch_within_ms: float = Field(default=50.0, gt=0, le=5000, description="longest a take waits to fill")
    dedup_max_streams: int = Field(default=200_000, ge=1)
    dedup_max_spans: int = Field(
        default=8192, ge=1, description="processed seq spans (one per raw batch) remembered per stream"
    )
    dedup_max_spans_total: int = Field(
        default=2_000_000, ge=1, description="seq spans remembered over all streams (16 bytes each)"
    )
    lot_history: int = Field(default=256, ge=1)
    clock_past_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="a source time further behind the worker's clock is flagged BAD and moves no watermark",
    )
    clock_future_s: float = Field(
        default=600.0,
        gt=0,
        description="a source time further ahead of the worker's clock is flagged BAD and moves no watermark",
    )
    lot_tags: tuple[LotTagConfig, ...] = Field(
        default=(), description="process tags carrying the current lot id (lot start/end derived from changes)"
    )

    @model_validator(mode="after")
    def _spans(self) -> StreamsConfig:
        if self.dedup_max_spans > self.dedup_max_spans_total:
            raise ValueError("dedup_max_spans must not exceed dedup_max_spans_total")
        return self

    @field_validator("lot_tags")
    @classmethod
    def _unique_lot_tags(cls, v: tuple[LotTagConfig, ...]) -> tuple[LotTagConfig, ...]:
        seen: set[tuple[str, str]] = set()
        for lt in v:
            if (lt.plant, lt.tag) in seen:
                raise ValueError(f"lot tag {lt.plant}/{lt.tag} is listed twice")
            seen.add((lt.plant, lt.tag))
        return v

    def processor(self) -> ProcessorConfig:
        return ProcessorConfig(
            self.allowed_lateness_s,
            self.idle_timeout_s,
            self.dedup_max_streams,
            self.lot_history,
            tuple(lt.spec() for lt in self.lot_tags),
            self.dedup_max_spans,
            self.dedup_max_spans_total,
            self.clock_past_s,
            self.clock_future_s,
        )


def load(path: str | Path | None) -> StreamsConfig:
    """Defaults when ``path`` is None; ConfigError (file:line: key) on a bad file."""
    return StreamsConfig() if path is None else load_yaml(path, StreamsConfig)
