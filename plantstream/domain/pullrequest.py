"""What a dataset pull asks for, who asks, and what a pull produced: the contract between the
datasets stage (which runs pulls) and the monitor (which serves them over HTTP), so neither imports
the other. ``PullEngine`` is the extension point; the console entry point hands the datasets
stage's engine to the monitor.

``PullRequest`` is validated by pydantic (YAML via ``load_yaml``, JSON from the HTTP monitor, or
the CLI's options). Every problem found before touching the database or the disk raises
``RequestError`` naming the request field; problems found in the database (unknown tag or lot,
empty range, a split that cannot be made) raise it too, before anything is written.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plantstream.access import Tier
from plantstream.domain.durations import format_duration_us, parse_duration_us
from plantstream.domain.split import SPLITS, SplitError, lot_counts

DEFAULT_ROW_CAP = 20_000_000


class RequestError(ValueError):
    """A pull request that cannot be served as asked; ``field`` names the request field to fix."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message


class GapSpec(BaseModel):
    """How a tag's empty grid buckets are filled: ``none``, ``locf`` or ``linear`` within ``max_gap``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Literal["none", "locf", "linear"] = "locf"
    max_gap: str | None = None  # a duration; default: 5 grid intervals

    @field_validator("max_gap")
    @classmethod
    def _gap(cls, v: str | None) -> str | None:
        if v is None:
            return v
        return format_duration_us(parse_duration_us(v))

    @staticmethod
    def parse(text: str) -> GapSpec:
        """``'locf:30s'``, ``'linear:10s'``, ``'none'`` (CLI form)."""
        rule, _, gap = text.partition(":")
        return GapSpec(rule=rule, max_gap=gap or None)  # type: ignore[arg-type]


class SplitSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    train: float = Field(0.7, ge=0, le=1)
    validation: float = Field(0.15, ge=0, le=1)
    test: float = Field(0.15, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sum(self) -> SplitSpec:
        lot_counts(10**6, self.proportions)  # proportions only; the lot count is checked later
        return self

    @property
    def proportions(self) -> dict[str, float]:
        return {s: float(getattr(self, s)) for s in SPLITS}


class PullRequest(BaseModel):
    """Selection, sampling and output options of one pull (see datasets/README.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plant: str = Field(min_length=1)
    equipment: str | None = None  # ISA-95 path; the whole subtree
    tags: tuple[str, ...] = ()  # empty: every tag of the plant / equipment subtree
    start: datetime
    end: datetime
    interval: str = "1s"
    gap: GapSpec = GapSpec()
    tag_gaps: dict[str, GapSpec] = Field(default_factory=dict)
    lots: tuple[str, ...] = ()
    spec: str | None = None  # material spec id, e.g. EN10025-2:S355J2
    material_grade: str | None = None  # e.g. S355J2
    labels: bool = False
    split: SplitSpec | None = None
    row_cap: int = Field(DEFAULT_ROW_CAP, ge=1)
    name: str | None = None
    license: str = "CC-BY-4.0"
    # Refuse the pull when a tag's share of rows with a value (after gap filling) is below this.
    min_completeness: float | None = Field(None, ge=0, le=1)

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        # A naive time is taken as UTC (documented); everything is stored and written in UTC.
        try:
            return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00+14:00: before year 1 in UTC
            raise ValueError("out of range in UTC") from None

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        return format_duration_us(parse_duration_us(v))

    @field_validator("equipment")
    @classmethod
    def _equipment(cls, v: str | None) -> str | None:
        return v.strip("/") or None if v is not None else None

    @field_validator("tags", "lots")
    @classmethod
    def _sorted_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _consistent(self) -> PullRequest:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        rows = self.n_rows
        if rows > self.row_cap:
            raise ValueError(
                f"interval {self.interval} over {self.end - self.start} gives {rows} rows, above the row cap "
                f"{self.row_cap}: use a coarser interval or a shorter range"
            )
        for tag, g in {"(default)": self.gap, **self.tag_gaps}.items():
            gap = self.max_gap_us(g)
            if g.rule != "none" and gap < 1:
                raise ValueError(f"gap for {tag}: max_gap must be positive")
        if self.split is not None and (self.lots or self.spec or self.material_grade):
            pass  # compatible: the split is made among the selected lots
        return self

    # -- derived --------------------------------------------------------------------------------

    @property
    def start_us(self) -> int:
        return _us(self.start)

    @property
    def end_us(self) -> int:
        return _us(self.end)

    @property
    def interval_us(self) -> int:
        return parse_duration_us(self.interval)

    @property
    def n_rows(self) -> int:
        return math.ceil((self.end_us - self.start_us) / self.interval_us)

    def max_gap_us(self, g: GapSpec) -> int:
        return parse_duration_us(g.max_gap) if g.max_gap else 5 * self.interval_us

    def gap_for(self, tag: str) -> GapSpec:
        return self.tag_gaps.get(tag, self.gap)

    @property
    def needs_lots(self) -> bool:
        return bool(self.split or self.lots or self.spec or self.material_grade or self.labels)

    def canonical(self) -> dict[str, Any]:
        """The request as a canonical JSON-able dict (what the snapshot id and the record hold)."""
        data = self.model_dump(mode="json")
        data["start"] = self.start.isoformat().replace("+00:00", "Z")
        data["end"] = self.end.isoformat().replace("+00:00", "Z")
        data["tag_gaps"] = {k: data["tag_gaps"][k] for k in sorted(data["tag_gaps"])}
        return data

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))


