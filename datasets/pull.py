"""One dataset pull, end to end: resolve -> stream -> resample -> Parquet -> Croissant + card.

Contract:

* The whole pull runs under ``SET ROLE <tier role>`` (``plantstream.access.DB_ROLE``) and reads
  only the ``ds_*`` views, in one REPEATABLE READ READ ONLY transaction (one consistent snapshot
  of the data). The database, not this code, decides what the tier may read. Extra read
  connections (``FETCH_CONNECTIONS``) import that snapshot and run under the same role.
* Every pull is recorded in ``dataset_pulls`` (status running -> complete / rejected / failed),
  through SECURITY DEFINER functions the tier roles may execute.
* Bad input (``RequestError``: unknown tag or lot, empty range, a split that cannot be made, an
  existing output directory) is raised before any file is written.
* Files are written into a hidden temporary directory beside the target and renamed into place
  only when complete; on failure the temporary directory is removed.
* Memory is bounded by the window size (about a million raw readings or two million grid cells
  per window), whatever the size of the pull.
* Same request, same data -> byte-identical files and the same snapshot id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.types.json import Jsonb

from plantstream.access import DB_ROLE, READABLE
from plantstream.datasets import output, report
from plantstream.datasets.card import render_card
from plantstream.datasets.logic.labels import Limit, governing_limits, in_spec
from plantstream.datasets.logic.quality import Moments, Runs, TagQuality, stuck_rows
from plantstream.datasets.logic.resample import NO_LOT, Resampler, Rows, TagPlan
from plantstream.datasets.logic.segments import LineLots, line_of
from plantstream.datasets.lots import LotAggregator, table_of
from plantstream.datasets.provenance import croissant_extra
from plantstream.datasets.report import check_minimums
from plantstream.datasets.source import (
    SOURCE_TAGS_SQL,
    RawWindow,
    SourceTag,
    WindowReader,
    snapshot_helpers,
    tune_for_windows,
)
from plantstream.domain.durations import format_duration_us
from plantstream.domain.pullrequest import (
    FileEntry,
    Progress,
    ProgressFn,
    PullCancelled,
    PullRecord,
    PullRequest,
    Requester,
    RequestError,
    _us,
)
from plantstream.domain.split import SplitError, assign_splits

log = logging.getLogger(__name__)

TARGET_READINGS_PER_WINDOW = 1_000_000
MAX_CELLS_PER_WINDOW = 2_000_000
# Connections reading each window side by side (time slices of one snapshot): the server side
# was the bottleneck with one backend (~0.7 s CPU per million readings, the Python side ~0.3 s).
FETCH_CONNECTIONS = 2
_ARROW = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}
_SUBTREE = "(equipment = %(path)s OR equipment LIKE %(prefix)s)"


@dataclass(frozen=True, slots=True)
class LotInfo:
    id: int
    lot: str
    kind: str
    spec_id: str | None
    material_grade: str | None


@dataclass
class Table:
    """One wide table of a pull: the tags of one line, with that line's lots in the ``lot`` column.

    ``name`` is '' when the pull has one table (files ``data/split=<s>/``), else the line's
    equipment path with '.' for '/' (files ``data/line=<name>/split=<s>/``), or ``unscoped`` for
    tags on no lot's equipment (their ``lot`` is null). ``lots`` None: no process segments are
    recorded for the plant, the lot comes from the readings' lot stamp (the pre-0010 rule)."""

    name: str
    line: str | None
    tags: list[SourceTag]
    lots: LineLots | None
    allowed: set[int] | None = None  # rows of other lots (and rows without a lot) are left out
    split_of: dict[int, str] | None = None


@dataclass
class Plan:
    tags: list[SourceTag]
    withheld: list[tuple[str, int]]  # (grade, how many tags): never names (migration 0008)
    lots: dict[int, LotInfo] = field(default_factory=dict)
    lot_rows: dict[int, int] = field(default_factory=dict)  # lot id -> readings in range (no-segment rule)
    allowed: set[int] | None = None  # union over the tables
    split_of: dict[int, str] | None = None  # union over the tables
    properties: list[tuple[str, str]] = field(default_factory=list)  # (property, unit)
    results: dict[int, dict[str, float]] = field(default_factory=dict)
    limits: dict[str, dict[str, Limit]] = field(default_factory=dict)  # spec id -> property -> limit
    tables: list[Table] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # selected tags on none of the selected lots' lines
    parents: dict[int, list[str]] = field(default_factory=dict)  # lot id -> parent lots (genealogy)
    segments_digest: bytes = b""
    process_limits: dict[str, dict[str, tuple[float | None, float | None]]] = field(default_factory=dict)
    # kind -> tag id -> [(start us, end us)] of deviations on the selected tags (labels only)
    events: dict[str, dict[int, list[tuple[int, int]]]] = field(default_factory=dict)


# --- resolve: everything that can be wrong is found here, before any file exists -------------------


