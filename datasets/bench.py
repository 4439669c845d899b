"""Benchmark: cells per second from the database to Parquet, and the pull's peak RSS.

    python -m plantstream.datasets.bench --tags 50 --seconds 60000      # 3M readings -> 3M cells

Creates a scratch database on the server of PLANTSTREAM_DB_DSN (dropped afterwards unless
--keep), fills ``readings`` server-side (generate_series: the load is not what is measured),
then runs the pull in a child process (so its peak RSS is the pull's alone) with the owner
tier on a 1 s grid, locf gap rule, lots joined. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import click
import psycopg

from plantstream.config import Settings

T0 = datetime(2025, 6, 1, tzinfo=UTC)


def load(dsn: str, tags: int, seconds: int, lot_s: int = 600) -> None:
    from plantstream.sinks.timescaledb.migrate import migrate

    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
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
        conn.execute(
            """INSERT INTO readings (time, tag_id, v_float, quality, lot_id, seq)
               SELECT %(t0)s + s * interval '1 second', t.id, 100 + (s %% 97) * 0.5 + t.id, 0,
                      (SELECT id FROM lots WHERE lot = 'L' || lpad((s / %(lot_s)s)::text, 6, '0')), s
               FROM generate_series(0, %(n)s - 1) s CROSS JOIN tags t""",
            {"t0": T0, "n": seconds, "lot_s": lot_s},
        )
        conn.execute("VACUUM ANALYZE readings")


@click.command()
@click.option("--tags", type=int, default=50)
@click.option("--seconds", type=int, default=60_000)
@click.option("--keep", is_flag=True, help="keep the scratch database")
@click.option("--dsn", default=None, help="use this already loaded database instead of a scratch one")
@click.option("--child", is_flag=True, hidden=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, hidden=True)
def main(tags: int, seconds: int, keep: bool, dsn: str | None, child: bool, out: Path | None) -> None:
    if child:
        assert dsn is not None and out is not None
        _child(dsn, seconds, out)
        return
    settings = Settings.from_env()
    name = f"psbench_{uuid.uuid4().hex[:8]}"
    admin = settings.dsn
    if dsn is None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        info = psycopg.conninfo.conninfo_to_dict(admin)
        info["dbname"] = name
        dsn = psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
        t = time.perf_counter()
        load(dsn, tags, seconds)
        load_s = time.perf_counter() - t
    else:
        load_s = 0.0
    try:
        with TemporaryDirectory() as tmp:
            t = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "plantstream.datasets.bench",
                    "--child",
                    "--dsn",
                    dsn,
                    "--seconds",
                    str(seconds),
                    "--out",
                    str(Path(tmp) / "ds"),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(proc.returncode)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            result.update({"load_s": round(load_s, 1), "child_wall_s": round(wall, 2), "peak_rss_mb": round(rss_mb, 1)})
            print(json.dumps(result))
    finally:
        if not keep and dsn is not None and name in dsn:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _child(dsn: str, seconds: int, out: Path) -> None:
    from plantstream.access import Tier
    from plantstream.datasets.models import Requester, validate_request
    from plantstream.datasets.pull import pull

    req = validate_request(
        {
            "plant": "bench",
            "start": T0,
            "end": T0 + timedelta(seconds=seconds),
            "interval": "1s",
            "gap": {"rule": "locf", "max_gap": "5s"},
        }
    )
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
            }
        )
    )


if __name__ == "__main__":
    main()