class RequestFile(BaseModel):
    """A request YAML before command-line options are merged in (checked as PullRequest after)."""

    model_config = ConfigDict(extra="allow")


class Requester(BaseModel):
    """Who pulls: a name for the record and the tier their token grants."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    tier: Tier


class FileEntry(BaseModel):
    path: str
    sha256: str
    bytes: int
    rows: int | None = None


class PullRecord(BaseModel):
    """One row of ``dataset_pulls``."""

    id: int
    requester: str
    tier: str
    db_user: str
    db_role: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    request: dict[str, Any]
    snapshot: str | None
    watermark: str | None
    location: str | None
    files: list[FileEntry]
    rows: int | None
    cells: int | None
    withheld: list[dict[str, Any]]  # [{grade, count}]; records before migration 0008 hold {tag, grade}
    error: str | None


def _us(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def validate_request(data: dict[str, Any]) -> PullRequest:
    """``PullRequest.model_validate`` with the first error turned into a ``RequestError``."""
    try:
        return PullRequest.model_validate(data)
    except ValidationError as exc:
        raise request_error(exc) from None
    except SplitError as exc:
        raise RequestError(exc.field, str(exc)) from None


def request_error(exc: ValidationError) -> RequestError:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or _guess_field(err["msg"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return RequestError(loc, msg)


def _guess_field(msg: str) -> str:
    for key in ("row cap", "end must", "gap for", "split"):
        if key in msg:
            return {"row cap": "interval", "end must": "end", "gap for": "gap", "split": "split"}[key]
    return "(request)"


@dataclass(slots=True)
class Progress:
    """A running pull's counters, reported after every window."""

    rows: int = 0
    cells: int = 0
    readings: int = 0
    seconds: float = 0.0

    @property
    def cells_per_s(self) -> float:
        return self.cells / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[Progress], None]


class PullCancelled(Exception):
    """The caller's ``cancel`` event was set; the pull is recorded as 'failed' and nothing is kept."""


class PullEngine(Protocol):
    """What serves a pull: the datasets stage implements it (``plantstream.datasets.api.ENGINE``).

    ``run`` raises RequestError (a client error) before anything is written, PullCancelled when
    ``cancel`` is set, and any other exception for a server-side failure (recorded as 'failed').
    ``on_begin`` gets the record id once it exists; ``on_resolved`` the resolved plan once the
    request passed the database checks (its type is the engine's own).
    """

    def run(
        self,
        request: PullRequest,
        requester: Requester,
        *,
        dsn: str,
        out_root: Path,
        progress: ProgressFn | None,
        on_begin: Callable[[int], None] | None,
        on_resolved: Callable[[Any], None] | None,
        cancel: threading.Event | None,
        application_name: str,
    ) -> PullRecord: ...

    def record(self, dsn: str, pull_id: int) -> PullRecord | None:
        """The stored record of pull ``pull_id`` (None when there is none)."""
        ...