def resolve(conn: psycopg.Connection[Any], req: PullRequest) -> Plan:
    """Check the request against the database (as the tier role) and plan the pull."""
    # The catalog lists only what this tier may read: a withheld tag is, here too, indistinguishable
    # from an absent one (migration 0008), so naming one gives the unknown-tag answer.
    catalog = conn.execute(
        "SELECT id, tag, equipment, grade FROM ds_tag_catalog WHERE plant = %s ORDER BY tag", (req.plant,)
    ).fetchall()
    if not catalog:
        raise RequestError("plant", f"no tags are registered for plant {req.plant!r}")
    if req.equipment:
        path = req.equipment
        catalog = [r for r in catalog if r[2] == path or str(r[2]).startswith(path + "/")]
        if not catalog:
            raise RequestError("equipment", f"no tags under equipment {path!r} of plant {req.plant!r}")
    by_name = {str(r[1]): r for r in catalog}
    if req.tags:
        unknown = [t for t in req.tags if t not in by_name]
        if unknown:
            raise RequestError("tags", f"unknown tag(s) {unknown} in plant {req.plant!r}" + _scope(req))
        selected = [by_name[t] for t in req.tags]
        withheld: list[tuple[str, int]] = []  # a named selection withholds nothing it could name
    else:
        selected = list(catalog)
        withheld = [
            (str(g), int(n))
            for g, n in conn.execute(
                "SELECT grade, tags FROM ds_withheld_counts(%s, %s, ps_readable_grades())",
                (req.plant, req.equipment or None),
            ).fetchall()
        ]
    names = {str(r[1]) for r in selected}
    bad_gaps = sorted(set(req.tag_gaps) - names)
    if bad_gaps:
        raise RequestError("tag_gaps", f"gap rules for tag(s) not in the selection: {bad_gaps}")
    readable = conn.execute(
        SOURCE_TAGS_SQL + " WHERE id = ANY(%s) ORDER BY tag",
        ([int(r[0]) for r in selected],),
    ).fetchall()
    tags = [SourceTag(*r) for r in readable]
    if not tags:
        raise RequestError("tags", f"none of the {len(selected)} selected tag(s) may be read at this tier")
    for t in tags:
        g = req.gap_for(t.tag)
        if g.rule == "linear" and t.datatype != "float":
            raise RequestError("tag_gaps", f"tag {t.tag!r} is {t.datatype}: linear interpolation needs a float tag")
    ids = [t.id for t in tags]
    span = {"lo": req.start, "hi": req.end}
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM ds_readings WHERE tag_id = ANY(%(ids)s) AND time >= %(lo)s AND time < %(hi)s)",
        {"ids": ids, **span},
    ).fetchone()
    if not row or not row[0]:
        raise RequestError(
            "start", f"no readings of the selected tags in [{_iso(req.start)}, {_iso(req.end)}): the range is empty"
        )
    # Lot names for the lot column (lots are few next to readings: heats, batches, doffs).
    lots = {
        int(r[0]): LotInfo(int(r[0]), str(r[1]), str(r[2]), r[3], r[4])
        for r in conn.execute(
            "SELECT id, lot, kind, spec_id, material_grade FROM ds_lots WHERE plant = %s", (req.plant,)
        ).fetchall()
    }
    plan = Plan(tags, withheld, lots=lots)
    _plan_tables(conn, req, plan)
    if req.needs_lots:
        _plan_lots(conn, req, plan, ids)
    _name_tables(plan)
    specs = sorted({s for li in lots.values() if (s := li.spec_id)})
    props = sorted({t.spec_property for t in plan.tags if t.spec_property})
    if specs and props:
        for spec_id, prop, lo, hi in conn.execute(
            "SELECT DISTINCT ON (spec_id, property) spec_id, property, min, max FROM ds_spec_limits "
            "WHERE basis = 'process' AND spec_id = ANY(%s) AND property = ANY(%s) AND condition = '' "
            "ORDER BY spec_id, property, effective_from DESC",
            (specs, props),
        ).fetchall():
            plan.process_limits.setdefault(str(spec_id), {})[str(prop)] = (lo, hi)
    if req.labels:
        plan.events = {k: {} for k in EVENT_KINDS}
        for kind, tag_id, start, end in conn.execute(
            "SELECT kind, tag_id, start_time, end_time FROM ds_deviations WHERE plant = %(plant)s "
            "AND kind = ANY(%(kinds)s) AND tag_id = ANY(%(ids)s) AND start_time < %(hi)s "
            "AND (end_time IS NULL OR end_time > %(lo)s) ORDER BY kind, tag_id, start_time, id",
            {"plant": req.plant, "kinds": list(EVENT_KINDS), "ids": ids, "lo": req.start, "hi": req.end},
        ).fetchall():
            # An open deviation lasts to the end of the range (it had not ended when the pull read it).
            when = (_us(start), req.end_us if end is None else _us(end))
            plan.events[str(kind)].setdefault(int(tag_id), []).append(when)
    return plan


# Deviation kinds that are per-row events (a lab deviation belongs to a lot: the in_spec labels).
EVENT_KINDS = ("process", "late_data")


_SEGMENTS_SQL = """SELECT lot_id, equipment, start_time, least(end_time, next_start) FROM (
        SELECT lot_id, equipment, start_time, end_time,
               lead(start_time) OVER (PARTITION BY equipment ORDER BY start_time, lot_id) AS next_start
        FROM ds_process_segments WHERE plant = %(plant)s) s
    WHERE start_time < %(hi)s AND coalesce(least(end_time, next_start), 'infinity') > %(lo)s
    ORDER BY equipment, start_time, lot_id"""


def _plan_tables(conn: psycopg.Connection[Any], req: PullRequest, plan: Plan) -> None:
    """One table per line (see ``Table``): a wide table's ``lot`` column never mixes lines."""
    per_line: dict[str, list[tuple[int, int, int | None]]] = {}
    for lot_id, eq, start, end in conn.execute(
        _SEGMENTS_SQL, {"plant": req.plant, "lo": req.start, "hi": req.end}
    ).fetchall():
        if int(lot_id) in plan.lots:
            per_line.setdefault(str(eq), []).append((int(lot_id), _us(start), None if end is None else _us(end)))
    if not per_line:
        plan.tables = [Table("", None, list(plan.tags), None)]
        return
    lines = {line: LineLots.build(line, segs) for line, segs in per_line.items()}
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(lines[line].digest())
    plan.segments_digest = digest.digest()
    groups: dict[str | None, list[SourceTag]] = {}
    for t in plan.tags:
        groups.setdefault(line_of(t.equipment, lines), []).append(t)
    empty = LineLots.build("", [])
    plan.tables = [
        Table(line or "", line, tags, lines[line] if line is not None else empty)
        for line, tags in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
    ]


