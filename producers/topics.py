"""The Kafka contract: topic names, keys and partition counts.

Every topic name carries the contract version so a v2 can run beside v1 during a migration.
Keys are ``plant/equipment`` everywhere: all tags of one equipment unit land on one partition,
which keeps per-tag order and lets lot context (also keyed by equipment) be co-partitioned
with the readings it stamps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = "plantstream"
    partitions: int = 6

    @property
    def raw(self) -> str:
        """Readings as the edge saw them (ReadingBatch, key plant/equipment)."""
        return f"{self.prefix}.readings.raw.v1"

    @property
    def clean(self) -> str:
        """Validated, unit-normalized, deduplicated, lot-stamped readings (ReadingBatch)."""
        return f"{self.prefix}.readings.clean.v1"

    @property
    def context(self) -> str:
        """Lot start/end, genealogy and lab results (ContextEvent, key plant/equipment)."""
        return f"{self.prefix}.context.v1"

    @property
    def aggregates(self) -> str:
        """Closed 1 s and 1 min windows (list of Aggregate, key plant/equipment)."""
        return f"{self.prefix}.aggregates.v1"

    @property
    def deviations(self) -> str:
        """Spec excursions and out-of-spec lab results (map, key plant/equipment)."""
        return f"{self.prefix}.deviations.v1"

    @property
    def tags(self) -> str:
        """Tag metadata (TagMeta, key plant/tag); compacted: the latest per tag wins."""
        return f"{self.prefix}.tags.v1"

    @property
    def deadletter(self) -> str:
        """Undecodable or rejected records: original bytes, reason in headers."""
        return f"{self.prefix}.deadletter.v1"

    def all(self) -> list[str]:
        return [self.raw, self.clean, self.context, self.tags, self.aggregates, self.deviations, self.deadletter]


DEADLETTER_REASON_HEADER = "plantstream-reason"
DEADLETTER_STAGE_HEADER = "plantstream-stage"
DEADLETTER_ORIGIN_HEADER = "plantstream-origin"  # topic/partition/offset or source id
