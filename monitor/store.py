"""Read-only database access for the monitor (sync psycopg; the web layer runs it in threads).

Every function takes the caller's readable ``grades`` and filters in SQL, so a withheld tag's
rows never leave the database. Sessions are opened read-only (``default_transaction_read_only``):
the monitor cannot write, whatever a bug in this module might try.

Failure behaviour: psycopg errors propagate (the web layer answers 503 for connection problems);
``UnknownTag`` is raised for a tag that does not exist *or* is not readable by the caller, so a
lower tier cannot probe which core-grade tags exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from plantstream.domain.pullrequest import PullRecord
from plantstream.monitor import models as M
from plantstream.monitor import queries as Q

log = logging.getLogger(__name__)

QUALITY: dict[int, Literal["good", "uncertain", "bad"]] = {0: "good", 1: "uncertain", 2: "bad"}


class UnknownTag(LookupError):
    """No such tag for this caller (absent or withheld: deliberately indistinguishable)."""


def make_pool(
    dsn: str, max_size: int = 4, statement_timeout_s: float = 15.0
) -> ConnectionPool[psycopg.Connection[Any]]:
    """A pool that opens lazily: the monitor starts (and serves live data) with the database away."""
    return ConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=5.0,
        kwargs={
            "autocommit": True,
            "options": f"-c default_transaction_read_only=on -c statement_timeout={int(statement_timeout_s * 1000)}",
            "application_name": "plantstream-monitor",
            "connect_timeout": 5,
        },
        name="monitor",
    )


def _subtree(plant: str, path: str) -> tuple[str, dict[str, Any]]:
    args = Q._subtree_args(plant, path)
    return Q._SUBTREE, args


# --- equipment and tags ------------------------------------------------------------------------


def equipment_tree(conn: psycopg.Connection[Any], grades: list[str], plant: str | None = None) -> M.EquipmentTree:
    rows = conn.execute(
        """SELECT e.id, e.plant, e.path, e.name, e.level, e.parent_id,
                  count(t.id) FILTER (WHERE t.grade = ANY(%(grades)s)) AS tags
           FROM equipment e LEFT JOIN tags t ON t.equipment_id = e.id
           WHERE %(plant)s::text IS NULL OR e.plant = %(plant)s
           GROUP BY e.id ORDER BY e.plant, e.path""",
        {"grades": grades, "plant": plant},
    ).fetchall()
    nodes: dict[int, M.EquipmentNode] = {}
    roots: dict[str, list[M.EquipmentNode]] = {}
    for ident, pl, path, name, level, parent, tags in rows:
        node = M.EquipmentNode(path=path, name=name, level=level, tags=tags)
        nodes[ident] = node
        if parent is not None and parent in nodes:
            nodes[parent].children.append(node)
        else:
            roots.setdefault(pl, []).append(node)
    return M.EquipmentTree(plants=[M.PlantTree(plant=p, roots=r) for p, r in sorted(roots.items())])


_TAG_COLS = (
    "t.plant, t.tag, e.path, t.unit, t.datatype, t.grade, t.lo, t.hi, t.spec_property, t.description, t.std_property"
)


def tags(
    conn: psycopg.Connection[Any], grades: list[str], plant: str | None = None, equipment: str | None = None
) -> list[M.Tag]:
    where = "t.grade = ANY(%(grades)s) AND (%(plant)s::text IS NULL OR t.plant = %(plant)s)"
    args: dict[str, Any] = {"grades": grades, "plant": plant}
    if plant and equipment:
        sub, sargs = _subtree(plant, equipment)
        where += f" AND {sub}"
        args |= sargs
    rows = conn.execute(
        f"SELECT {_TAG_COLS} FROM tags t JOIN equipment e ON e.id = t.equipment_id WHERE {where} "
        "ORDER BY t.plant, e.path, t.tag",
        args,
    ).fetchall()
    return [_tag(r) for r in rows]


def _tag(r: tuple[Any, ...]) -> M.Tag:
    plant, tag, path, unit, datatype, grade, lo, hi, prop, desc, std = r
    return M.Tag(
        plant=plant,
        tag=tag,
        equipment=path,
        unit=unit,
        datatype=datatype,
        grade=grade,
        lo=lo,
        hi=hi,
        spec_property=prop,
        description=desc,
        std_property=std,
    )


def tag(conn: psycopg.Connection[Any], grades: list[str], plant: str, name: str) -> M.Tag:
    row = conn.execute(
        f"SELECT {_TAG_COLS} FROM tags t JOIN equipment e ON e.id = t.equipment_id "
        "WHERE t.plant = %s AND t.tag = %s AND t.grade = ANY(%s)",
        (plant, name, grades),
    ).fetchone()
    if row is None:
        raise UnknownTag(f"no tag {name!r} in plant {plant!r}")
    return _tag(row)


def grade_map(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], str]:
    return {(p, t): g for p, t, g in conn.execute("SELECT plant, tag, grade FROM tags").fetchall()}


# --- values ------------------------------------------------------------------------------------


def latest(conn: psycopg.Connection[Any], grades: list[str], plant: str, equipment: str) -> M.LatestList:
    visible = {t.tag for t in tags(conn, grades, plant, equipment)}
    # The shared query probes each tag's newest row through the primary key; withheld tags are
    # dropped before anything leaves this function.
    values = [v for v in Q.latest_values(conn, plant, equipment) if v.tag in visible]
    return M.LatestList(
        plant=plant,
        values=[
            M.Latest(
                tag=v.tag,
                equipment=v.equipment,
                unit=v.unit,
                time=v.time,
                value=v.value,
                quality=QUALITY.get(v.quality, "bad"),
                lot=v.lot,
            )
            for v in values
        ],
    )


# Bucket widths the server rounds to, so successive requests share bucket edges (stable charts).
_NICE_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def bucket_for(span: timedelta, points: int) -> timedelta:
    """The smallest "nice" width giving at most ``points`` buckets over ``span`` (>= 1 s)."""
    want = span.total_seconds() / max(points, 1)
    for s in _NICE_S:
        if s >= want:
            return timedelta(seconds=s)
    return timedelta(seconds=max(86400.0, want))


def history(
    conn: psycopg.Connection[Any],
    grades: list[str],
    plant: str,
    name: str,
    start: datetime,
    end: datetime,
    points: int,
    good_only: bool = False,
) -> M.History:
    t = tag(conn, grades, plant, name)  # UnknownTag when withheld: checked before any reading is read
    width = bucket_for(end - start, points)
    rows = Q.history(conn, plant, name, start, end, width, good_only=good_only)
    return M.History(
        plant=plant,
        tag=name,
        unit=t.unit,
        start=start,
        end=end,
        bucket_s=width.total_seconds(),
        buckets=[
            M.HistoryBucket(
                start=b.start, count=b.count, bad_count=b.bad_count, min=b.min, max=b.max, mean=b.mean, last=b.last
            )
            for b in rows
        ],
    )


# --- lots and specs ----------------------------------------------------------------------------


def timeline(
    conn: psycopg.Connection[Any], plant: str, equipment: str, start: datetime, end: datetime
) -> M.LotTimeline:
    segs = Q.lot_timeline(conn, plant, equipment, start, end)
    return M.LotTimeline(
        plant=plant,
        equipment=equipment,
        segments=[
            M.LotSegment(
                lot=s.lot, lot_kind=s.lot_kind, spec_id=s.spec_id, equipment=s.equipment, start=s.start, end=s.end
            )
            for s in segs
        ],
    )


def current_lots(conn: psycopg.Connection[Any], plant: str | None = None) -> M.CurrentLots:
    """The newest open process segment per equipment path (a lot still on that equipment)."""
    rows = conn.execute(
        """SELECT DISTINCT ON (e.plant, e.path) e.plant, e.path, l.lot, l.kind, l.spec_id, s.start_time
           FROM process_segments s JOIN equipment e ON e.id = s.equipment_id JOIN lots l ON l.id = s.lot_id
           WHERE s.end_time IS NULL AND (%(plant)s::text IS NULL OR e.plant = %(plant)s)
           ORDER BY e.plant, e.path, s.start_time DESC""",
        {"plant": plant},
    ).fetchall()
    return M.CurrentLots(
        lots=[
            M.CurrentLot(plant=p, equipment=path, lot=lot, lot_kind=kind, spec_id=spec, start=start)
            for p, path, lot, kind, spec, start in rows
        ]
    )


def specs(conn: psycopg.Connection[Any], spec_id: str | None = None) -> M.SpecList:
    cur = conn.cursor(row_factory=dict_row)
    heads = cur.execute(
        """SELECT s.id, s.spec_id, s.revision, s.standard, s.grade, s.description, s.effective_from::text AS eff,
                  c.name AS material_class
           FROM current_material_specs s JOIN material_definitions d ON d.id = s.definition_id
           JOIN material_classes c ON c.id = d.class_id
           WHERE %(spec)s::text IS NULL OR s.spec_id = %(spec)s ORDER BY s.spec_id""",
        {"spec": spec_id},
    ).fetchall()
    limits = cur.execute(
        "SELECT spec_pk, property, basis, condition, min, max, target, unit, test_method FROM spec_property_limits "
        "WHERE spec_pk = ANY(%s) ORDER BY basis DESC, property, condition",
        ([h["id"] for h in heads],),
    ).fetchall()
    by_spec: dict[int, list[M.SpecLimit]] = {}
    for lim in limits:
        pk = lim.pop("spec_pk")
        by_spec.setdefault(pk, []).append(M.SpecLimit(**lim))
    return M.SpecList(
        specs=[
            M.MaterialSpec(
                spec_id=h["spec_id"],
                revision=h["revision"],
                standard=h["standard"],
                grade=h["grade"],
                description=h["description"],
                material_class=h["material_class"],
                effective_from=h["eff"],
                limits=by_spec.get(h["id"], []),
            )
            for h in heads
        ]
    )


@dataclass(frozen=True, slots=True)
class _ActiveLot:
    lot: str
    spec_id: str | None


def active_lot(conn: psycopg.Connection[Any], plant: str, equipment: str) -> _ActiveLot | None:
    """The lot on ``equipment`` or its nearest ancestor (lots run on lines; tags sit on units)."""
    parts = equipment.strip("/").split("/")
    ancestors = ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    row = conn.execute(
        """SELECT l.lot, l.spec_id FROM process_segments s JOIN equipment e ON e.id = s.equipment_id
           JOIN lots l ON l.id = s.lot_id
           WHERE e.plant = %s AND e.path = ANY(%s) AND s.end_time IS NULL
           ORDER BY length(e.path) DESC, s.start_time DESC LIMIT 1""",
        (plant, ancestors),
    ).fetchone()
    return _ActiveLot(row[0], row[1]) if row else None


def tag_limits(
    conn: psycopg.Connection[Any], grades: list[str], plant: str, name: str, lot: str | None = None
) -> M.TagLimits:
    """Process limits of the (given or currently active) lot's material for a spec-tied tag, in the
    tag's unit. Limits are None when the tag has no spec property, no lot is active, the lot has
    no known spec, or the spec's unit cannot be converted (logged)."""
    t = tag(conn, grades, plant, name)
    if lot is None:
        act = active_lot(conn, plant, t.equipment)
    else:
        row = conn.execute("SELECT lot, spec_id FROM lots WHERE plant = %s AND lot = %s", (plant, lot)).fetchone()
        act = _ActiveLot(row[0], row[1]) if row else None
    out = M.TagLimits(
        plant=plant,
        tag=name,
        lot=act.lot if act else lot,
        spec_id=act.spec_id if act else None,
        property=t.spec_property,
        unit=t.unit,
        min=None,
        max=None,
        target=None,
    )
    if not t.spec_property or act is None or not act.spec_id:
        return out
    row = conn.execute(
        """SELECT p.min, p.max, p.target, p.unit FROM current_material_specs s
           JOIN spec_property_limits p ON p.spec_pk = s.id
           WHERE s.spec_id = %s AND p.property = %s AND p.basis = 'process'
           ORDER BY p.condition LIMIT 1""",
        (act.spec_id, t.spec_property),
    ).fetchone()
    if row is None:
        return out
    lo, hi, target, unit = row
    try:
        conv = _converter(unit, t.unit)
    except ValueError as exc:
        log.warning("spec limit unit not convertible", extra={"kv": {"tag": name, "error": str(exc)}})
        return out
    return out.model_copy(update={"min": conv(lo), "max": conv(hi), "target": conv(target)})