def _name_tables(plan: Plan) -> None:
    if len(plan.tables) == 1:
        plan.tables[0].name = ""
        return
    for t in plan.tables:
        t.name = t.line.replace("/", ".") if t.line is not None else "unscoped"


def _plan_lots(conn: psycopg.Connection[Any], req: PullRequest, plan: Plan, ids: list[int]) -> None:
    lots = plan.lots
    by_name = {li.lot: li for li in lots.values()}
    unknown = [lot for lot in req.lots if lot not in by_name]
    if unknown:
        raise RequestError("lots", f"unknown lot(s) {unknown} in plant {req.plant!r}")
    if req.spec and not any(li.spec_id == req.spec for li in lots.values()):
        raise RequestError("spec", f"no lot of plant {req.plant!r} has material spec {req.spec!r}")
    if req.material_grade and not any(li.material_grade == req.material_grade for li in lots.values()):
        raise RequestError("material_grade", f"no lot of plant {req.plant!r} has material grade {req.material_grade!r}")

    def select(candidates: set[int]) -> set[int]:
        if req.lots:
            candidates &= {by_name[lot].id for lot in req.lots}
        if req.spec:
            candidates = {i for i in candidates if lots[i].spec_id == req.spec}
        if req.material_grade:
            candidates = {i for i in candidates if lots[i].material_grade == req.material_grade}
        return candidates

    filtered = bool(req.lots or req.spec or req.material_grade or req.split)
    segmented = plan.tables[0].lots is not None
    if segmented:
        # A lot's rows are the grid rows of its line while it runs there (its process segments);
        # which lot the readings were stamped with does not decide it.
        in_range = {t.name: t.lots.overlapping(req.start_us, req.end_us) if t.lots else set() for t in plan.tables}
    else:
        counts = conn.execute(
            "SELECT lot_id, count(*) FROM ds_readings WHERE tag_id = ANY(%(ids)s) AND time >= %(lo)s "
            "AND time < %(hi)s AND lot_id IS NOT NULL GROUP BY lot_id ORDER BY lot_id",
            {"ids": ids, "lo": req.start, "hi": req.end},
        ).fetchall()
        plan.lot_rows = {int(r[0]): int(r[1]) for r in counts if int(r[0]) in lots}
        in_range = {plan.tables[0].name: set(plan.lot_rows)}
    every = set().union(*in_range.values())
    if filtered:
        kept: list[Table] = []
        for t in plan.tables:
            cand = select(set(in_range[t.name]))
            if cand:
                t.allowed = cand
                kept.append(t)
            else:
                plan.left_out += [x.tag for x in t.tags]
        if not kept:
            what = "lots" if req.lots else "spec" if req.spec else "material_grade" if req.material_grade else "split"
            raise RequestError(what, "no readings of the selected lots in the time range")
        plan.tables = kept
        plan.allowed = set().union(*(t.allowed or set() for t in kept))
        plan.tags = [x for t in kept for x in t.tags]
    if req.split is not None:
        plan.split_of = {}
        for t in plan.tables:
            assert t.allowed is not None
            try:
                names = assign_splits([lots[i].lot for i in t.allowed], req.split.proportions, req.split.seed)
            except SplitError as exc:
                where = f" (line {t.line})" if len(plan.tables) > 1 and t.line else ""
                raise RequestError(exc.field, str(exc) + where) from None
            t.split_of = {by_name[name].id: s for name, s in names.items()}
            plan.split_of.update(t.split_of)
    wanted = sorted(plan.allowed if plan.allowed is not None else every)
    for parent, child in conn.execute(
        "SELECT p.lot, g.child_id FROM ds_lot_genealogy g JOIN ds_lots p ON p.id = g.parent_id "
        "WHERE g.child_id = ANY(%s) ORDER BY g.child_id, p.lot",
        (wanted,),
    ).fetchall():
        plan.parents.setdefault(int(child), []).append(str(parent))
    if req.labels:
        for lot_id, prop, value, _unit in conn.execute(
            "SELECT lot_id, property, value, unit FROM ds_lot_test_results WHERE lot_id = ANY(%s) "
            "ORDER BY lot_id, property, time",
            (wanted,),
        ).fetchall():
            plan.results.setdefault(int(lot_id), {})[str(prop)] = float(value)  # the latest result wins
        specs = sorted({s for i in wanted if (s := lots[i].spec_id)})
        rows = conn.execute(
            "SELECT DISTINCT ON (spec_id, property, condition) spec_id, property, condition, min, max, unit "
            "FROM ds_spec_limits WHERE basis = 'lab' AND spec_id = ANY(%s) "
            "ORDER BY spec_id, property, condition, effective_from DESC",
            (specs,),
        ).fetchall()
        per_spec: dict[str, list[Limit]] = {}
        for spec_id, prop, cond, lo, hi, unit in rows:
            per_spec.setdefault(str(spec_id), []).append(Limit(str(prop), str(unit), lo, hi, str(cond)))
        plan.limits = {s: governing_limits(lims) for s, lims in per_spec.items()}
        units: dict[str, str] = {}
        for lims in plan.limits.values():
            for p, lim in lims.items():
                units.setdefault(p, lim.unit)
        plan.properties = sorted(units.items())


# --- columns ---------------------------------------------------------------------------------------


