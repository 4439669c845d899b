"""The benchmark's binary COPY loader writes exactly the readings it describes (so the numbers
it reports are about real data), and its pull child reports cells and peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import psycopg
import pytest

from plantstream.bench import pull as bench
from plantstream.bench.copyload import T0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_copy_loader_writes_the_described_readings(fresh_db: str) -> None:
    tags, seconds, lot_s = 3, 2_500, 600
    timings = bench.load(fresh_db, tags, seconds, lot_s=lot_s, jobs=2)
    assert timings["copy_s"] >= 0
    with psycopg.connect(fresh_db) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT tag_id), min(time), max(time) FROM readings").fetchone()
        assert row is not None
        assert row[0] == tags * seconds and row[1] == tags
        assert row[2] == T0 and (row[3] - T0).total_seconds() == seconds - 1
        # Spot checks against the formula: value, lot (by name), sequence.
        for s in (0, 1_234, seconds - 1):
            got = conn.execute(
                "SELECT r.v_float, t.id, l.lot, r.seq, r.quality FROM readings r JOIN tags t ON t.id = r.tag_id "
                "JOIN lots l ON l.id = r.lot_id WHERE t.tag = 'tag0002' AND r.time = %s",
                (T0 + timedelta(seconds=s),),
            ).fetchone()
            assert got is not None
            v, tag_id, lot, seq, quality = got
            assert v == 100.0 + (s % 97) * 0.5 + tag_id
            assert lot == f"L{s // lot_s:06d}" and seq == s and quality == 0


def test_bench_reports_cells_and_peak_memory(fresh_db: str, settings_env: dict[str, str]) -> None:
    bench.load(fresh_db, 4, 3_000, jobs=1)
    proc = subprocess.run(
        [sys.executable, "-m", "plantstream.bench.pull", "--tags", "4", "--seconds", "3000", "--dsn", fresh_db],
        env=settings_env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == 3_000 and result["cells"] == 12_000
    assert result["peak_rss_mb"] >= result["rss_before_pull_mb"] > 0
    assert result["cells_per_s"] > 0 and result["read_alone_rows_per_s"] > 0


def test_read_alone_reads_every_reading_of_the_range(fresh_db: str) -> None:
    bench.load(fresh_db, 4, 3_000, jobs=1)
    rows, seconds = bench.read_alone(fresh_db, 3_000)
    assert rows == 12_000 and seconds > 0
    # Half the range: half the readings (the windows cover exactly [T0, T0 + seconds)).
    assert bench.read_alone(fresh_db, 1_500)[0] == 6_000
