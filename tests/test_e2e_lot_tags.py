"""End to end, lots from an OPC-UA tag (no MES): the steel simulator serves ``lf1.current_heat`` over
OPC-UA and publishes no lot events; the streams worker, configured with that tag as the ladle
furnace's lot tag, derives heat starts and ends; readings in the database carry the heat that the
tag named at their source time, and the heats are in the lots table."""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import psycopg
import pytest

from plantstream.config import Settings
from plantstream.contract import now_us
from plantstream.pipeline import Pipeline
from plantstream.sim.steel import LF, MATERIAL
from plantstream.testing.plugin import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

SQL = """
    SELECT t.tag, e.path, (extract(epoch FROM r.time) * 1000000)::bigint, r.v_text, l.lot
    FROM readings r
    JOIN tags t ON t.id = r.tag_id
    JOIN equipment e ON e.id = t.equipment_id
    LEFT JOIN lots l ON l.id = r.lot_id
    WHERE e.path = %(lf)s OR e.path LIKE %(below)s
    ORDER BY r.time
"""


def lf_rows(dsn: str) -> list[tuple[str, str, int, str | None, str | None]]:
    with psycopg.connect(dsn) as conn:
        return [(t, p, int(ts), vt, lot) for t, p, ts, vt, lot in conn.execute(SQL, {"lf": LF, "below": f"{LF}/%"})]


def heats(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return list(
            conn.execute(
                """SELECT l.lot, l.kind, l.spec_id, s.start_time, s.end_time
                   FROM lots l JOIN process_segments s ON s.lot_id = l.id
                   JOIN equipment e ON e.id = s.equipment_id WHERE e.path = %s ORDER BY s.start_time""",
                (LF,),
            )
        )


@pytest.mark.timeout(400)
def test_heats_from_the_current_heat_tag_stamp_readings(settings: Settings, tmp_path: Path) -> None:
    cfg = tmp_path / "streams.yaml"
    cfg.write_text(f"lot_tags:\n  - {{plant: steel, tag: lf1.current_heat, lot_kind: heat, material: '{MATERIAL}'}}\n")
    pipe = Pipeline(
        settings,
        tmp_path / "run",
        plants=("steel",),
        seed=5,
        speed=300.0,  # a 40-minute heat every 8 s of wall time, in 2.5 h of history that ends now
        rate=2.0,
        sim_ports={"steel": free_port()},
        sim_args={"steel": ["--no-mes"]},
        streams_config=cfg,
    )
    try:
        pipe.run_ledgered(sim_duration=30.0)

        def settled() -> bool:
            rows = lf_rows(settings.dsn)
            tag_heats = {vt for t, _, _, vt, _ in rows if t == "lf1.current_heat" and vt}
            return len(tag_heats) >= 3 and {h[0] for h in heats(settings.dsn)} >= tag_heats

        wait_until(settled, 240, "readings of three heats and their lots in the database", interval=1.0)
        pipe.check_alive(allow_exited=["sim-steel"])
        rows = lf_rows(settings.dsn)
        lots = heats(settings.dsn)
        read_at = now_us()
    finally:
        pipe.stop()

    # The fast run backfilled history: nothing is stamped after the wall clock (the edge would flag
    # readings over 10 minutes ahead as bad and keep them out of windows).
    assert rows and max(ts for _, _, ts, _, _ in rows) <= read_at
    assert min(ts for _, _, ts, _, _ in rows) < read_at - 3600 * 1_000_000

    # The tag's own readings say which heat ran when.
    changes: list[tuple[int, str]] = []
    for tag, _, ts, vt, _ in rows:
        if tag == "lf1.current_heat" and vt is not None and (not changes or changes[-1][1] != vt):
            changes.append((ts, vt))
    assert len([c for c in changes if c[1]]) >= 3, f"too few heats to prove anything: {changes}"
    starts = [ts for ts, _ in changes]

    def heat_at(ts: int) -> str | None:
        i = bisect.bisect_right(starts, ts) - 1
        return (changes[i][1] or None) if i >= 0 else None

    # Heats are lots of kind heat on the ladle furnace, their segments starting when the tag first
    # names them and ending when it names the next (no MES ran).
    by_lot = {lot: (kind, spec, start, end) for lot, kind, spec, start, end in lots}
    named = [(ts, heat) for ts, heat in changes if heat]
    for i, (ts, heat) in enumerate(named):
        kind, spec, start, end = by_lot[heat]
        assert kind == "heat" and spec, (heat, kind, spec)
        assert int(start.timestamp() * 1_000_000) == ts, f"{heat} starts when the tag first names it"
        if i + 1 < len(named):
            assert end is not None and int(end.timestamp() * 1_000_000) == named[i + 1][0]
    # Readings on the ladle furnace itself are processed with the tag's readings (same key): exact.
    same = [(tag, ts, lot) for tag, path, ts, _, lot in rows if path == LF and ts >= starts[0]]
    assert same and all(lot == heat_at(ts) for _, ts, lot in same), [
        (tag, ts, lot, heat_at(ts)) for tag, ts, lot in same if lot != heat_at(ts)
    ][:5]
    # Readings below it (the furnace) sit on another key, so on another partition: one processed
    # before the tag's reading of the same instant carries the previous heat. Away from a change
    # (over 2 s, i.e. four samples, later) every one carries the heat of its time.
    below = [(ts, lot) for _, path, ts, _, lot in rows if path != LF and ts >= starts[0]]
    assert len(below) > 50
    racing = [(ts, lot) for ts, lot in below if ts - starts[bisect.bisect_right(starts, ts) - 1] <= 2_000_000]
    settled_rows = [(ts, lot) for ts, lot in below if (ts, lot) not in racing]
    assert settled_rows and all(lot == heat_at(ts) for ts, lot in settled_rows), [
        (ts, lot, heat_at(ts)) for ts, lot in settled_rows if lot != heat_at(ts)
    ][:5]
    assert all(lot in (heat_at(ts), heat_at(ts - 2_000_001)) for ts, lot in racing)