def columns_of(req: PullRequest, plan: Plan, table: Table | None = None) -> list[output.Column]:
    table = table or plan.tables[0]
    if table.lots is None:
        lot_desc = "lot on the equipment at this time (from the readings' lot stamp)"
    elif table.line is None:
        lot_desc = "always null: these tags are on no lot's equipment"
    else:
        lot_desc = f"lot running on {table.line} at the row time (its process segments)"
    cols = [
        output.Column(
            "time", pa.timestamp("us", tz="UTC"), description="grid time (UTC), start of the bucket", nullable=False
        ),
        output.Column("lot", pa.string(), description=lot_desc),
    ]
    for t in table.tags:
        g = req.gap_for(t.tag)
        desc = (t.description or t.tag) + f"; equipment {t.equipment}; gap rule {g.rule}"
        if g.rule != "none":
            desc += f" within {format_duration_us(req.max_gap_us(g))}"
        cols.append(
            output.Column(
                t.tag, _ARROW[t.datatype], unit=t.unit, description=desc, grade=t.grade, std_property=t.std_property
            )
        )
    if req.labels:
        for kind in EVENT_KINDS:
            cols.append(
                output.Column(
                    f"event.{kind}",
                    pa.bool_(),
                    nullable=False,
                    description=f"event label: a {kind.replace('_', ' ')} deviation on one of this table's tags "
                    "was open at the row time (recorded by the stream processor)",
                )
            )
        cols.append(output.Column("spec_id", pa.string(), description="material spec of the lot"))
        cols.append(output.Column("material_grade", pa.string(), description="material grade of the lot's spec"))
        for prop, unit in plan.properties:
            cols.append(
                output.Column(
                    f"lab.{prop}",
                    pa.float64(),
                    unit=unit,
                    description=f"lot label: test result {prop} (latest; recorded after the lot's rows)",
                )
            )
            cols.append(
                output.Column(f"lab.{prop}.min", pa.float64(), unit=unit, description=f"spec minimum of {prop}")
            )
            cols.append(
                output.Column(f"lab.{prop}.max", pa.float64(), unit=unit, description=f"spec maximum of {prop}")
            )
            cols.append(
                output.Column(
                    f"in_spec.{prop}",
                    pa.bool_(),
                    description=f"lot label: {prop} within spec (null: not measured or no limit; known after the lot's rows)",
                )
            )
        cols.append(
            output.Column(
                "in_spec",
                pa.bool_(),
                description="lot label: every measured property within spec (known after the lot's rows)",
            )
        )
    if plan.parents:
        cols.append(
            output.Column(
                "lot_parents", pa.string(), description="the lot's parent lots (genealogy), ';'-separated, sorted"
            )
        )
    return cols


@dataclass
class _LotTable:
    """Per-lot constant columns, looked up by lot id through a dense index."""

    ids: npt.NDArray[np.int64]
    index: dict[int, int]
    names: pa.Array
    columns: list[tuple[npt.NDArray[Any], npt.NDArray[np.bool_], pa.DataType]]

    def take(self, lot: npt.NDArray[np.int32]) -> tuple[pa.Array, list[pa.Array]]:
        pos = np.searchsorted(self.ids, lot)
        pos = np.minimum(pos, max(self.ids.size - 1, 0))
        found = (self.ids.size > 0) & (self.ids[pos] == lot) if self.ids.size else np.zeros(lot.size, np.bool_)
        idx = pa.array(pos.astype(np.int32), mask=~found)
        names = pa.DictionaryArray.from_arrays(idx, self.names).cast(pa.string())
        cols = []
        for vals, valid, typ in self.columns:
            v = vals[pos] if vals.size else np.zeros(lot.size, vals.dtype)
            ok = (valid[pos] if valid.size else np.zeros(lot.size, np.bool_)) & found
            cols.append(
                pa.array(v, type=typ, mask=~ok) if typ != pa.string() else pa.array(list(v), type=typ, mask=~ok)
            )
        return names, cols


def _lot_table(req: PullRequest, plan: Plan) -> _LotTable:
    ids = np.array(sorted(plan.lots), dtype=np.int64)
    names = pa.array([plan.lots[int(i)].lot for i in ids], type=pa.string())
    cols: list[tuple[npt.NDArray[Any], npt.NDArray[np.bool_], pa.DataType]] = []
    if req.labels:
        infos = [plan.lots[int(i)] for i in ids]
        spec = np.array([li.spec_id or "" for li in infos], dtype=object)
        grade = np.array([li.material_grade or "" for li in infos], dtype=object)
        cols.append((spec, np.array([li.spec_id is not None for li in infos], np.bool_), pa.string()))
        cols.append((grade, np.array([li.material_grade is not None for li in infos], np.bool_), pa.string()))
        overall: list[bool | None] = [None] * len(infos)
        for prop, _unit in plan.properties:
            val = np.full(len(infos), np.nan)
            lo = np.full(len(infos), np.nan)
            hi = np.full(len(infos), np.nan)
            lab = np.zeros(len(infos), np.bool_)
            lab_ok = np.zeros(len(infos), np.bool_)
            for j, li in enumerate(infos):
                measured = plan.results.get(li.id, {}).get(prop)
                lim = plan.limits.get(li.spec_id or "", {}).get(prop)
                if measured is not None:
                    val[j] = measured
                if lim is not None:
                    lo[j] = np.nan if lim.min is None else lim.min
                    hi[j] = np.nan if lim.max is None else lim.max
                verdict = in_spec(measured, lim)
                if verdict is not None:
                    lab[j], lab_ok[j] = verdict, True
                    overall[j] = verdict if overall[j] is None else (overall[j] and verdict)
            for arr in (val, lo, hi):
                cols.append((arr, ~np.isnan(arr), pa.float64()))
            cols.append((lab, lab_ok, pa.bool_()))
        cols.append(
            (
                np.array([bool(o) for o in overall], np.bool_),
                np.array([o is not None for o in overall], np.bool_),
                pa.bool_(),
            )
        )
    if plan.parents:
        par = np.array([";".join(plan.parents.get(int(i), [])) for i in ids], dtype=object)
        cols.append((par, np.array([int(i) in plan.parents for i in ids], np.bool_), pa.string()))
    return _LotTable(ids, {int(i): j for j, i in enumerate(ids)}, names, cols)


