"""Croissant dataset-level metadata and the Croissant RAI properties of a pull, from provenance.

Everything here is a function of the request and the data (never of the time of the pull or
who pulled), so a re-pull stays byte-identical: ``datePublished`` is the time of the newest
reading the pull read, not the clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from plantstream.datasets.output import FORMAT_SEMVER, PROPERTY_KEY, vocabulary_ref
from plantstream.domain.durations import format_duration_us
from plantstream.domain.pullrequest import PullRequest

if TYPE_CHECKING:
    from plantstream.datasets.pull import Plan, TableOut


def iso_us(t_us: int) -> str:
    return datetime.fromtimestamp(t_us / 1e6, UTC).isoformat().replace("+00:00", "Z")


def enterprise(plan: Plan) -> str:
    """The ISA-95 enterprise (first path element) the tags' equipment belongs to."""
    names = sorted({t.equipment.split("/")[0] for t in plan.tags if t.equipment})
    return names[0] if len(names) == 1 else ", ".join(names) or "unknown"


def keywords(req: PullRequest, plan: Plan) -> list[str]:
    kinds = sorted({plan.lots[i].kind for i in (plan.allowed or set()) if plan.lots[i].kind})
    out = ["industrial AI", "manufacturing", "time series", "sensor data", f"plant {req.plant}"]
    out += [f"{k} lots" for k in kinds]
    if req.labels:
        out.append("quality labels")
    return out


def missing_summary(req: PullRequest, outs: Sequence[TableOut]) -> dict[str, Any]:
    """Totals over the tags: rows, cells, observed/filled/null cells, gaps, bad and uncertain."""
    cells = observed = valid = gaps = 0
    longest = (0, "")
    good = uncertain = bad = 0
    for o in outs:
        for t, q, counts in zip(o.table.tags, o.quality, o.readings, strict=True):
            cells += q.rows
            observed += q.observed
            valid += q.valid
            gaps += q.gaps
            if q.longest_gap_rows > longest[0]:
                longest = (q.longest_gap_rows, t.tag)
            good, uncertain, bad = good + int(counts[0]), uncertain + int(counts[1]), bad + int(counts[2])
    readings = good + uncertain + bad
    return {
        "cells": cells,
        "observed": observed,
        "filled": valid - observed,
        "null": cells - valid,
        "gaps": gaps,
        "longest_gap": format_duration_us(longest[0] * req.interval_us) if longest[0] else "0s",
        "longest_gap_tag": longest[1],
        "readings": readings,
        "good": good,
        "uncertain": uncertain,
        "bad": bad,
        "bad_share": bad / readings if readings else 0.0,
    }


def _share(a: int, b: int) -> str:
    return f"{100.0 * a / b:.2f} %" if b else "-"


