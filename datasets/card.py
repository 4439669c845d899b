"""The dataset card (README.md of a pull): what, where, how sampled, gaps, lots, withheld, licence.

Deterministic: no times of the pull, no requester; only facts of the request and the data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from plantstream.access import Tier
from plantstream.contract import Grade
from plantstream.datasets.logic.units import ucum
from plantstream.datasets.output import FORMAT_SEMVER, PROPERTY_KEY, vocabulary_ref
from plantstream.datasets.provenance import missing_summary
from plantstream.domain.durations import format_duration_us
from plantstream.domain.pullrequest import PullRequest

if TYPE_CHECKING:
    from plantstream.datasets.pull import Plan, TableOut

_GRADE_ORDER = [Grade.GENERAL.value, Grade.IMPORTANT.value, Grade.CORE.value]


def _iso(req_dt: object) -> str:
    return str(req_dt).replace("+00:00", "Z")


def _lowest_tier(grade: str) -> str:
    from plantstream.access import READABLE

    for tier in (Tier.PUBLIC, Tier.MEMBER, Tier.OWNER):
        if Grade(grade) in READABLE[tier]:
            return tier.value
    return Tier.OWNER.value


# SPDX ids the Hugging Face Hub spells differently (it takes most in lower case).
_HF_LICENSE = {"CC0-1.0": "cc0-1.0", "CC-BY-4.0": "cc-by-4.0", "CC-BY-SA-4.0": "cc-by-sa-4.0", "MIT": "mit"}
_HF_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
_HF_SIZES_BIG = ((10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"))


def size_category(rows: int) -> str:
    for bound, name in _HF_SIZES + _HF_SIZES_BIG:
        if rows < bound:
            return name
    return "1B<n<10B"


def hf_split(split: str) -> str:
    """A pull without a split has one file set, 'all'; the Hub calls a dataset's only split 'train'
    ('all' is reserved by the ``datasets`` package for the union of splits)."""
    return "train" if split == "all" else split


def front_matter(req: PullRequest, plan: Plan, outs: Sequence[TableOut], rows: int) -> list[str]:
    """The card's YAML header: Hugging Face dataset metadata, so ``datasets.load_dataset(<folder>)``
    reads the splits (one config per table; the first is the default). Values are JSON strings,
    which YAML reads as the same strings; nothing depends on the time of the pull."""
    q = json.dumps
    lic = _HF_LICENSE.get(req.license, req.license.lower())
    kinds = sorted({plan.lots[i].kind for i in (plan.allowed or set()) if plan.lots[i].kind})
    tags = ["plantstream", "industrial", "manufacturing", "sensor-data", "time-series", req.plant, *kinds]
    tasks = ["time-series-forecasting"] + (["tabular-classification", "tabular-regression"] if req.labels else [])
    y = ["---", f"license: {q(lic)}"]
    if lic not in _HF_LICENSE.values():
        y.append(f"license_name: {q(req.license)}")
    y.append(f"pretty_name: {q(req.name or f'plantstream {req.plant} sensor data')}")
    y.append("language:\n- en")
    y.append("tags:\n" + "\n".join(f"- {q(t)}" for t in dict.fromkeys(tags)))
    y.append("task_categories:\n" + "\n".join(f"- {t}" for t in tasks))
    y.append(f"size_categories:\n- {size_category(rows)}")
    y.append("configs:")
    for i, o in enumerate(outs):
        y.append(f"- config_name: {q(o.table.name or 'default')}")
        if i == 0:
            y.append("  default: true")
        y.append("  data_files:")
        for f in o.files:
            folder = f.path.rsplit("/", 1)[0]
            y.append(f"  - split: {hf_split(o.split_of_file[f.path])}")
            y.append(f"    path: {q(folder + '/*.parquet')}")
    for o in outs:
        if not o.lot_files:
            continue
        y.append(f"- config_name: {q(f'{o.table.name}.lots' if o.table.name else 'lots')}")
        y.append("  data_files:")
        for f in o.lot_files:
            folder = f.path.rsplit("/", 1)[0]
            y.append(f"  - split: {hf_split(o.split_of_file[f.path])}")
            y.append(f"    path: {q(folder + '/*.parquet')}")
    y.append("---\n")
    return y


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.2f} %" if b else "-"


def render_card(
    req: PullRequest,
    plan: Plan,
    outs: Sequence[TableOut],
    snapshot: str,
    watermark: str,
    rows: int,
) -> str:
    grades = {t.grade for t in plan.tags}
    data_grade = max(grades, key=_GRADE_ORDER.index) if grades else "general"
    out: list[str] = front_matter(req, plan, outs, rows)
    w = out.append
    w(f"# {req.name or f'{req.plant} dataset'} ({snapshot})\n")
    w("## What\n")
    w(
        f"Sensor readings of plant **{req.plant}**"
        + (f", equipment subtree `{req.equipment}`" if req.equipment else "")
        + f", {len(plan.tags)} tag(s) aligned into "
        + ("one wide table per line" if len(outs) > 1 else "one wide table")
        + ": one row per grid time, one column per tag"
        + (", with lot id, spec limits, lot test results and in-spec labels" if req.labels else ", with the lot id")
        + f". {rows} rows"
        + (f" in {len(outs)} tables, one per line (see Tables)" if len(outs) > 1 else "")
        + ".\n"
    )
    w(f"- Time range: `{_iso(req.start.isoformat())}` (inclusive) to `{_iso(req.end.isoformat())}` (exclusive), UTC")
    w(f"- Snapshot: `{snapshot}`; data watermark (SHA-256 of the source readings): `{watermark}`")
    w(f"- Data grade of the contents (GB/T 43697-2024): **{data_grade}**; licence: **{req.license}**")
    w(
        "- Source: the plantstream database (views `ds_readings`, `ds_tags`, `ds_lots`, read under the requester's tier role)\n"
    )
    w("## How it was sampled\n")
    w(
        f"Grid interval **{req.interval}**. Row time `t` stands for the bucket `[t, t + {req.interval})`; a tag's "
        "value is its LAST reading in the bucket (readings of bad quality are left out; good and uncertain "
        "are used). Empty buckets follow the tag's gap rule: `none` (null), `locf` (last value carried "
        "forward while the reading is at most `max_gap` old), `linear` (interpolated in time between the "
        "readings around the gap when they are at most `max_gap` apart). "
        + (
            "A row's lot is the lot stamped on the latest reading in the bucket, carried over empty buckets "
            "within the largest max gap (no process segments are recorded for this plant).\n"
            if plan.tables[0].lots is None
            else "A row's lot is the lot running at the row time on the table's line (the equipment its "
            "process segments ran on; a lot ends at its end or when the next lot starts there). A tag "
            "belongs to its equipment's nearest line.\n"
        )
    )
    w("| tag | equipment | unit | type | grade | standard property | gap rule | max gap |")
    w("|---|---|---|---|---|---|---|---|")
    for t in plan.tags:
        g = req.gap_for(t.tag)
        gap = format_duration_us(req.max_gap_us(g)) if g.rule != "none" else "-"
        prop = f"`{t.std_property}`" if t.std_property else "-"
        w(f"| `{t.tag}` | `{t.equipment}` | {t.unit or '-'} | {t.datatype} | {t.grade} | {prop} | {g.rule} | {gap} |")
    w("")
    if any(t.std_property for t in plan.tags):
        ref = vocabulary_ref()
        w(
            f"Standard properties are ids of the shared vocabulary {ref['name']} {ref['version']} (`{ref['iri']}`): "
            "columns of one property line up across plants, in the property's canonical unit "
            f"(Parquet field metadata `{PROPERTY_KEY}`).\n"
        )
    if len(outs) > 1:
        w("## Tables\n")
        w(
            "Lines run different lots at the same time, so one `lot` column cannot hold them: each line "
            "is its own table (`data/line=<table>/split=<split>/`), with the tags on that line.\n"
        )
        w("| table | line | tags | rows |")
        w("|---|---|---|---|")
        for o in outs:
            w(f"| `{o.table.name}` | {f'`{o.table.line}`' if o.table.line else '-'} | {len(o.table.tags)} | {o.rows} |")
        w("")
    if plan.left_out:
        shown = ", ".join(f"`{t}`" for t in plan.left_out[:30]) + (" ..." if len(plan.left_out) > 30 else "")
        w(f"{len(plan.left_out)} selected tag(s) are on none of the selected lots' lines and are left out: {shown}.\n")
    w("## Lots and splits\n")
    if plan.split_of:
        assert req.split is not None
        w(
            f"Split **by lot** (no lot is in two splits), seed {req.split.seed}, proportions of lots "
            f"train {req.split.train:g} / validation {req.split.validation:g} / test {req.split.test:g}"
            + (", made per table" if len(outs) > 1 else "")
            + ".\n"
        )
        w(("| table " if len(outs) > 1 else "") + "| split | lots | rows |")
        w(("|---" if len(outs) > 1 else "") + "|---|---|---|")
        for o in outs:
            for s in ("train", "validation", "test"):
                lots = sorted(plan.lots[i].lot for i, sp in (o.table.split_of or {}).items() if sp == s)
                head = f"| `{o.table.name}` " if len(outs) > 1 else ""
                w(
                    f"{head}| {s} | {len(lots)}: {', '.join(lots[:20])}{' ...' if len(lots) > 20 else ''} "
                    f"| {o.split_rows.get(s, 0)} |"
                )
        w("")
    elif plan.allowed is not None:
        lots = sorted(plan.lots[i].lot for i in plan.allowed)
        w(f"Rows of {len(lots)} selected lot(s): {', '.join(lots[:50])}{' ...' if len(lots) > 50 else ''}.\n")
    else:
        w("No lot selection: every grid row of the range is included (the `lot` column may be null).\n")
    dropped_no_lot = sum(o.dropped_no_lot for o in outs)
    if dropped_no_lot:
        w(
            f"{dropped_no_lot} grid row(s) were left out because their lot is not among the selected lots (or unknown).\n"
        )
    if plan.parents:
        w(
            "`lot_parents` names each lot's parent lots from the genealogy (a slab's heat, a spool's "
            "precursor): join it to the parent line's table to get the parent's process rows.\n"
        )
    if req.labels:
        w("## Labels\n")
        w(
            "Per lab property `P`: `lab.P` (the lot's latest test result), `lab.P.min` / `lab.P.max` (the governing "
            "spec limit; where limits step with thickness, the strictest step, because lot attributes are not "
            "recorded), `in_spec.P` (null when not measured or no limit) and `in_spec` (all measured properties "
            "within spec). Labels are per lot: the same for every row of a lot.\n"
        )
    w("## Data quality\n")
    m = missing_summary(req, outs)
    w(
        f"Over the rows written: {m['observed']} of {m['cells']} tag cells had a reading in their bucket, "
        f"{m['filled']} were filled by the gap rules, {m['null']} are null in {m['gaps']} gap(s) (longest "
        f"{m['longest_gap']}). Readings in the range: {m['readings']}: {m['bad']} bad (left out), "
        f"{m['uncertain']} uncertain (used). Completeness = share of rows with a value. The full report, "
        "with out-of-range, stuck-sensor and outside-spec intervals and per split and lot rows, label coverage "
        "and value distributions, named by the GB/T 36344 dimensions (completeness, accuracy, consistency, "
        "timeliness, normativity), is `quality.json`.\n"
    )
    w("| tag | unit (UCUM) | completeness before gap filling | after | gaps | longest gap | bad | uncertain |")
    w("|---|---|---|---|---|---|---|---|")
    for o in outs:
        for t, q, c in zip(o.table.tags, o.quality, o.readings, strict=True):
            code = ucum(t.unit) if t.unit else None
            unit = f"{t.unit} ({code})" if code else (t.unit or "-")
            longest = format_duration_us(q.longest_gap_rows * req.interval_us) if q.longest_gap_rows else "-"
            n = int(c.sum())
            w(
                f"| `{t.tag}` | {unit} | {q.completeness_raw:.4f} | {q.completeness:.4f} | {q.gaps} | {longest} "
                f"| {_pct(int(c[2]), n)} | {_pct(int(c[1]), n)} |"
            )
    w("")
    w("## Version\n")
    w(
        f"`{FORMAT_SEMVER}+{snapshot}`: MAJOR.MINOR.PATCH is the file format (MAJOR: a reader of the previous "
        "format could misread these files; MINOR: columns or metadata added; PATCH: corrections that leave the "
        "data as it was); the build metadata is the snapshot (which data). `croissant.json` carries it with the "
        "Croissant RAI properties (collection, missing data, preprocessing, imputation, uses, limitations).\n"
    )
    if any(o.lot_files for o in outs):
        w("## Lot table\n")
        w(
            "With labels, `lots/" + ("line=<table>/" if len(outs) > 1 else "") + "split=<split>/` holds one row "
            "per lot (Hugging Face config `" + ("<table>.lots" if len(outs) > 1 else "lots") + "`): `start`, `end`, "
            "`duration_s`, `rows`, per numeric tag `<tag>.mean`, `.min`, `.max` over the lot's rows and, where the "
            "lot's spec has a process limit for the tag, `<tag>.in_limits` (share of the lot's rows inside it), "
            "then the lot labels as in the row table. The table batch-quality models train on.\n"
        )
        w("| table | split | lots |")
        w("|---|---|---|")
        for o in outs:
            for f in o.lot_files:
                w(f"| `{o.table.name or '-'}` | {o.split_of_file[f.path]} | {f.rows} |")
        w("")
    w("## Withheld tags\n")
    if plan.withheld:
        # Counts, never names: the card travels with the data to whoever holds the files, and a
        # tier that may not read a tag must not learn that it exists (owners see the names in the
        # pull record, `plantstream dataset show`).
        counts = dict(plan.withheld)
        w("Selected tags left out of this dataset because their data grade is above the requester's tier:\n")
        w("| grade | tags | readable from tier |")
        w("|---|---|---|")
        for grade in sorted(counts, key=_GRADE_ORDER.index, reverse=True):
            w(f"| {grade} | {counts[grade]} | {_lowest_tier(grade)} |")
        w("")
    else:
        w("None: every selected tag is included.\n")
    w("## Files\n")
    w("| file | rows | bytes | sha256 |")
    w("|---|---|---|---|")
    for f in [f for o in outs for f in o.files] + [f for o in outs for f in o.lot_files]:
        w(f"| `{f.path}` | {f.rows if f.rows is not None else '-'} | {f.bytes} | `{f.sha256}` |")
    w("")
    w(
        "Columns carry their unit, grade and description in the Parquet field metadata; `croissant.json` "
        "describes the same (Croissant 1.0, loadable with `mlcroissant`).\n"
    )
    w(
        "```python\nimport pyarrow.dataset as ds\ntable = ds.dataset('data', format='parquet', partitioning='hive').to_table()\n```\n"
    )
    return "\n".join(out) + "\n"