def _converter(src: str, dst: str) -> Any:
    if not dst or src == dst:
        return lambda v: v
    from plantstream.domain.units import convert_to

    convert_to(0.0, src, dst)  # raises UnitError (a ValueError) now rather than per value
    return lambda v: None if v is None else convert_to(v, src, dst)


# --- deviations and dataset pulls --------------------------------------------------------------


def deviations(
    conn: psycopg.Connection[Any],
    grades: list[str],
    plant: str | None = None,
    since: datetime | None = None,
    limit: int = 200,
) -> M.DeviationList:
    """Newest first. A deviation on a tag the caller may not read is left out; lot-level (lab)
    deviations carry no tag and are shown to every tier."""
    rows = conn.execute(
        """SELECT d.id, d.kind, d.status, d.plant, t.tag, l.lot, d.spec_id, d.property, d.start_time, d.end_time,
                  d.peak, d.attrs
           FROM deviations d LEFT JOIN tags t ON t.id = d.tag_id LEFT JOIN lots l ON l.id = d.lot_id
           WHERE (d.tag_id IS NULL OR t.grade = ANY(%(grades)s))
             AND (%(plant)s::text IS NULL OR d.plant = %(plant)s)
             AND (%(since)s::timestamptz IS NULL OR d.start_time >= %(since)s)
           ORDER BY d.start_time DESC LIMIT %(limit)s""",
        {"grades": grades, "plant": plant, "since": since, "limit": limit},
    ).fetchall()
    out = []
    for ident, kind, status, pl, tg, lot, spec, prop, start, end, peak, attrs in rows:
        attrs = attrs or {}
        out.append(
            M.Deviation(
                id=ident,
                kind=kind,
                status=str(status),
                plant=pl,
                tag=tg,
                lot=lot,
                spec_id=spec,
                property=prop,
                start=start,
                end=end,
                peak=peak,
                limit_min=_num(attrs.get("limit_min")),
                limit_max=_num(attrs.get("limit_max")),
                unit=str(attrs.get("unit") or ""),
            )
        )
    return M.DeviationList(deviations=out)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def dataset_pulls(conn: psycopg.Connection[Any], limit: int = 100) -> M.DatasetPullList:
    row = conn.execute("SELECT to_regclass('dataset_pulls') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return M.DatasetPullList(available=False, pulls=[])
    rows = conn.execute(
        "SELECT row_to_json(p) FROM dataset_pulls p ORDER BY p.started_at DESC, p.id DESC LIMIT %s", (limit,)
    ).fetchall()
    return M.DatasetPullList(available=True, pulls=[M.DatasetPull(fields=r[0]) for r in rows])


def dataset_pull(conn: psycopg.Connection[Any], pull_id: int) -> PullRecord | None:
    """One recorded pull by id; None when absent (or without a dataset_pulls table)."""
    row = conn.execute("SELECT to_regclass('dataset_pulls') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute("SELECT row_to_json(p) FROM dataset_pulls p WHERE p.id = %s", (pull_id,)).fetchone()
    return PullRecord.model_validate(found[0]) if found else None