def croissant_extra(req: PullRequest, plan: Plan, outs: Sequence[TableOut], snapshot: str) -> dict[str, Any]:
    """The recommended Croissant 1.0 properties and the RAI ones (``rai:``), in a fixed order."""
    org = enterprise(plan)
    newest = max(o.newest_us for o in outs)
    m = missing_summary(req, outs)
    lines = sorted({o.table.line for o in outs if o.table.line})
    gaps = Counter(
        (g.rule, format_duration_us(req.max_gap_us(g)) if g.rule != "none" else "")
        for g in (req.gap_for(t.tag) for t in plan.tags)
    )
    rules = "; ".join(
        f"{n} tag(s) {rule}" + (f" within {gap}" if gap else "") for (rule, gap), n in sorted(gaps.items())
    )
    span_s = (req.end_us - req.start_us) / 1e6
    per_tag = [
        (span_s / int(c[0] + c[1])) for o in outs for c in o.readings if int(c[0] + c[1]) > 0
    ]  # seconds between usable readings, per tag
    sampling = (
        f"observed mean interval between readings per tag {min(per_tag):.3g} s to {max(per_tag):.3g} s"
        if per_tag
        else "no usable readings"
    )
    collection = (
        f"Sensor readings of plant {req.plant} ({org}), {len(plan.tags)} tag(s)"
        + (f" on line(s) {', '.join(lines)}" if lines else "")
        + f", {_iso(req.start_us)} to {_iso(req.end_us)}. Collected by plantstream edge agents from the plant's "
        "OPC UA servers and MQTT / Sparkplug B devices, carried over Kafka, normalized by the stream processor "
        "(canonical unit per tag, quality good / uncertain / bad, the lot on the equipment stamped on each "
        "reading) and stored in PostgreSQL/TimescaleDB. Sources report by exception: the edge publishes a "
        "value when it changes by more than the tag's deadband or at its sampling interval; the protocol, "
        "deadband and sampling interval of each tag are edge configuration and are not recorded with the "
        f"readings. In this range: {sampling}. Lots, process segments and lab results come from the plant's "
        "context events (the MES)."
    )
    missing = (
        f"Of {m['cells']} tag cells (rows x tags): {m['observed']} had a reading in their bucket "
        f"({_share(m['observed'], m['cells'])}), {m['filled']} were filled by the gap rules, {m['null']} are null "
        f"({_share(m['null'], m['cells'])}) in {m['gaps']} gap(s) (runs of null rows; the longest {m['longest_gap']}"
        + (f", {m['longest_gap_tag']}" if m["longest_gap_tag"] else "")
        + f"). Readings in the range: {m['readings']}, of which {m['bad']} of bad quality "
        f"({_share(m['bad'], m['readings'])}, left out) and {m['uncertain']} uncertain (used). Per tag in the "
        "dataset card (README.md, Data quality)."
    )
    preprocessing = [
        "Unit normalization: each tag's readings are in its canonical unit (converted by the stream processor "
        "from the source unit); the display unit and its UCUM code are in the Parquet field metadata "
        "(unit, unit_ucum) and here (unitText, unitCode).",
        f"Resampling: a {req.interval} grid; a row stands for the bucket [t, t + {req.interval}) and holds each "
        "tag's last reading in it; bad-quality readings are left out.",
        f"Gap rules: {rules} (locf: the last value while at most the max gap old; linear: interpolated when the "
        "readings around the gap are at most the max gap apart; none: null).",
        "Lots: a row's lot is the lot running on its table's line at the row time (process segments); one "
        "table per line.",
    ]
    with_prop = sorted({t.std_property for t in plan.tags if t.std_property})
    if with_prop:
        ref = vocabulary_ref()
        preprocessing.append(
            f"Standard properties: {sum(1 for t in plan.tags if t.std_property)} tag column(s) carry the id of the "
            f"standard property they measure ({', '.join(with_prop)}), from the shared vocabulary {ref['name']} "
            f"{ref['version']} ({ref['iri']}), in the Parquet field metadata ({PROPERTY_KEY}) and here "
            "(additionalProperty); such a column's unit is its property's canonical unit, so columns of one "
            "property line up across plants."
        )
    if req.split is not None:
        preprocessing.append(
            f"Splits by lot (seed {req.split.seed}, train {req.split.train:g} / validation "
            f"{req.split.validation:g} / test {req.split.test:g} of the lots, per table): no lot is in two splits."
        )
    uses = [
        "Forecasting and anomaly detection on process signals of the selected equipment.",
        "Soft sensors and virtual metrology: predicting lot quality from process data"
        + (" (labels included)." if req.labels else " (pull with labels for the lot quality labels)."),
        "Not intended for closing control loops or safety decisions without validation on the plant.",
    ]
    limitations = [
        "Only the selected time range and equipment: operating regimes outside it (other grades, start-ups, "
        "shutdowns) are not represented.",
        "A row's value is the last reading in its bucket, not an average; short excursions between grid "
        "points are not visible.",
        "Per-tag protocol, deadband and sampling interval are not recorded with the readings.",
        "A row's lot is the lot at the bucket start; a bucket in which a lot changes carries the earlier lot.",
    ]
    if req.labels:
        limitations.append(
            "Spec limits that step with lot attributes (e.g. thickness) use the strictest step: lot attributes "
            "are not recorded. Lab results are those recorded when the pull ran (the latest per property)."
        )
    if len(outs) > 1:
        limitations.append(
            "Lines are separate tables and split on their own: a parent lot (lot_parents) may be in another "
            "split than its child."
        )
    extra: dict[str, Any] = {
        "creator": {"@type": "sc:Organization", "name": org},
        "publisher": {"@type": "sc:Organization", "name": f"{org} (plantstream dataset service)"},
        "datePublished": iso_us(newest) if newest > -(2**62) else _iso(req.end_us),
        "keywords": keywords(req, plan),
        "inLanguage": "en",
        "isLiveDataset": False,
        **({"sc:additionalProperty": vocabulary_value()} if with_prop else {}),
        "rai:dataCollection": collection,
        "rai:dataCollectionType": ["Direct measurement", "Software Collection"],
        "rai:dataCollectionMissingData": missing,
        "rai:dataCollectionRawData": (
            "Derived from the raw readings of the plantstream database (per reading: time, value, quality, lot), "
            "which stay there under their retention; the data watermark in the card identifies them."
        ),
        # Spelled as mlcroissant (the reference implementation) reads it.
        "rai:dataCollectionTimeFrame": [_iso(req.start_us), _iso(req.end_us)],
        "rai:dataPreprocessingProtocol": preprocessing,
        "rai:dataImputationProtocol": (
            f"Gap rules per tag: {rules}. {m['filled']} of {m['cells']} cells ({_share(m['filled'], m['cells'])}) "
            "are imputed by them; nothing else is imputed, and a cell the rules do not reach is null."
        ),
        "rai:dataManipulationProtocol": (
            "No value is altered beyond resampling and the gap rules; integer and boolean tags stay exact "
            "(int64, bool). Tags whose data grade (GB/T 43697-2024) is above the requester's tier are withheld "
            "(counted per grade in the card)."
        ),
    }
    if req.labels:
        extra["rai:dataAnnotationProtocol"] = [
            "Lot labels: the lot's latest lab test result per property, the governing lab limit of its material "
            "spec, in_spec per property and overall (null when not measured or no limit); the same on every row "
            "of the lot and in the lot table.",
            "Event labels per row: event.process / event.late_data are true while a process deviation (a tag "
            "outside its spec's process limit) or late data on one of the table's tags was open, as recorded by "
            "the stream processor (deviations on tags the requester may not read are not visible).",
        ]
        extra["rai:dataAnnotationPlatform"] = ["The plant's laboratory results, recorded as context events"]
        extra["rai:annotationsPerItem"] = "One result per lab property per lot (the latest)"
    extra["rai:dataUseCases"] = uses
    extra["rai:dataLimitations"] = limitations
    extra["rai:dataBiases"] = [
        "Lots and time ranges are those selected: the lot mix (grades, lines, shifts) follows the plant's "
        "production in the range, not a balanced sample."
    ]
    extra["rai:personalSensitiveInformation"] = [
        "None: machine sensor readings, equipment paths and lot ids; no data about people."
    ]
    extra["rai:dataSocialImpact"] = (
        "Industrial process data; its main risk is disclosure of process know-how, which the data grades and "
        "tiers control."
    )
    extra["rai:dataReleaseMaintenancePlan"] = (
        f"A fixed snapshot ({snapshot}): the same request on the same data gives the same files byte for byte; "
        f"newer data gives a new snapshot. version {FORMAT_SEMVER}+<snapshot>: MAJOR.MINOR.PATCH is the file "
        "format (MAJOR: incompatible layout or column meaning; MINOR: additions; PATCH: corrections that leave "
        "the data), the build metadata names the snapshot."
    )
    return extra


def vocabulary_value() -> dict[str, Any]:
    """The vocabulary the fields' standard properties come from, as a schema.org PropertyValue."""
    ref = vocabulary_ref()
    return {
        "@type": "sc:PropertyValue",
        "sc:propertyID": "plantstream.vocabulary",
        "sc:name": ref["name"],
        "sc:value": ref["iri"],
        "sc:description": f"standard property vocabulary {ref['name']} version {ref['version']} (prefix {ref['prefix']})",
    }


def _iso(t_us: int) -> str:
    return iso_us(t_us)
