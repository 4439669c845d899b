"""Context events (lots, segments, genealogy, lab results) and deviations into their tables."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from plantstream.contract import DEVIATION_KEYS, ContextEvent, ContextKind, Deviation
from plantstream.sinks.timescaledb.ids import Registry
from plantstream.sinks.timescaledb.timesql import TS


def write_context(cur: psycopg.Cursor[Any], reg: Registry, ev: ContextEvent) -> None:
    """Lots, process segments, genealogy and lab results of one context event (keyed upserts)."""
    ts = TS.format("%s::bigint")
    if ev.kind is ContextKind.LOT_START:
        lot = reg.lot_id(cur, ev.plant, ev.lot, ev.lot_kind, ev.material)
        eq = reg.equipment_id(cur, ev.plant, ev.equipment)
        cur.execute(
            f"INSERT INTO process_segments (lot_id, equipment_id, start_time) VALUES (%s, %s, {ts}) "
            "ON CONFLICT (lot_id, equipment_id, start_time) DO NOTHING",
            (lot, eq, ev.ts_us),
        )
    elif ev.kind is ContextKind.LOT_END:
        lot = reg.lot_id(cur, ev.plant, ev.lot, ev.lot_kind, ev.material)
        eq = reg.equipment_id(cur, ev.plant, ev.equipment)
        # Close the latest open segment that started before this end. An end without a
        # start (start older than the topic's retention) leaves nothing to close.
        cur.execute(
            f"""UPDATE process_segments SET end_time = {ts}
                WHERE id = (SELECT id FROM process_segments
                            WHERE lot_id = %s AND equipment_id = %s AND end_time IS NULL AND start_time <= {ts}
                            ORDER BY start_time DESC LIMIT 1)""",
            (ev.ts_us, lot, eq, ev.ts_us),
        )
    elif ev.kind is ContextKind.GENEALOGY:
        child = reg.lot_id(cur, ev.plant, ev.lot, ev.lot_kind, ev.material)
        for parent in ev.parents:
            pid = reg.lot_id(cur, ev.plant, parent)
            cur.execute(
                f"INSERT INTO lot_genealogy (parent_id, child_id, relation, time) VALUES (%s, %s, %s, {ts}) "
                "ON CONFLICT (parent_id, child_id) DO NOTHING",
                (pid, child, ev.relation, ev.ts_us),
            )
    elif ev.kind is ContextKind.LAB_RESULT:
        lot = reg.lot_id(cur, ev.plant, ev.lot, ev.lot_kind, ev.material)
        eq_opt: int | None = reg.equipment_id(cur, ev.plant, ev.equipment) if ev.equipment else None
        for prop, (value, unit) in sorted(ev.results.items()):
            cur.execute(
                f"INSERT INTO lot_test_results AS r (lot_id, property, time, value, unit, equipment_id) "
                f"VALUES (%s, %s, {ts}, %s, %s, %s) ON CONFLICT (lot_id, property, time) DO UPDATE "
                "SET value = EXCLUDED.value, unit = EXCLUDED.unit, equipment_id = EXCLUDED.equipment_id "
                "WHERE (r.value, r.unit, r.equipment_id) IS DISTINCT FROM "
                "(EXCLUDED.value, EXCLUDED.unit, EXCLUDED.equipment_id)",
                (lot, prop, ev.ts_us, value, unit, eq_opt),
            )


def write_deviation(cur: psycopg.Cursor[Any], reg: Registry, d: Deviation) -> None:
    """One deviation, upserted by id (a re-emission with other values updates the row).

    The columns hold the contract's core fields; ``attrs`` the rest of its map (limits, unit, details).
    """
    lot = reg.lot_id(cur, d.plant, d.lot) if d.lot else None
    tag = reg.tag_id(cur, d.plant, d.tag, d.equipment, "", "float") if d.tag and d.equipment else None
    if d.tag and tag is None:
        row = cur.execute("SELECT id FROM tags WHERE plant = %s AND tag = %s", (d.plant, d.tag)).fetchone()
        tag = int(row[0]) if row else None
    ts = TS.format("%s::bigint")
    cur.execute(
        f"""INSERT INTO deviations AS d (id, kind, plant, lot_id, spec_id, property, tag_id, start_time, end_time,
                                       peak, "limit", status, attrs)
            VALUES (%s, %s, %s, %s, %s, %s, %s, {ts}, CASE WHEN %s::bigint IS NULL THEN NULL ELSE {ts} END,
                    %s, %s, %s, %s)
            ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, plant = EXCLUDED.plant, lot_id = EXCLUDED.lot_id,
                spec_id = EXCLUDED.spec_id, property = EXCLUDED.property, tag_id = EXCLUDED.tag_id,
                start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time, peak = EXCLUDED.peak,
                "limit" = EXCLUDED."limit", status = EXCLUDED.status, attrs = EXCLUDED.attrs
            WHERE (d.kind, d.plant, d.lot_id, d.spec_id, d.property, d.tag_id, d.start_time, d.end_time, d.peak,
                   d."limit", d.status, d.attrs)
                  IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.plant, EXCLUDED.lot_id, EXCLUDED.spec_id,
                   EXCLUDED.property, EXCLUDED.tag_id, EXCLUDED.start_time, EXCLUDED.end_time, EXCLUDED.peak,
                   EXCLUDED."limit", EXCLUDED.status, EXCLUDED.attrs)""",
        (
            d.id,
            d.kind,
            d.plant,
            lot,
            d.spec,
            d.property or "",
            tag,
            d.start_us,
            d.end_us,
            d.end_us,
            d.peak,
            d.limit,
            d.status.value,
            Jsonb({k: v for k, v in d.to_map().items() if k not in DEVIATION_KEYS}),
        ),
    )
