"""``quality.json``: the data-quality report of a pull, and the minimums a pull may demand.

Dimensions are named as in GB/T 36344-2018 (Information technology - Evaluation indicators for
data quality): completeness (完整性), accuracy (准确性), consistency (一致性), timeliness (时效性),
normativity (规范性). Deterministic like the other files (no times of the pull, fixed key order,
floats rounded to 6 significant digits), so re-pulls stay byte-identical.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from plantstream.datasets.logic.labels import in_spec
from plantstream.datasets.logic.quality import STUCK_MIN_US, stuck_rows
from plantstream.datasets.logic.units import ucum
from plantstream.datasets.provenance import iso_us
from plantstream.domain.durations import format_duration_us
from plantstream.domain.pullrequest import PullRequest, RequestError

if TYPE_CHECKING:
    from plantstream.datasets.pull import Plan, TableOut

REPORT_FORMAT = "plantstream-quality/1"
_SPLITS = ("train", "validation", "test", "all")


def _r(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


def _share(a: int, b: int) -> float | None:
    return _r(a / b) if b else None


def labelled_lots(plan: Plan) -> set[int]:
    """Lots with an in-spec verdict (a measured property with a governing limit)."""
    out = set()
    for lot_id, res in plan.results.items():
        li = plan.lots.get(lot_id)
        lims = plan.limits.get(li.spec_id or "", {}) if li else {}
        if any(in_spec(v, lims.get(p)) is not None for p, v in res.items()):
            out.add(lot_id)
    return out


def build(req: PullRequest, plan: Plan, outs: Sequence[TableOut], snapshot: str) -> dict[str, Any]:
    interval = req.interval_us
    tags: list[dict[str, Any]] = []
    for o in outs:
        for t, q, c in zip(o.table.tags, o.quality, o.readings, strict=True):
            n = int(c.sum())
            numeric = t.datatype in ("float", "int")
            tags.append(
                {
                    "tag": t.tag,
                    "table": o.table.name,
                    "equipment": t.equipment,
                    "unit": t.unit,
                    "unit_ucum": ucum(t.unit) if t.unit else None,
                    "datatype": t.datatype,
                    "rows": q.rows,
                    "completeness": {
                        "before_gap_filling": _share(q.observed, q.rows),
                        "after_gap_filling": _share(q.valid, q.rows),
                        "gaps": q.gaps,
                        "longest_gap": format_duration_us(q.longest_gap_rows * interval)
                        if q.longest_gap_rows
                        else None,
                        "null_rows": q.rows - q.valid,
                        "filled_rows": q.valid - q.observed,
                    },
                    "accuracy": {
                        "readings": n,
                        "good": int(c[0]),
                        "uncertain": int(c[1]),
                        "bad": int(c[2]),
                        "uncertain_share": _share(int(c[1]), n),
                        "bad_share": _share(int(c[2]), n),
                        "range": [t.lo, t.hi] if numeric else None,
                        "out_of_range": {"intervals": q.out_of_range.count, "rows": q.out_of_range.rows}
                        if numeric
                        else None,
                        "stuck": {
                            "intervals": q.stuck.count,
                            "rows": q.stuck.rows + q.stuck.count,  # each interval's first row too
                            "longest": format_duration_us((q.stuck.longest + 1) * interval) if q.stuck.count else None,
                        }
                        if t.datatype == "float"
                        else None,
                        "outside_spec": {
                            "property": t.spec_property,
                            "intervals": q.outside_spec.count,
                            "rows": q.outside_spec.rows,
                        }
                        if t.spec_property and numeric
                        else None,
                    },
                }
            )
    labelled = labelled_lots(plan) if req.labels else set()
    splits: list[dict[str, Any]] = []
    for o in outs:
        for s in _SPLITS:
            per_lot = o.lot_rows.get(s)
            if per_lot is None:
                continue
            rows = sum(per_lot.values())
            dist = {
                t.tag: {k: (_r(v) if isinstance(v, float) else v) for k, v in m.summary().items()}
                for t, m in zip(o.table.tags, o.moments[s], strict=True)
                if t.datatype in ("float", "int")
            }
            splits.append(
                {
                    "table": o.table.name,
                    "split": s,
                    "rows": rows,
                    "lots": [
                        {
                            "lot": plan.lots[i].lot if i in plan.lots else None,
                            "rows": n,
                            "labelled": (i in labelled) if req.labels else None,
                        }
                        for i, n in sorted(per_lot.items(), key=lambda kv: (kv[0] not in plan.lots, _lot(plan, kv[0])))
                    ],
                    "label_coverage": _share(sum(n for i, n in per_lot.items() if i in labelled), rows)
                    if req.labels
                    else None,
                    "distribution": dist,
                }
            )
    all_rows = sum(t["rows"] for t in tags)
    valid = sum(t["rows"] - t["completeness"]["null_rows"] for t in tags)
    readings = sum(t["accuracy"]["readings"] for t in tags)
    newest = max(o.newest_us for o in outs)
    coded = [t for t in tags if t["unit"]]
    return {
        "format": REPORT_FORMAT,
        "snapshot": snapshot,
        "standard": "GB/T 36344-2018 dimensions: completeness, accuracy, consistency, timeliness, normativity",
        "grid": req.interval,
        "range": [iso_us(req.start_us), iso_us(req.end_us)],
        "minimums": {"completeness": req.min_completeness},
        "dimensions": {
            "completeness": {
                "cells": all_rows,
                "after_gap_filling": _share(valid, all_rows),
                "before_gap_filling": _share(sum(q.observed for o in outs for q in o.quality), all_rows),
                "gaps": sum(t["completeness"]["gaps"] for t in tags),
                "lowest": min(
                    ((t["completeness"]["after_gap_filling"] or 0.0, t["tag"]) for t in tags), default=(None, None)
                )[1],
            },
            "accuracy": {
                "readings": readings,
                "bad_share": _share(sum(t["accuracy"]["bad"] for t in tags), readings),
                "uncertain_share": _share(sum(t["accuracy"]["uncertain"] for t in tags), readings),
                "out_of_range_intervals": sum((t["accuracy"]["out_of_range"] or {}).get("intervals", 0) for t in tags),
                "stuck_intervals": sum((t["accuracy"]["stuck"] or {}).get("intervals", 0) for t in tags),
                "stuck_rule": f"one value for at least {format_duration_us(max(STUCK_MIN_US, stuck_rows(interval) * interval))}",
                "outside_spec_intervals": sum((t["accuracy"]["outside_spec"] or {}).get("intervals", 0) for t in tags),
            },
            "consistency": {
                "tables": [o.table.name or "(one table)" for o in outs],
                "row_lot": "the lot running on the table's line at the row time (process segments)"
                if outs and outs[0].table.lots is not None
                else "the lot stamped on the latest reading in the bucket",
                "lots_in_two_splits": sum(_lots_in_two_splits(o) for o in outs),
            },
            "timeliness": {
                "newest_reading": iso_us(newest) if newest > -(2**62) else None,
                "lag_to_range_end": format_duration_us(max(0, req.end_us - 1 - newest)) if newest > -(2**62) else None,
            },
            "normativity": {
                "tags_with_unit": len(coded),
                "units_with_ucum_code": sum(1 for t in coded if t["unit_ucum"]),
                "units_without_code": sorted({t["unit"] for t in coded if not t["unit_ucum"]}),
            },
        },
        "tags": tags,
        "splits": splits,
    }


def _lots_in_two_splits(o: TableOut) -> int:
    seen: dict[int, int] = {}
    for s, per_lot in o.lot_rows.items():
        if s != "all":
            for i in per_lot:
                seen[i] = seen.get(i, 0) + 1
    return sum(1 for n in seen.values() if n > 1)


def _lot(plan: Plan, lot_id: int) -> str:
    li = plan.lots.get(lot_id)
    return li.lot if li else ""


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def check_minimums(req: PullRequest, outs: Sequence[TableOut]) -> None:
    """RequestError naming the tags below ``min_completeness`` (after gap filling)."""
    if req.min_completeness is None:
        return
    failing = [
        (t.tag, q.completeness)
        for o in outs
        for t, q in zip(o.table.tags, o.quality, strict=True)
        if q.completeness < req.min_completeness
    ]
    if failing:
        shown = ", ".join(f"{tag} ({c:.4f})" for tag, c in failing[:50]) + (" ..." if len(failing) > 50 else "")
        raise RequestError(
            "min_completeness",
            f"{len(failing)} tag(s) below the minimum completeness {req.min_completeness:g} "
            f"(share of rows with a value after gap filling): {shown}",
        )
