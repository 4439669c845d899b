"""Benchmark: cells per second from the database to Parquet, and the pull's peak memory.

    python -m plantstream.bench.pull --rows 50000000            # 50 tags x 1M s: 50M readings
    python -m plantstream.bench.pull --tags 50 --seconds 60000  # 3M readings -> 3M cells

Creates a scratch database on the server of PLANTSTREAM_DB_DSN (dropped afterwards unless
--keep) and loads it with binary COPY in chunks of ~1M readings built with numpy (no Python per
row; ``--jobs`` connections load disjoint time ranges side by side), then VACUUM ANALYZE so the
pull does not pay for hint bits. The load is timed but is not what is measured: the pull runs in
a child process (so its peak RSS, VmHWM from /proc, is the pull's alone) with the owner tier on a
1 s grid, locf gap rule, lots joined. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import click
import numpy as np
import numpy.typing as npt
import psycopg

from plantstream.bench import copyload
from plantstream.bench.copyload import T0, T0_US
from plantstream.config import Settings

CHUNK_READINGS = 1_000_000


def columns(
    s_lo: int, s_hi: int, tag_ids: npt.NDArray[np.int32], lot_ids: npt.NDArray[np.int32], lot_s: int
) -> dict[str, npt.NDArray[Any] | int]:
    """Every tag at each second in [s_lo, s_hi) after T0, time-major like live data, as the
    loader's columns. Value of tag t at second s: 100 + (s % 97) * 0.5 + t (deterministic, so
    runs compare)."""
    s = np.repeat(np.arange(s_lo, s_hi, dtype=np.int64), tag_ids.size)
    tag = np.tile(tag_ids, s_hi - s_lo)
    return {
        "time": T0_US + s * 1_000_000,
        "tag_id": tag,
        "v_float": 100.0 + (s % 97) * 0.5 + tag,
        "quality": 0,
        "lot_id": lot_ids[s // lot_s],
        "seq": s,
    }


def load(dsn: str, tags: int, seconds: int, lot_s: int = 600, jobs: int = 2) -> dict[str, float]:
    """Migrate ``dsn`` and load ``tags`` x ``seconds`` readings; returns timings (s)."""
    from plantstream.bench.timescale import pause_policies
    from plantstream.sinks.timescaledb.migrate import migrate

    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # T0 lies beyond the retention and compression policies' horizons: they must not drop or
        # compress the data while it is measured (TimescaleDB; nothing to pause on plain).
        pause_policies(conn)
        conn.execute(
            "INSERT INTO equipment (plant, path, name, level) VALUES ('bench', 'bench', 'bench', 'enterprise')"
        )
        conn.execute(
            "INSERT INTO tags (plant, tag, equipment_id, unit, datatype, grade) "
            "SELECT 'bench', 'tag' || lpad(i::text, 4, '0'), 1, 'degC', 'float', 'general' FROM generate_series(1, %s) i",
            (tags,),
        )
        conn.execute(
            "INSERT INTO lots (plant, lot, kind) SELECT 'bench', 'L' || lpad(i::text, 6, '0'), 'batch' "
            "FROM generate_series(0, %s) i",
            (seconds // lot_s,),
        )
        conn.execute("SELECT ps_ensure_partitions('readings', %s, %s)", (T0, T0 + timedelta(seconds=seconds + 1)))
        tag_ids = np.array(
            [r[0] for r in conn.execute("SELECT id FROM tags WHERE plant = 'bench' ORDER BY tag")], np.int32
        )
        lot_ids = np.array(
            [r[0] for r in conn.execute("SELECT id FROM lots WHERE plant = 'bench' ORDER BY lot")], np.int32
        )
    t = time.perf_counter()
    step = max(1, CHUNK_READINGS // tags)
    bounds = np.linspace(0, seconds, jobs + 1, dtype=np.int64)
    errors: list[BaseException] = []

    def load_range(lo: int, hi: int) -> None:
        try:
            # Disjoint time ranges (different partitions) per connection; one transaction per
            # chunk keeps WAL and lock memory flat. synchronous_commit off: a scratch database.
            with psycopg.connect(dsn, autocommit=True, options="-c synchronous_commit=off") as conn:
                for s in range(lo, hi, step):
                    copyload.write(conn, columns(s, min(hi, s + step), tag_ids, lot_ids, lot_s))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=load_range, args=(int(bounds[i]), int(bounds[i + 1])), name=f"bench-load-{i}")
        for i in range(jobs)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    copy_s = time.perf_counter() - t
    t = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE readings")
    return {"copy_s": round(copy_s, 1), "vacuum_s": round(time.perf_counter() - t, 1)}


@click.command()
@click.option("--tags", type=int, default=50, show_default=True)
@click.option("--seconds", type=int, default=60_000, show_default=True, help="seconds of 1 Hz readings per tag")
@click.option("--rows", type=int, default=None, help="total readings (overrides --seconds: rows / tags seconds)")
@click.option("--jobs", type=int, default=2, show_default=True, help="loader connections")
@click.option("--keep", is_flag=True, help="keep the scratch database")
@click.option("--dsn", default=None, help="use this already loaded database instead of a scratch one")
@click.option(
    "--labels", is_flag=True, help="also record lot segments, a spec and lab results, and pull with labels and a split"
)
@click.option("--child", is_flag=True, hidden=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, hidden=True)
def main(
    tags: int,
    seconds: int,
    rows: int | None,
    jobs: int,
    keep: bool,
    dsn: str | None,
    labels: bool,
    child: bool,
    out: Path | None,
) -> None:
    if rows is not None:
        seconds = max(1, rows // tags)
    if child:
        assert dsn is not None and out is not None
        _child(dsn, seconds, out, labels)
        return
    settings = Settings.from_env()
    name = f"psbench_{uuid.uuid4().hex[:8]}"
    admin = settings.dsn
    loaded = dsn is not None
    if dsn is None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        info = psycopg.conninfo.conninfo_to_dict(admin)
        info["dbname"] = name
        dsn = psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    try:
        print(json.dumps(measure(dsn, tags, seconds, jobs=jobs, load_first=not loaded, labels=labels)))
    finally:
        if not keep and name in dsn:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def copy_out_rows_per_s(dsn: str) -> float:
    """This machine's read ceiling for a pull: binary COPY of every reading's (time, tag, value)
    out of the database, bytes discarded."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        t = time.perf_counter()
        with cur.copy("COPY (SELECT time, tag_id, v_float FROM readings) TO STDOUT (FORMAT BINARY)") as copy:
            for _ in copy:  # blocks of rows, discarded
                pass
        dt = time.perf_counter() - t
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
        rows = int(row[0]) if row else 0
    return rows / dt if dt > 0 else 0.0