# --- the pull --------------------------------------------------------------------------------------


@dataclass
class _Result:
    snapshot: str
    watermark: str
    location: Path
    files: list[FileEntry]
    rows: int
    cells: int


def pull(
    dsn: str,
    req: PullRequest,
    requester: Requester,
    out: Path | None = None,
    progress: ProgressFn | None = None,
    application_name: str = "plantstream-dataset",
    *,
    out_root: Path | None = None,
    on_begin: Callable[[int], None] | None = None,
    on_resolved: Callable[[Plan], None] | None = None,
    cancel: threading.Event | None = None,
) -> PullRecord:
    """Run a pull as ``requester``; return its record. RequestError for bad input (recorded as
    'rejected', nothing written); other errors are recorded as 'failed' and re-raised.

    Output: ``out`` (must not exist), else ``out_root/<pull id>``, else ``./dataset-<snapshot>``.
    ``on_begin(pull_id)`` is called once the record exists, ``on_resolved(plan)`` once the
    request has passed every check against the database (callers serving HTTP use the two to
    answer early). Setting ``cancel`` stops the pull between windows (PullCancelled, 'failed')."""
    if out is not None and out.exists():
        raise RequestError("out", f"{out} already exists; choose a new directory")
    with psycopg.connect(dsn, autocommit=True, application_name=application_name) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(DB_ROLE[requester.tier])))
        row = conn.execute(
            "SELECT ps_pull_begin(%s, %s, %s, current_user)",
            (requester.name, requester.tier.value, Jsonb(req.canonical())),
        ).fetchone()
        assert row is not None
        pull_id = int(row[0])
        if on_begin is not None:
            on_begin(pull_id)
        log.info(
            "dataset pull started",
            extra={"kv": {"pull": pull_id, "requester": requester.name, "tier": requester.tier.value}},
        )
        status, error, res, withheld = "failed", None, None, []
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                tune_for_windows(conn)  # resolve's lot counts scan the range too
                plan = resolve(conn, req)
                withheld = [{"grade": g, "count": n} for g, n in plan.withheld]
                if on_resolved is not None:
                    on_resolved(plan)
                if out is None and out_root is not None:
                    out = out_root / str(pull_id)
                    if out.exists():
                        raise RequestError("out", f"{out} already exists; choose a new directory")
                with snapshot_helpers(
                    conn, dsn, DB_ROLE[requester.tier], FETCH_CONNECTIONS - 1, application_name, {"pull": pull_id}
                ) as helpers:
                    res = _produce(conn, req, requester, plan, out, progress, cancel, helpers)
            status = "complete"
        except RequestError as exc:
            status, error = "rejected", str(exc)
            raise
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            raise
        finally:
            with contextlib.suppress(psycopg.Error):
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                conn.execute(
                    "SELECT ps_pull_finish(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        pull_id,
                        status,
                        res.snapshot if res else None,
                        res.watermark if res else None,
                        str(res.location) if res else None,
                        Jsonb([f.model_dump() for f in res.files]) if res else None,
                        res.rows if res else None,
                        res.cells if res else None,
                        Jsonb(withheld),
                        error,
                    ),
                )
            log.info("dataset pull finished", extra={"kv": {"pull": pull_id, "status": status}})
        conn.execute("RESET ROLE")
    rec = get_pull(dsn, pull_id)
    assert rec is not None
    return rec


def _produce(
    conn: psycopg.Connection[Any],
    req: PullRequest,
    requester: Requester,
    plan: Plan,
    out: Path | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None = None,
    helpers: Sequence[psycopg.Connection[Any]] = (),
) -> _Result:
    base = out.parent if out is not None else Path.cwd()
    tmp = base / f".dataset-partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True)
    try:
        stats = Progress()
        t0 = time.perf_counter()
        outs = [_stream(conn, req, plan, t, tmp, stats, t0, progress, cancel, helpers) for t in plan.tables]
        stats.seconds = time.perf_counter() - t0
        if progress is not None:
            progress(stats)
        rows = sum(o.rows for o in outs)
        if rows == 0:
            raise RequestError("start", "the selection leaves no rows (no readings of the selected lots on the grid)")
        # Minimums need the data: checked before any metadata is written; nothing is kept when refused.
        check_minimums(req, outs)
        watermark = _watermark(plan, outs)
        log.info(
            "dataset streamed",
            extra={
                "kv": {
                    "rows": stats.rows,
                    "cells": stats.cells,
                    "readings": stats.readings,
                    "seconds": round(stats.seconds, 3),
                    "cells_per_s": round(stats.cells_per_s),
                }
            },
        )
        snapshot = hashlib.sha256(
            "\n".join([output.FORMAT_VERSION, req.canonical_json(), json.dumps(plan.withheld), watermark]).encode()
        ).hexdigest()[:24]
        files = [f for o in outs for f in o.files] + [f for o in outs for f in o.lot_files]
        name = req.name or f"{req.plant}-{snapshot[:12]}"
        (tmp / "quality.json").write_text(report.dumps(report.build(req, plan, outs, snapshot)), encoding="utf-8")
        quality_sha = output.sha256_file(tmp / "quality.json")
        doc = output.croissant(
            name=name,
            description=f"plantstream dataset {snapshot}: plant {req.plant}, {len(plan.tags)} tags on a "
            f"{req.interval} grid, {_iso(req.start)} to {_iso(req.end)}"
            + (f", one table per line ({len(outs)})" if len(outs) > 1 else "")
            + ". See README.md (dataset card).",
            license=req.license,
            version=f"{output.FORMAT_SEMVER}+{snapshot}",
            tables=[
                ("rows", o.table.name, o.cols, [(o.split_of_file[f.path], f.path, f.sha256) for f in o.files])
                for o in outs
            ]
            + [
                ("lots", o.table.name, o.lot_cols, [(o.split_of_file[f.path], f.path, f.sha256) for f in o.lot_files])
                for o in outs
                if o.lot_files
            ],
            url=f"urn:plantstream:dataset:{snapshot}",
            cite_as=f"plantstream dataset {name}, snapshot {snapshot}, plant {req.plant}",
            extra=croissant_extra(req, plan, outs, snapshot),
            reports=[("quality.json", quality_sha, "data-quality report (GB/T 36344 dimensions), see README.md")],
        )
        (tmp / "croissant.json").write_text(output.dumps_json(doc), encoding="utf-8")
        card = render_card(req, plan, outs, snapshot, watermark, rows)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for extra in ("quality.json", "croissant.json", "README.md"):
            p = tmp / extra
            files.append(FileEntry(path=extra, sha256=output.sha256_file(p), bytes=p.stat().st_size))
        target = out if out is not None else base / f"dataset-{snapshot}"
        if target.exists():
            raise RequestError("out", f"{target} already exists; choose a new directory")
        os.replace(tmp, target)
        return _Result(snapshot, watermark, target.resolve(), files, rows, stats.cells)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _watermark(plan: Plan, outs: Sequence[TableOut]) -> str:
    """The readings' watermark of the only table as before; with segments or several tables, a
    SHA-256 over each table's readings watermark and the segments the row lots come from."""
    if len(outs) == 1 and not plan.segments_digest:
        return outs[0].watermark
    h = hashlib.sha256(plan.segments_digest)
    for o in outs:
        h.update(f"{o.table.name}\t{o.watermark}\n".encode())
    return h.hexdigest()


