"""History-query latency on a large readings table: "1 h of 50 tags at 1 s" (issue: storage).

Loads ``rows`` readings of 50 tags at 1 Hz into a fresh database with binary COPY (the datasets
benchmark's loader), then times the monitor's downsampling query (``queries.history``) for one
hour of every tag at 1 s buckets, at random hours, cold-ish and warm. Prints JSON.

    python -m plantstream.sinks.timescaledb.bench_history --rows 50000000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from plantstream.config import Settings
from plantstream.datasets.bench import load
from plantstream.sinks.timescaledb.queries import history

TAGS = 50


def measure(dsn: str, seconds: int, repeats: int = 5, seed: int = 1) -> dict[str, float]:
    rng = random.Random(seed)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT min(time), max(time), count(*) FROM readings").fetchone()
        assert row is not None
        t_min, t_max, n = row
        span = (t_max - t_min).total_seconds()
        per_hour: list[float] = []
        for _ in range(repeats):
            start = t_min + timedelta(seconds=rng.uniform(0, max(0.0, span - 3600)))
            t0 = time.perf_counter()
            points = 0
            for i in range(1, TAGS + 1):
                points += len(
                    history(conn, "bench", f"tag{i:04d}", start, start + timedelta(hours=1), timedelta(seconds=1))
                )
            per_hour.append(time.perf_counter() - t0)
        assert points > 0, "the query returned nothing: loader and query disagree"
    return {
        "rows": float(n),
        "points_last": float(points),
        "latency_s_median": statistics.median(per_hour),
        "latency_s_min": min(per_hour),
        "latency_s_max": max(per_hour),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the database")
    args = ap.parse_args()
    settings = Settings.from_env()
    name = f"pshist_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(settings.dsn, dbname=name)
    try:
        seconds = max(3600, args.rows // TAGS)
        t0 = time.perf_counter()
        timings = load(dsn, TAGS, seconds)
        out = {"load_s": time.perf_counter() - t0, **timings, **measure(dsn, seconds)}
        out["when"] = datetime.now(tz=UTC).isoformat(timespec="seconds")  # type: ignore[assignment]
        print(json.dumps(out, indent=2))
    finally:
        if not args.keep:
            with psycopg.connect(settings.dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
