"""History-query latency on a large readings table: "1 h of 50 tags at 1 s" (issue: storage).

Loads ``rows`` readings of 50 tags at 1 Hz into a fresh database with binary COPY (the datasets
benchmark's loader), then times ``queries.history_many`` (all 50 tags, one round trip) for one
hour at 1 s buckets at random hours: the first query of an hour (cold: not yet read by any
query; the OS page cache may still hold it after the load) and repeats (warm). For comparison:
the same 50 tags one query at a time with the former per-tag downsampling SQL
(``queries.history_sql``, 50 round trips), and a split of the one-call latency into server
execution, transfer and decoding, and the decoding alternatives. Prints JSON.

    python -m plantstream.bench.history --rows 50000000
    python -m plantstream.bench.history --dsn postgresql://...  # loaded already
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import Buffer, Loader

from plantstream.bench.pull import load
from plantstream.config import Settings
from plantstream.monitor import queries as Q

TAGS = 50
WIDTH = timedelta(seconds=1)
NAMES = [f"tag{i:04d}" for i in range(1, TAGS + 1)]


def _stats(xs: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in xs]
    return {"median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1), "max_ms": round(max(ms), 1)}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


class _KeepBytes(Loader):
    format = pq.Format.BINARY

    def load(self, data: Buffer) -> Any:
        return bytes(data)


# Column types of history_many_sql's rows: i, raw, time[], count[], quality/bad[], 4 x float8[].
_OIDS = (None, None, 1185, 1016, 1016, 1022, 1022, 1022, 1022)
_LOADERS = {oid: cls(oid) for oid, cls in Q._ARRAY_LOADERS.items()}


def _decode(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """What history_many's loaders do to the array bytes."""
    return [
        [_LOADERS[o].load(v) if o is not None and v is not None else v for o, v in zip(_OIDS, r, strict=True)]
        for r in rows
    ]


def _params(start: datetime) -> dict[str, Any]:
    end = start + timedelta(hours=1)
    return {
        "plant": "bench",
        "tags": NAMES,
        "start": start,
        "end": end,
        "width": WIDTH,
        "nb": Q.bucket_count(start, end, WIDTH),
        "good_only": False,
    }


def measure(dsn: str, hours: int = 7, warm_repeats: int = 5, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT min(time), max(time), count(*) FROM readings").fetchone()
        assert row is not None
        t_min, t_max, n = row
        span = (t_max - t_min).total_seconds()
        # Whole seconds: a random start would put every reading 1 s-bucket-aligned anyway.
        starts = [t_min + timedelta(seconds=rng.randrange(0, max(1, int(span) - 3600))) for _ in range(hours)]
        sql = Q.history_many_sql(Q.flavor(conn))
        cold, warm, legacy, server, bytes_only, decode, lists = [], [], [], [], [], [], []
        points = 0
        for start in starts:
            end = start + timedelta(hours=1)
            dt, res = _timed(lambda: Q.history_many(conn, "bench", NAMES, start, end, WIDTH))  # noqa: B023
            cold.append(dt)
            points = sum(len(s) for s in res.values())
            assert len(res) == TAGS and points > 0, "loader and query disagree"
            assert all(s.raw and len(s) == 3600 for s in res.values()), "1 Hz over 1 h at 1 s: raw, 3600 points"
            for _ in range(warm_repeats):
                warm.append(_timed(lambda: Q.history_many(conn, "bench", NAMES, start, end, WIDTH))[0])  # noqa: B023
            # Server execution only (EXPLAIN ANALYZE without per-node timing).
            ex = [str(r[0]) for r in conn.execute("EXPLAIN (ANALYZE, TIMING OFF) " + sql, _params(start))]
            server.append(float(next(x for x in ex if x.startswith("Execution Time")).split()[2]) / 1000)
            # Server + transfer: arrays kept as bytes; then decoding them alone.
            with conn.cursor(binary=True) as cur:
                for oid in Q._ARRAY_LOADERS:
                    cur.adapters.register_loader(oid, _KeepBytes)
                dt, rows = _timed(lambda: cur.execute(sql, _params(start)).fetchall())  # noqa: B023
                bytes_only.append(dt)
            decode.append(_timed(lambda: _decode(rows))[0])  # noqa: B023
            # Alternative: psycopg's own binary loaders (Python lists of datetime / float).
            with conn.cursor(binary=True) as cur:
                lists.append(_timed(lambda: cur.execute(sql, _params(start)).fetchall())[0])  # noqa: B023
            # Before: one downsampling query per tag, 50 round trips (the former history()).
            per_tag = Q.history_sql(Q.flavor(conn))
            t = time.perf_counter()
            for name in NAMES:
                conn.execute(
                    per_tag,
                    {"plant": "bench", "tag": name, "start": start, "end": end, "bucket": WIDTH, "good_only": False},
                ).fetchall()
            legacy.append(time.perf_counter() - t)
    return {
        "rows": n,
        "points_per_query": points,
        "hours_sampled": hours,
        "history_many_cold": _stats(cold),
        "history_many_warm": _stats(warm),
        "split_warm": {
            "server_execution": _stats(server),
            "server_plus_transfer_bytes": _stats(bytes_only),
            "decode_numpy": _stats(decode),
        },
        "alt_psycopg_list_loaders_warm": _stats(lists),
        "per_tag_sequential_legacy_sql": _stats(legacy),
    }


# Sizes for `plantstream bench`: a 5M-reading table in the full run (the 50M-row figure in the
# README is measured by hand with --rows 50000000), just over an hour of 50 tags in --quick.
QUICK_SECONDS = 4_000
FULL_SECONDS = 100_000


def run(dsn: str, quick: bool = False) -> dict[str, Any]:
    """The `plantstream bench` entry point: load ``dsn`` (fresh; migrated by the loader) with 50
    tags at 1 Hz and measure "1 h of 50 tags at 1 s" (raw readings) on it."""
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    t0 = time.perf_counter()
    timings = load(dsn, TAGS, seconds)
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 1), **timings}
    with psycopg.connect(dsn) as conn:
        out["flavor"] = Q.flavor(conn)
    return out | measure(dsn, hours=2 if quick else 7, warm_repeats=2 if quick else 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--hours", type=int, default=7, help="random hours to query")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument("--dsn", default=None, help="measure this already loaded database (no load, no drop)")
    args = ap.parse_args()
    if args.dsn:
        print(json.dumps(measure(args.dsn, args.hours), indent=2))
        return
    settings = Settings.from_env()
    name = f"pshist_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(settings.dsn, dbname=name)
    try:
        seconds = max(3600, args.rows // TAGS)
        t0 = time.perf_counter()
        timings = load(dsn, TAGS, seconds)
        load_s = time.perf_counter() - t0
        out: dict[str, Any] = {
            "load_s": round(load_s, 1),
            **timings,
            "load_rows_per_s": round(seconds * TAGS / load_s),
            "copy_rows_per_s": round(seconds * TAGS / timings["copy_s"]),
        }
        out |= measure(dsn, args.hours)
        out["when"] = datetime.now(tz=UTC).isoformat(timespec="seconds")
        print(json.dumps(out, indent=2))
    finally:
        if not args.keep:
            with psycopg.connect(settings.dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