@dataclass
class TableOut:
    """What one table of a pull produced (for the Croissant document and the card)."""

    table: Table
    cols: list[output.Column]
    watermark: str
    files: list[FileEntry]
    split_of_file: dict[str, str]  # file path -> split name
    rows: int
    dropped_no_lot: int
    split_rows: dict[str, int]
    quality: list[TagQuality]  # per tag of the table, over the rows written
    readings: npt.NDArray[np.int64]  # per tag: readings of quality good, uncertain, bad in the range
    newest_us: int  # the newest usable reading in the range
    moments: dict[str, list[Moments]]  # split -> per tag distribution of the values written
    lot_rows: dict[str, dict[int, int]]  # split -> lot id -> rows
    lot_cols: list[output.Column]  # the lot-level table (with labels), if any
    lot_files: list[FileEntry]


def _stream(
    conn: psycopg.Connection[Any],
    req: PullRequest,
    plan: Plan,
    table: Table,
    tmp: Path,
    stats: Progress,
    t0: float,
    progress: ProgressFn | None,
    cancel: threading.Event | None = None,
    helpers: Sequence[psycopg.Connection[Any]] = (),
) -> TableOut:
    cols = columns_of(req, plan, table)
    schema = output.schema_of(cols)
    plans = []
    for t in table.tags:
        g = req.gap_for(t.tag)
        plans.append(TagPlan(t.tag, t.datatype, g.rule, req.max_gap_us(g) if g.rule != "none" else 0))  # type: ignore[arg-type]
    lot_gap = max([req.max_gap_us(req.gap)] + [p.max_gap_us for p in plans])
    rs = Resampler(req.start_us, req.interval_us, req.n_rows, plans, lot_max_gap_us=lot_gap)
    reader = WindowReader(conn, table.tags, helpers=helpers, count_range=(req.start_us, req.end_us))
    stuck_min = stuck_rows(req.interval_us) - 1  # "same as the row before" rows of a stuck interval
    quality = [TagQuality(stuck=Runs(min_len=stuck_min)) for _ in table.tags]
    bounds = [_spec_bounds(plan, t.spec_property) if t.spec_property else None for t in table.tags]
    numeric = [t.datatype in ("float", "int") for t in table.tags]
    moments: dict[str, list[Moments]] = {}
    lot_rows: dict[str, dict[int, int]] = {}
    num_idx = [i for i, t in enumerate(table.tags) if numeric[i]]
    # The lot-level table, with labels, for tables whose rows have lots.
    agg = (
        LotAggregator([table.tags[i].tag for i in num_idx], [bounds[i] is not None for i in num_idx])
        if req.labels and (table.lots is None or table.line is not None)  # not the unscoped table
        else None
    )
    lots = _lot_table(req, plan)
    events = _table_events(plan, table)
    writers: dict[str, output.SplitWriter] = {}
    allowed = np.array(sorted(table.allowed), np.int64) if table.allowed is not None else None
    split_names = ("train", "validation", "test")
    split_ids = np.array(sorted(table.split_of), np.int64) if table.split_of else np.empty(0, np.int64)
    split_idx = (
        np.array([split_names.index(table.split_of[int(i)]) for i in split_ids], np.int8) if table.split_of else None
    )
    folder = tmp / "data" / (f"line={table.name}" if table.name else "")
    dropped = 0
    read_before = stats.readings
    last_report = time.perf_counter()

    def emit(rows: Rows) -> None:
        nonlocal dropped
        if not len(rows):
            return
        if table.lots is not None:
            # The row's lot is the lot running on this table's line at the row time.
            rows.lot = table.lots.lot_at(req.start_us + rows.k * req.interval_us)
        if allowed is not None:
            keep = np.isin(rows.lot, allowed)
            dropped += int((~keep).sum())
            rows = rows.take(np.flatnonzero(keep))
            if not len(rows):
                return
        fvals: list[npt.NDArray[np.float64] | None] = []
        flims: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None] = []
        for i, q in enumerate(quality):
            vals = rows.values[i].astype(np.float64) if numeric[i] else None
            lo_hi = _bounds_of(bounds[i], rows.lot) if bounds[i] is not None and vals is not None else (None, None)
            t = table.tags[i]
            q.update(rows.k, rows.valid[i], rows.observed[i], vals, t.lo, t.hi, lo_hi[0], lo_hi[1])
            fvals.append(vals)
            flims.append((lo_hi[0], lo_hi[1]) if lo_hi[0] is not None and lo_hi[1] is not None else None)
        if agg is not None:
            has_lot = np.flatnonzero(rows.lot != NO_LOT)
            if has_lot.size:
                agg.update(
                    rows.k[has_lot],
                    rows.lot[has_lot],
                    [v[has_lot] for i in num_idx if (v := fvals[i]) is not None],
                    [rows.valid[i][has_lot] for i in num_idx],
                    [(b[0][has_lot], b[1][has_lot]) if (b := flims[i]) is not None else None for i in num_idx],
                )
        if split_idx is not None:
            pos = np.searchsorted(split_ids, rows.lot)
            which = split_idx[np.minimum(pos, split_ids.size - 1)]
            groups = [(split_names[s], rows.take(np.flatnonzero(which == s))) for s in range(3)]
        else:
            groups = [("all", rows)]
        for name, part in groups:
            if not len(part):
                continue
            mom = moments.setdefault(name, [Moments() for _ in table.tags])
            for i, m in enumerate(mom):
                if numeric[i]:
                    m.update(part.values[i][part.valid[i]].astype(np.float64))
            ids, counts = np.unique(part.lot, return_counts=True)
            per_lot = lot_rows.setdefault(name, {})
            for lot_id, c in zip(ids.tolist(), counts.tolist(), strict=True):
                per_lot[int(lot_id)] = per_lot.get(int(lot_id), 0) + int(c)
            batch = _batch(req, part, lots, schema, events)
            w = writers.get(name)
            if w is None:
                w = writers[name] = output.SplitWriter(folder / f"split={name}" / "part-00000.parquet", schema)
            w.write(batch)
            stats.rows += batch.num_rows
            stats.cells += batch.num_rows * len(table.tags)

    # The database builds the next window while this thread decodes, resamples and writes the
    # current one (the reader thread only waits on the socket, GIL released), so the server
    # never idles on Python work; the queue bounds memory to ~3 windows.
    try:
        for k, hi, raw in _prefetch(reader, rs, len(table.tags)):
            if cancel is not None and cancel.is_set():
                raise PullCancelled("the pull was cancelled")
            emit(rs.feed(k, hi, reader.decode(raw)))
            now = time.perf_counter()
            stats.readings, stats.seconds = read_before + reader.rows_read, now - t0
            if progress is not None and now - last_report >= 1.0:
                last_report = now
                progress(stats)
        emit(rs.finish())
    finally:
        reader.close()
    for w in writers.values():
        w.close()
    for q in quality:
        q.finish()
    lot_cols: list[output.Column] = []
    lot_files: list[FileEntry] = []
    split_of_file: dict[str, str] = {}  # file path -> split, for every file of this table
    if agg is not None and agg.accs:
        lot_cols, lot_files = _write_lot_tables(req, plan, table, cols, agg, lots, tmp, split_of_file)
    stats.readings = read_before + reader.rows_read
    files = []
    order = {"train": 0, "validation": 1, "test": 2, "all": 3}
    split_rows = {}
    for name in sorted(writers, key=lambda s: order[s]):
        w = writers[name]
        rel = w.path.relative_to(tmp).as_posix()
        files.append(FileEntry(path=rel, sha256=output.sha256_file(w.path), bytes=w.path.stat().st_size, rows=w.rows))
        split_rows[name] = w.rows
        split_of_file[rel] = name
    return TableOut(
        table,
        cols,
        reader.watermark,
        files,
        split_of_file,
        sum(split_rows.values()),
        dropped,
        split_rows,
        quality,
        reader.quality_counts,
        reader.newest_us,
        moments,
        lot_rows,
        lot_cols,
        lot_files,
    )