def read_alone(dsn: str, seconds: int) -> tuple[int, float]:
    """(readings, seconds) of the pull's own database read with nothing after it: the same window query, planner
    settings, snapshot and fetch connections, windows of the pull's size, results discarded.
    The pull overlaps its Python work with this read, so pull / read-alone says how much of
    the read the rest of the pull hides (1.0: the database is the bound)."""
    from psycopg import sql

    from plantstream.access import DB_ROLE, Tier
    from plantstream.datasets.pull import FETCH_CONNECTIONS, TARGET_READINGS_PER_WINDOW
    from plantstream.datasets.source import (
        SOURCE_TAGS_SQL,
        SourceTag,
        WindowReader,
        snapshot_helpers,
        tune_for_windows,
    )

    role = DB_ROLE[Tier.OWNER]
    lo = int(T0.timestamp()) * 1_000_000
    hi = lo + seconds * 1_000_000
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            tune_for_windows(conn)
            tags = [SourceTag(*r) for r in conn.execute(SOURCE_TAGS_SQL).fetchall()]
            with snapshot_helpers(conn, dsn, role, FETCH_CONNECTIONS - 1) as helpers:
                reader = WindowReader(conn, tags, helpers=helpers)
                step_us = max(1, TARGET_READINGS_PER_WINDOW // max(1, len(tags))) * 1_000_000
                rows = 0
                t = time.perf_counter()
                try:
                    for a in range(lo, hi, step_us):
                        rows += reader.fetch(a, min(a + step_us, hi)).readings
                finally:
                    reader.close()
                dt = time.perf_counter() - t
    return rows, dt


def pull_in_child(dsn: str, seconds: int, labels: bool = False) -> tuple[dict[str, Any], float]:
    """The bench's pull of [T0, T0 + seconds) in a child process: (its JSON line, wall seconds)."""
    with TemporaryDirectory() as tmp:
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "plantstream.bench.pull", "--child", "--dsn", dsn, "--seconds", str(seconds),
             "--out", str(Path(tmp) / "ds"), *(["--labels"] if labels else [])],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"dataset pull child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1])), wall


