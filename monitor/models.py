"""Response models of the monitor API; the OpenAPI document is generated from them.

Times are ISO-8601 UTC strings in JSON (pydantic serializes ``datetime``); live events use
integer microseconds (``*_us``) like the Kafka contract, so the page does no date parsing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Value = float | int | bool | str | None


class Problem(BaseModel):
    """Error body (RFC 9457 ``application/problem+json`` subset)."""

    status: int
    title: str
    detail: str = ""
    field: str | None = Field(
        default=None, description="422 only: the request field to fix, or the server limit that was hit"
    )


class Me(BaseModel):
    tier: str
    grades: list[str] = Field(description="data grades this tier may read")


class EquipmentNode(BaseModel):
    path: str
    name: str
    level: str
    tags: int = Field(description="tags directly on this node that the caller may see")
    children: list[EquipmentNode] = Field(default_factory=list)


class PlantTree(BaseModel):
    plant: str
    roots: list[EquipmentNode]


class EquipmentTree(BaseModel):
    plants: list[PlantTree]


class Tag(BaseModel):
    plant: str
    tag: str
    equipment: str
    unit: str
    datatype: str
    grade: str
    lo: float | None = None
    hi: float | None = None
    spec_property: str = ""
    description: str = ""
    # Standard property of the shared vocabulary (e.g. ps:temperature.melt), "" for none (issue 18).
    std_property: str = ""


class TagList(BaseModel):
    tags: list[Tag]


class Latest(BaseModel):
    tag: str
    equipment: str
    unit: str
    time: datetime
    value: Value
    quality: Literal["good", "uncertain", "bad"]
    lot: str | None = None


class LatestList(BaseModel):
    plant: str
    values: list[Latest]


class HistoryBucket(BaseModel):
    start: datetime
    count: int
    bad_count: int
    min: float | None
    max: float | None
    mean: float | None
    last: float | None


class History(BaseModel):
    plant: str
    tag: str
    unit: str
    start: datetime
    end: datetime
    bucket_s: float = Field(description="bucket width chosen on the server")
    buckets: list[HistoryBucket]


class LotSegment(BaseModel):
    lot: str
    lot_kind: str
    spec_id: str | None
    equipment: str
    start: datetime
    end: datetime | None


class LotTimeline(BaseModel):
    plant: str
    equipment: str
    segments: list[LotSegment]


class CurrentLot(BaseModel):
    plant: str
    equipment: str
    lot: str
    lot_kind: str
    spec_id: str | None
    start: datetime


class CurrentLots(BaseModel):
    lots: list[CurrentLot]


class SpecLimit(BaseModel):
    property: str
    basis: Literal["lab", "process"]
    condition: str
    min: float | None
    max: float | None
    target: float | None
    unit: str
    test_method: str


class MaterialSpec(BaseModel):
    spec_id: str
    revision: str
    standard: str
    grade: str
    description: str
    material_class: str
    effective_from: str
    limits: list[SpecLimit]


class SpecList(BaseModel):
    specs: list[MaterialSpec]


class TagLimits(BaseModel):
    """Process limits of the lot's material for one tag, converted into the tag's unit."""

    plant: str
    tag: str
    lot: str | None
    spec_id: str | None
    property: str
    unit: str
    min: float | None
    max: float | None
    target: float | None


class Deviation(BaseModel):
    id: str
    kind: str
    status: str
    plant: str
    tag: str | None
    lot: str | None
    spec_id: str | None
    property: str
    start: datetime
    end: datetime | None
    peak: float | None
    limit_min: float | None = None
    limit_max: float | None = None
    unit: str = ""


class DeviationList(BaseModel):
    deviations: list[Deviation]


class DatasetPull(BaseModel):
    """A row of ``dataset_pulls`` as stored (columns vary with the datasets stage's schema)."""

    fields: dict[str, Any]


class DatasetPullList(BaseModel):
    available: bool = Field(description="false when the database has no dataset_pulls table")
    pulls: list[DatasetPull]


# --- dataset pulls over HTTP ------------------------------------------------------------------


class PullProgress(BaseModel):
    """How far a running pull is (updated about once a second)."""

    readings: int = Field(description="source readings read so far")
    rows: int = Field(description="grid rows written so far")
    cells: int = Field(description="rows x tags written so far")
    seconds: float
    rows_per_s: float
    cells_per_s: float
    expected_rows: int = Field(description="grid rows of the request: an upper bound (lot filters drop rows)")


class PullFile(BaseModel):
    path: str
    sha256: str
    bytes: int
    rows: int | None = None
    url: str | None = Field(
        default=None, description="download path (null until done, or when this monitor does not hold the files)"
    )


PullStatusName = Literal["running", "done", "failed", "rejected"]


class WithheldGrade(BaseModel):
    """Tags of one grade a pull left out because its tier may not read them."""

    grade: str
    count: int
    tags: list[str] | None = Field(default=None, description="their names: shown to the owner tier only")


class DatasetPullAccepted(BaseModel):
    """Answer to a started pull: poll ``location`` for its status."""

    id: int
    status: PullStatusName
    location: str


class DatasetPullStatus(BaseModel):
    """One pull: progress while running; files with hashes, snapshot and withheld tags when done."""

    id: int
    status: PullStatusName
    requester: str
    tier: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: dict[str, Any]
    progress: PullProgress | None = None
    snapshot: str | None = None
    watermark: str | None = None
    files: list[PullFile] = Field(default_factory=list)
    rows: int | None = None
    cells: int | None = None
    withheld: list[WithheldGrade] = Field(
        default_factory=list, description="tags above the pull's tier, counted per grade (names for owners only)"
    )
    error: str | None = None


# --- live events (SSE ``data:`` payloads) -------------------------------------------------------


class LiveAggregate(BaseModel):
    plant: str
    equipment: str
    tag: str
    window: str
    start_us: int
    count: int
    bad_count: int
    min: float | None
    max: float | None
    mean: float | None
    last: float | None
    unit: str
    lot: str | None


class LiveAggregates(BaseModel):
    """SSE event ``aggregates``: the 1 s windows of one equipment unit that closed together."""

    items: list[LiveAggregate]


class LiveLot(BaseModel):
    """SSE event ``lot``: a lot started or ended on an equipment path."""

    kind: Literal["lot_start", "lot_end"]
    plant: str
    equipment: str
    lot: str
    lot_kind: str
    material: str
    ts_us: int


class LiveDeviation(BaseModel):
    """SSE event ``deviation``: the record from the deviations topic as the streams stage wrote it."""

    id: str
    kind: str
    state: str
    plant: str
    equipment: str | None = None
    tag: str | None = None
    lot: str | None = None
    spec: str | None = None
    property: str | None = None
    start_us: int | None = None
    end_us: int | None = None
    peak: float | None = None
    limit_min: float | None = None
    limit_max: float | None = None
    unit: str | None = None


class JsonLdDocument(BaseModel):
    """A JSON-LD document (``application/ld+json``): the node's catalog (schema.org ``DataCatalog``
    / ``dcat:Catalog``) or one product (``Dataset``); see ``plantstream.domain.catalog``."""

    model_config = ConfigDict(extra="allow")


API_MODELS: list[type[BaseModel]] = [
    Problem,
    JsonLdDocument,
    Me,
    EquipmentTree,
    TagList,
    LatestList,
    History,
    LotTimeline,
    CurrentLots,
    SpecList,
    TagLimits,
    DeviationList,
    DatasetPullList,
    DatasetPullAccepted,
    DatasetPullStatus,
    LiveAggregates,
    LiveLot,
    LiveDeviation,
]