def _windows(reader: WindowReader, rs: Resampler, n_tags: int) -> Iterator[tuple[int, int, RawWindow]]:
    """Windows [k, hi) over the resampler's range: about TARGET readings and at most MAX cells
    each, growing at most 8x at a time (the first is small: the density is not known yet)."""
    k = rs.first_k
    window = 256
    while k < rs.last_k:
        hi = min(rs.last_k, k + window)
        raw = reader.fetch(rs.t_of(k), rs.t_of(hi))
        yield k, hi, raw
        density = max(raw.readings, 1) / (hi - k)
        window = int(min(window * 8, TARGET_READINGS_PER_WINDOW / density, MAX_CELLS_PER_WINDOW / max(1, n_tags)))
        window = max(window, 1)
        k = hi


def _prefetch(reader: WindowReader, rs: Resampler, n_tags: int) -> Iterator[tuple[int, int, RawWindow]]:
    """``_windows`` fetched on a background thread, one window ahead (decode on the caller's)."""
    q: queue.Queue[tuple[int, int, RawWindow] | BaseException | None] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in _windows(reader, rs, n_tags):
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    th = threading.Thread(target=run, name="dataset-reader", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join(timeout=60)


def _write_lot_tables(
    req: PullRequest,
    plan: Plan,
    table: Table,
    row_cols: list[output.Column],
    agg: LotAggregator,
    lots: _LotTable,
    tmp: Path,
    split_of_file: dict[str, str],
) -> tuple[list[output.Column], list[FileEntry]]:
    """``lots[/line=<table>]/split=<s>/part-00000.parquet``: one row per lot, in time order."""
    # spec_id, material_grade, lab.*, in_spec*, lot_parents (after the tags and the event labels)
    label_cols = row_cols[2 + len(table.tags) + len(EVENT_KINDS) :]
    cols = agg.columns() + label_cols
    schema = output.schema_of(cols)
    by_split: dict[str, list[int]] = {}
    for lot_id, _acc in sorted(agg.accs.items(), key=lambda kv: (kv[1].first_k, kv[0])):
        s = table.split_of.get(lot_id, "all") if table.split_of else "all"
        by_split.setdefault(s, []).append(lot_id)
    files = []
    folder = tmp / "lots" / (f"line={table.name}" if table.name else "")
    for s in sorted(by_split, key=("train", "validation", "test", "all").index):
        ids = by_split[s]
        _names, labels = lots.take(np.array(ids, np.int32))
        tab = table_of(
            agg,
            ids,
            [plan.lots[i].lot if i in plan.lots else "" for i in ids],
            list(zip(label_cols, labels, strict=True)),
            req.start_us,
            req.interval_us,
            schema,
        )
        w = output.SplitWriter(folder / f"split={s}" / "part-00000.parquet", schema)
        for batch in tab.to_batches():
            w.write(batch)
        w.close()
        rel = w.path.relative_to(tmp).as_posix()
        files.append(FileEntry(path=rel, sha256=output.sha256_file(w.path), bytes=w.path.stat().st_size, rows=w.rows))
        split_of_file[rel] = s
    return cols, files


def _spec_bounds(
    plan: Plan, prop: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """Per lot (sorted ids): the process limit of ``prop`` in the lot's spec (NaN: none)."""
    ids = np.array(sorted(plan.lots), np.int64)
    lo = np.full(ids.size, np.nan)
    hi = np.full(ids.size, np.nan)
    for j, i in enumerate(ids.tolist()):
        lim = plan.process_limits.get(plan.lots[i].spec_id or "", {}).get(prop)
        if lim is not None:
            lo[j] = np.nan if lim[0] is None else lim[0]
            hi[j] = np.nan if lim[1] is None else lim[1]
    return (ids, lo, hi) if bool(np.isfinite(lo).any() or np.isfinite(hi).any()) else None


def _bounds_of(
    b: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]] | None,
    lot: npt.NDArray[np.int32],
) -> tuple[npt.NDArray[np.float64] | None, npt.NDArray[np.float64] | None]:
    if b is None:
        return None, None
    ids, lo, hi = b
    pos = np.minimum(np.searchsorted(ids, lot), ids.size - 1)
    found = ids[pos] == lot
    return np.where(found, lo[pos], np.nan), np.where(found, hi[pos], np.nan)