def label(dsn: str, seconds: int, lot_s: int = 600) -> None:
    """What a labelled pull reads beside the readings: each bench lot's process segment on the
    bench equipment, a seeded spec (EN10025-2:S355J2) and a lab result per lot; the first tag is
    checked against the spec's mould_level process limit (90..110), which its values cross."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE lots SET spec_id = 'EN10025-2:S355J2' WHERE plant = 'bench'")
        conn.execute("UPDATE tags SET spec_property = 'mould_level' WHERE plant = 'bench' AND tag = 'tag0001'")
        conn.execute(
            "INSERT INTO process_segments (lot_id, equipment_id, start_time, end_time) "
            "SELECT id, 1, %(t0)s + (substr(lot, 2)::int * %(s)s) * interval '1 second', "
            "%(t0)s + ((substr(lot, 2)::int + 1) * %(s)s) * interval '1 second' FROM lots WHERE plant = 'bench' "
            "ON CONFLICT DO NOTHING",
            {"t0": T0, "s": lot_s},
        )
        conn.execute(
            "INSERT INTO lot_test_results (lot_id, property, time, value, unit) "
            "SELECT id, 'ReH', %(t0)s + ((substr(lot, 2)::int + 1) * %(s)s) * interval '1 second', "
            "340 + (id %% 40), 'MPa' FROM lots WHERE plant = 'bench' ON CONFLICT DO NOTHING",
            {"t0": T0, "s": lot_s},
        )
        del seconds


def measure(
    dsn: str, tags: int, seconds: int, jobs: int = 2, load_first: bool = True, labels: bool = False
) -> dict[str, Any]:
    """Load ``tags`` x ``seconds`` readings into ``dsn`` (unless already loaded), measure the read
    ceiling (binary COPY out), then pull them in a child process (its peak RSS is the pull's).
    ``labels``: with lot segments, spec and lab results (``label``), pulled with labels and a split."""
    timings: dict[str, float] = load(dsn, tags, seconds, jobs=jobs) if load_first else {}
    if labels and load_first:
        label(dsn, seconds)
    copy_out = copy_out_rows_per_s(dsn)
    read_rows, read_s = read_alone(dsn, seconds)
    pulled, wall = pull_in_child(dsn, seconds, labels)
    readings = tags * seconds
    result: dict[str, Any] = {"readings": readings, "tags": tags}
    result.update(pulled)
    if "copy_s" in timings:
        result["load_rows_per_s"] = round(readings / timings["copy_s"]) if timings["copy_s"] else None
    result.update(timings)
    result["copy_out_rows_per_s"] = round(copy_out)
    result["read_alone_rows_per_s"] = round(read_rows / read_s) if read_s > 0 else None
    result["child_wall_s"] = round(wall, 2)
    # Max RSS over the children: the pull child is the only one (cross-check of VmHWM).
    result["children_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    result["note"] = (
        f"{readings:,} readings ({tags} tags at 1 Hz) -> 1 s grid, locf, lots joined, owner tier, Parquet"
        + (", labels, event labels, lot table, split by lot (segments)" if labels else "")
        + ", quality.json;"
        f" peak RSS {result.get('peak_rss_mb')} MiB; limit: the pull's own database read alone (same query and"
        f" connections, results discarded); binary COPY of (time, tag, value) out of readings on one connection:"
        f" {copy_out / 1e6:.2f}M rows/s"
    )
    return result


# Sizes for `plantstream bench`: the full run pulls 10M readings (a 50M-row run takes minutes to load;
# `python -m plantstream.bench.pull --rows 50000000` measures it by hand).
QUICK_SIZE = (10, 3_000)
FULL_SIZE = (50, 200_000)


def run(dsn: str, quick: bool = False) -> dict[str, Any]:
    """The `plantstream bench` entry point: ``dsn`` is a fresh, migrated database."""
    tags, seconds = QUICK_SIZE if quick else FULL_SIZE
    return measure(dsn, tags, seconds)


def compressed(dsn: str, uncompressed: dict[str, Any], quick: bool = False) -> dict[str, Any]:
    """The same pull again after ``run`` on ``dsn`` (TimescaleDB), with the chunks compressed as
    the compression policy does: cells/s on compressed chunks against ``uncompressed`` (run's
    result on the same data, same request), and whether the output is the same."""
    from plantstream.bench.timescale import compress_as_policy, require_timescale

    _, seconds = QUICK_SIZE if quick else FULL_SIZE
    with psycopg.connect(dsn, autocommit=True) as conn:
        require_timescale(conn)
        t = time.perf_counter()
        policy = compress_as_policy(conn, "readings")
        compress_s = time.perf_counter() - t
        conn.execute("VACUUM ANALYZE readings")
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE is_compressed), count(*) FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'readings'"
        ).fetchone()
        assert row is not None
    pulled, wall = pull_in_child(dsn, seconds)
    before, after = float(uncompressed["cells_per_s"]), float(pulled["cells_per_s"])
    return {
        "compressed_cells_per_s": after,
        "uncompressed_cells_per_s": before,
        "ratio": round(after / before, 3) if before else None,
        "compressed_chunks": int(row[0]),
        "chunks": int(row[1]),
        "compress_s": round(compress_s, 1),
        "compress_after": policy["compress_after"],
        "same_rows_and_cells": pulled["rows"] == uncompressed["rows"] and pulled["cells"] == uncompressed["cells"],
        "same_parquet_bytes": pulled["parquet_bytes"] == uncompressed["parquet_bytes"],
        "pull": pulled,
        "child_wall_s": round(wall, 2),
    }


def _vm(key: str) -> float:
    """A /proc/self/status memory line (VmHWM: peak RSS, VmRSS: now) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _child(dsn: str, seconds: int, out: Path, labels: bool = False) -> None:
    from plantstream.access import Tier
    from plantstream.datasets.pull import pull
    from plantstream.domain.pullrequest import Requester, validate_request

    req = validate_request(
        {
            "plant": "bench",
            "start": T0,
            "end": T0 + timedelta(seconds=seconds),
            "interval": "1s",
            "gap": {"rule": "locf", "max_gap": "5s"},
            **({"labels": True, "split": {"seed": 1}} if labels else {}),
        }
    )
    base_mb = _vm("VmRSS")  # interpreter + numpy + pyarrow + psycopg imported, before any data
    t = time.perf_counter()
    rec = pull(dsn, req, Requester(name="bench", tier=Tier.OWNER), out=out)
    dt = time.perf_counter() - t
    cells = int(rec.cells or 0)
    print(
        json.dumps(
            {
                "rows": rec.rows,
                "cells": cells,
                "seconds": round(dt, 2),
                "cells_per_s": round(cells / dt),
                "parquet_bytes": sum(f.bytes for f in rec.files),
                "rss_before_pull_mb": base_mb,
                "peak_rss_mb": _vm("VmHWM"),
            }
        )
    )


if __name__ == "__main__":
    main()