def _merged(spans: list[tuple[int, int]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Intervals as disjoint sorted (starts, ends)."""
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return np.array([x[0] for x in out], np.int64), np.array([x[1] for x in out], np.int64)


def _table_events(plan: Plan, table: Table) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    if not plan.events:
        return []
    ids = {t.id for t in table.tags}
    return [
        _merged([sp for tag_id, spans in plan.events[k].items() if tag_id in ids for sp in spans]) for k in EVENT_KINDS
    ]


def _batch(
    req: PullRequest,
    rows: Rows,
    lots: _LotTable,
    schema: pa.Schema,
    events: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = (),
) -> pa.RecordBatch:
    t = req.start_us + rows.k * req.interval_us
    arrays: list[pa.Array] = [pa.array(t, type=pa.timestamp("us", tz="UTC"))]
    names, lot_cols = lots.take(rows.lot)
    arrays.append(names)
    for i, (vals, valid) in enumerate(zip(rows.values, rows.valid, strict=True)):
        typ = schema.field(2 + i).type
        if typ == pa.string():
            arrays.append(pa.array(list(vals), type=typ, mask=~valid))
        else:
            arrays.append(pa.array(vals, type=typ, mask=~valid))
    for starts, ends in events:
        j = np.searchsorted(starts, t, side="right") - 1
        arrays.append(pa.array((j >= 0) & (t < ends[np.maximum(j, 0)]) if starts.size else np.zeros(t.size, np.bool_)))
    arrays.extend(lot_cols)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --- the record ----------------------------------------------------------------------------------

_RECORD_COLS = (
    "id, requester, tier, db_user, db_role, started_at, finished_at, status, request, snapshot, watermark, "
    "location, files, rows, cells, withheld, error"
)


def _record(row: Sequence[Any]) -> PullRecord:
    keys = [c.strip() for c in _RECORD_COLS.split(",")]
    return PullRecord.model_validate(dict(zip(keys, row, strict=True)))


def get_pull(dsn: str, ident: int | str) -> PullRecord | None:
    """A pull by id or by snapshot id (the latest complete one with that snapshot)."""
    with psycopg.connect(dsn) as conn:
        if isinstance(ident, int) or (str(ident).isascii() and str(ident).isdigit()):
            row = conn.execute(f"SELECT {_RECORD_COLS} FROM dataset_pulls WHERE id = %s", (int(ident),)).fetchone()
        else:
            row = conn.execute(
                f"SELECT {_RECORD_COLS} FROM dataset_pulls WHERE snapshot LIKE %s ORDER BY id DESC LIMIT 1",
                (str(ident) + "%",),
            ).fetchone()
    return _record(row) if row else None


def list_pulls(dsn: str, limit: int = 50, requester: str | None = None) -> list[PullRecord]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT {_RECORD_COLS} FROM dataset_pulls WHERE (%(r)s::text IS NULL OR requester = %(r)s) "
            "ORDER BY id DESC LIMIT %(n)s",
            {"r": requester, "n": limit},
        ).fetchall()
    return [_record(r) for r in rows]


def _scope(req: PullRequest) -> str:
    return f" under equipment {req.equipment!r}" if req.equipment else ""


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def readable_grades(requester: Requester) -> list[str]:
    return sorted(g.value for g in READABLE[requester.tier])


__all__ = ["Plan", "Progress", "PullCancelled", "get_pull", "list_pulls", "pull", "resolve", "timedelta"]
