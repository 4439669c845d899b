"""TimescaleDB's own strengths, measured for ``plantstream bench`` (issue 14).

* :func:`engine`: what the database server is (TimescaleDB and its version, or plain PostgreSQL
  and why not TimescaleDB), recorded in every bench report.
* :func:`compression`: a day of demo-like readings (float tags at 1 Hz as the simulators' analog
  model makes them: base + white noise + slow wander, 2 decimals; plus int counters and bool
  states) loaded into the ``readings`` hypertable, its bytes (``hypertable_detailed_size``)
  before and after its chunks older than the compression policy's ``compress_after`` are
  compressed, as the policy job does; per-chunk ``chunk_compression_stats`` beside them.
* :func:`cagg_history`: 30 days of 1-minute aggregates of 50 tags, the hourly continuous aggregate
  refreshed over them, then 50 tags x 30 days at 1 h buckets read from ``aggregates_1h`` in one
  round trip (the shape of ``queries.history_many``), timed; the plan shows what answered.

The bench's data lies at a fixed date years back (runs compare); the background policies of a
scratch database (retention 90 days, compression after 3 days) would drop or compress it while
it is measured, so :func:`pause_policies` unschedules them and the bench runs them itself.

    python -m plantstream.bench.timescale --what compression
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from plantstream.bench import copyload
from plantstream.bench.copyload import T0, T0_US
from plantstream.monitor import queries as Q
from plantstream.sinks.timescaledb.migrate import available_flavor, migrate

POLICY_PROCS = ("policy_compression", "policy_retention", "policy_refresh_continuous_aggregate")


@dataclass(frozen=True, slots=True)
class Engine:
    name: str  # "timescaledb" | "postgresql"
    version: str  # TimescaleDB's version when name is timescaledb, else PostgreSQL's
    postgres: str
    reason: str  # why the TimescaleDB stages do not apply ("" when they do)

    @property
    def timescale(self) -> bool:
        return self.name == "timescaledb"

    @property
    def text(self) -> str:
        if self.timescale:
            return f"TimescaleDB {self.version} on PostgreSQL {self.postgres}"
        return f"plain PostgreSQL {self.postgres} ({self.reason})"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


def engine(dsn: str) -> Engine:
    """The server behind ``dsn``: TimescaleDB when the extension is installed and preloaded (the
    condition under which ``migrate`` picks the timescale flavor), else plain PostgreSQL."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg = str(row[0]).split()[0] if row else "?"
        row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        installed = str(row[0]) if row else None
        if installed is not None and available_flavor(conn) == "timescale":
            return Engine("timescaledb", installed, pg, "")
        preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    if installed is None:
        reason = "TimescaleDB is not installed on this server"
    else:
        reason = (
            f"TimescaleDB {installed} is installed but this server does not preload it"
            f" (shared_preload_libraries = '{preload[0] if preload else ''}')"
        )
    return Engine("postgresql", pg, pg, reason)


def require_timescale(conn: psycopg.Connection[Any]) -> None:
    """A migrated database of the timescale flavor, or ``RuntimeError`` saying what it is."""
    f = Q.flavor(conn)
    if f != "timescale":
        raise RuntimeError(f"database migrated with the {f} flavor; the TimescaleDB stages need the timescale one")


def pause_policies(conn: psycopg.Connection[Any]) -> list[int]:
    """Unschedule the compression, retention and refresh policies (see the module docstring);
    returns their job ids. No-op on plain PostgreSQL."""
    if Q.flavor(conn) != "timescale":
        return []
    rows = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = ANY(%s)", (list(POLICY_PROCS),)
    ).fetchall()
    for (job,) in rows:
        conn.execute("SELECT alter_job(%s, scheduled => false)", (job,))
    return [int(j) for (j,) in rows]


def compress_as_policy(conn: psycopg.Connection[Any], table: str = "readings") -> dict[str, Any]:
    """Compress the chunks of ``table`` older than its compression policy's ``compress_after``,
    one chunk per transaction like the policy job; returns the policy and per-chunk seconds."""
    row = conn.execute(
        "SELECT job_id, config->>'compress_after' FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_compression' AND hypertable_name = %s",
        (table,),
    ).fetchone()
    if row is None:
        raise RuntimeError(f"{table} has no compression policy")
    job, after = int(row[0]), str(row[1])
    chunks = [
        str(r[0])
        for r in conn.execute("SELECT show_chunks(%s::regclass, older_than => %s::interval)", (table, after)).fetchall()
    ]
    seconds: list[float] = []
    for c in chunks:
        t = time.perf_counter()
        with conn.transaction():
            conn.execute("SELECT compress_chunk(%s::regclass, if_not_compressed => true)", (c,))
        seconds.append(round(time.perf_counter() - t, 2))
    return {"job_id": job, "compress_after": after, "chunks": chunks, "chunk_seconds": seconds}


# --- demo-like readings (loaded by bench.copyload, as the datasets bench's, with int and bool columns) ---


def demo_values(kind: str, tag_index: npt.NDArray[np.int64], s: npt.NDArray[np.int64], seed: int = 7) -> Any:
    """Demo-like values of tag ``tag_index[k]`` at second ``s[k]``, deterministic per (seed, first
    second). float: the simulators' analog model (base + white noise + slow wander, rounded to
    2 decimals); int: a counter stepping every few seconds; bool: a state flipping every ~10 min."""
    if kind == "float":
        rng = np.random.default_rng([seed, int(s[0]) if s.size else 0])
        base = 20.0 + 37.0 * tag_index
        noise = 0.002 * base * rng.standard_normal(s.size)
        wander = 0.01 * base * np.sin(2 * np.pi * s / (1800.0 + 97.0 * tag_index) + tag_index)
        return np.round(base + noise + wander, 2)
    if kind == "int":
        return (s // (3 + tag_index % 5)).astype(np.int64)
    return ((s // (600 + 13 * tag_index)) % 2).astype(np.int8)


def load_demo_day(
    dsn: str, floats: int = 50, ints: int = 3, bools: int = 2, seconds: int = 86_400, lot_s: int = 600
) -> dict[str, Any]:
    """Tags and ``seconds`` of 1 Hz readings per tag from T0 into the migrated ``dsn``; time-major
    blocks of ~1M readings like live data. Returns counts and the load's seconds."""
    kinds = ["float"] * floats + ["int"] * ints + ["bool"] * bools
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO equipment (plant, path, name, level) VALUES ('bench', 'bench', 'bench', 'enterprise')"
        )
        for i, k in enumerate(kinds, 1):
            conn.execute(
                "INSERT INTO tags (plant, tag, equipment_id, unit, datatype, grade) VALUES"
                " ('bench', %s, 1, %s, %s, 'general')",
                (f"tag{i:04d}", "degC" if k == "float" else "", k),
            )
        conn.execute(
            "INSERT INTO lots (plant, lot, kind) SELECT 'bench', 'L' || lpad(i::text, 6, '0'), 'batch'"
            " FROM generate_series(0, %s) i",
            (seconds // lot_s,),
        )
        conn.execute("SELECT ps_ensure_partitions('readings', %s, %s)", (T0, T0 + timedelta(seconds=seconds + 1)))
        tag_ids = np.array([r[0] for r in conn.execute("SELECT id FROM tags ORDER BY tag")], np.int32)
        lot_ids = np.array([r[0] for r in conn.execute("SELECT id FROM lots ORDER BY lot")], np.int32)
    col = {"float": "v_float", "int": "v_int", "bool": "v_bool"}
    step = max(1, 1_000_000 // len(kinds))
    t = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True, options="-c synchronous_commit=off") as conn:
        for lo in range(0, seconds, step):
            hi = min(seconds, lo + step)
            for kind in ("float", "int", "bool"):
                idx = np.array([i for i, k in enumerate(kinds) if k == kind], np.int64)
                if not idx.size:
                    continue
                s = np.repeat(np.arange(lo, hi, dtype=np.int64), idx.size)
                ti = np.tile(idx, hi - lo)
                copyload.write(
                    conn,
                    {
                        "time": T0_US + s * 1_000_000,
                        "tag_id": tag_ids[ti],
                        col[kind]: demo_values(kind, ti, s),
                        "quality": 0,
                        "lot_id": lot_ids[s // lot_s],
                        "seq": s,
                    },
                )
    load_s = time.perf_counter() - t
    return {"floats": floats, "ints": ints, "bools": bools, "seconds": seconds,
            "readings": len(kinds) * seconds, "load_s": round(load_s, 1)}  # fmt: skip


def _detailed_size(conn: psycopg.Connection[Any], table: str) -> dict[str, int]:
    row = conn.execute(
        "SELECT table_bytes, index_bytes, toast_bytes, total_bytes FROM hypertable_detailed_size(%s::regclass)",
        (table,),
    ).fetchone()
    assert row is not None
    return {k: int(v or 0) for k, v in zip(("table", "index", "toast", "total"), row, strict=True)}


def compression(dsn: str, floats: int = 50, ints: int = 3, bools: int = 2, seconds: int = 86_400) -> dict[str, Any]:
    """Bytes of ``readings`` before and after the compression policy's work on a demo-like day
    (``dsn``: a fresh database; migrated here). ``ratio`` = total bytes before / after."""
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        require_timescale(conn)
        pause_policies(conn)
    loaded = load_demo_day(dsn, floats, ints, bools, seconds)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # As the table stands once autovacuum has visited it (visibility map, statistics).
        conn.execute("VACUUM ANALYZE readings")
        before = _detailed_size(conn, "readings")
        t = time.perf_counter()
        policy = compress_as_policy(conn, "readings")
        compress_s = time.perf_counter() - t
        after = _detailed_size(conn, "readings")
        stats = conn.execute(
            "SELECT chunk_name, compression_status, before_compression_total_bytes, after_compression_total_bytes"
            " FROM chunk_compression_stats('readings'::regclass) ORDER BY chunk_name"
        ).fetchall()
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
        assert row is not None
        rows_after = int(row[0])
    chunks: list[dict[str, Any]] = [
        {"chunk": str(c), "status": str(st), "before_bytes": int(b or 0), "after_bytes": int(a or 0)}
        for c, st, b, a in stats
    ]
    cb = sum(int(c["before_bytes"]) for c in chunks)
    ca = sum(int(c["after_bytes"]) for c in chunks)
    return {
        **loaded,
        "rows_after": rows_after,
        "before_bytes": before["total"],
        "after_bytes": after["total"],
        "ratio": round(before["total"] / after["total"], 2) if after["total"] else None,
        "before": before,
        "after": after,
        "bytes_per_reading_before": round(before["total"] / loaded["readings"], 1),
        "bytes_per_reading_after": round(after["total"] / loaded["readings"], 2),
        "chunks": chunks,
        "chunk_stats_ratio": round(cb / ca, 2) if ca else None,
        "compressed_chunks": sum(1 for c in chunks if c["status"] == "Compressed"),
        "compress_s": round(compress_s, 1),
        "policy": policy,
    }


# --- history over the hourly continuous aggregate ---------------------------------------------

CAGG_HISTORY_SQL = """SELECT k.i::int,
           array_agg(a.start ORDER BY a.start), array_agg(a.count ORDER BY a.start),
           array_agg(a.bad_count ORDER BY a.start),
           array_agg(COALESCE(a.min, 'NaN') ORDER BY a.start), array_agg(COALESCE(a.max, 'NaN') ORDER BY a.start),
           array_agg(COALESCE(a.mean, 'NaN') ORDER BY a.start), array_agg(COALESCE(a.last, 'NaN') ORDER BY a.start)
    FROM unnest(%(tags)s::text[]) WITH ORDINALITY AS k(tag, i)
    JOIN tags t ON t.plant = %(plant)s AND t.tag = k.tag
    JOIN aggregates_1h a ON a.tag_id = t.id AND a.start >= %(start)s AND a.start < %(end)s
    GROUP BY k.i"""


def history_from_hourly(
    conn: psycopg.Connection[Any], plant: str, tags: list[str], start: datetime, end: datetime
) -> dict[str, Q.Series]:
    """Hourly buckets of ``tags`` over [start, end) from ``aggregates_1h`` (the continuous
    aggregate on TimescaleDB, a view over aggregates_1m on plain PostgreSQL), one round trip,
    as ``queries.history_many`` returns buckets. Tags without buckets are left out."""
    with conn.cursor(binary=True) as cur:
        for oid, loader in Q._ARRAY_LOADERS.items():
            cur.adapters.register_loader(oid, loader)
        cur.execute(CAGG_HISTORY_SQL, {"plant": plant, "tags": tags, "start": start, "end": end})
        rows = cur.fetchall()
    return {tags[i - 1]: Q.Series(tags[i - 1], False, t, n, bad, mn, mx, mean, last)
            for i, t, n, bad, mn, mx, mean, last in rows}  # fmt: skip


def load_minute_aggregates(dsn: str, tags: int, days: int, end: datetime = T0) -> dict[str, Any]:
    """``tags`` x ``days`` of 1-minute aggregates ending at ``end`` (what the sink writes from the
    streams' 1 min windows of 1 Hz readings: count 60), then the hourly aggregate refreshed."""
    start = end - timedelta(days=days)
    with psycopg.connect(dsn, autocommit=True) as conn:
        pause_policies(conn)
        conn.execute(
            "INSERT INTO equipment (plant, path, name, level) VALUES ('bench', 'bench', 'bench', 'enterprise')"
        )
        conn.execute(
            "INSERT INTO tags (plant, tag, equipment_id, unit, datatype, grade) "
            "SELECT 'bench', 'tag' || lpad(i::text, 4, '0'), 1, 'degC', 'float', 'general' FROM generate_series(1, %s) i",
            (tags,),
        )
        conn.execute("SELECT ps_ensure_partitions('aggregates_1m', %s, %s)", (start, end))
        t = time.perf_counter()
        conn.execute(
            """INSERT INTO aggregates_1m (tag_id, start, count, bad_count, min, max, mean, last)
               SELECT t.id, m, 60, 0, v - 1, v + 1, v, v + 0.5
               FROM tags t, generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 minute',
                                            interval '1 minute') m,
                    LATERAL (SELECT 100 + t.id + 10 * sin(extract(epoch FROM m) / 3600.0) AS v) x""",
            {"start": start, "end": end},
        )
        insert_s = time.perf_counter() - t
        t = time.perf_counter()
        if Q.flavor(conn) == "timescale":
            conn.execute("CALL refresh_continuous_aggregate('aggregates_1h', %s, %s)", (start, end))
        refresh_s = time.perf_counter() - t
        conn.execute("VACUUM ANALYZE aggregates_1m")
        row = conn.execute("SELECT count(*) FROM aggregates_1m").fetchone()
        assert row is not None
    return {"tags": tags, "days": days, "minute_rows": int(row[0]), "insert_s": round(insert_s, 1),
            "refresh_s": round(refresh_s, 1), "start": start.isoformat(), "end": end.isoformat()}  # fmt: skip


def served_from(conn: psycopg.Connection[Any], params: dict[str, Any]) -> tuple[str, list[str]]:
    """What the plan of the hourly history reads: ``aggregates_1h materialization`` when only
    TimescaleDB's materialized hypertable (its chunks are named _hyper_<id>_<n>_chunk), with
    ``+ aggregates_1m`` when the continuous aggregate's real-time part also aggregates minute
    rows; ``aggregates_1m`` on plain PostgreSQL (a view over the minute rows)."""
    plan = [str(r[0]) for r in conn.execute("EXPLAIN (COSTS OFF) " + CAGG_HISTORY_SQL, params)]
    text = "\n".join(plan)
    if Q.flavor(conn) != "timescale":
        return "aggregates_1m", plan
    row = conn.execute(
        """SELECT h.id, m.id FROM _timescaledb_catalog.hypertable h, _timescaledb_catalog.hypertable m,
                  timescaledb_information.continuous_aggregates c
           WHERE h.table_name = 'aggregates_1m' AND c.view_name = 'aggregates_1h'
             AND m.table_name = c.materialization_hypertable_name"""
    ).fetchone()
    assert row is not None, "aggregates_1h is not a continuous aggregate"
    src, mat = row
    reads_mat = f"_hyper_{mat}_" in text or f"_materialized_hypertable_{mat}" in text
    reads_src = f"_hyper_{src}_" in text or "aggregates_1m" in text
    if reads_mat:
        return "aggregates_1h materialization" + (" + aggregates_1m" if reads_src else ""), plan
    return ("aggregates_1m" if reads_src else "unknown"), plan


def cagg_history(dsn: str, tags: int = 50, days: int = 30, repeats: int = 7) -> dict[str, Any]:
    """``dsn``: a fresh database (migrated here). Median latency of :func:`history_from_hourly`
    for all ``tags`` over the ``days`` loaded (first call reported apart: cold)."""
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        require_timescale(conn)
    loaded = load_minute_aggregates(dsn, tags, days)
    names = [f"tag{i:04d}" for i in range(1, tags + 1)]
    start, end = T0 - timedelta(days=days), T0
    params = {"plant": "bench", "tags": names, "start": start, "end": end}
    with psycopg.connect(dsn, autocommit=True) as conn:
        src, plan = served_from(conn, params)
        times: list[float] = []
        res: dict[str, Q.Series] = {}
        for _ in range(repeats + 1):
            t = time.perf_counter()
            res = history_from_hourly(conn, "bench", names, start, end)
            times.append(time.perf_counter() - t)
        ex = [str(r[0]) for r in conn.execute("EXPLAIN (ANALYZE, TIMING OFF) " + CAGG_HISTORY_SQL, params)]
        server_ms = float(next(x for x in ex if x.startswith("Execution Time")).split()[2])
    points = sum(len(s) for s in res.values())
    return {
        **loaded,
        "served_from": src,
        "plan": plan,
        "tags_answered": len(res),
        "points": points,
        "expected_points": tags * days * 24,
        "counts_match": all(int(s.count.sum()) == days * 24 * 60 * 60 for s in res.values()),
        "cold_ms": round(times[0] * 1000, 1),
        "median_ms": round(statistics.median(times[1:]) * 1000, 1),
        "max_ms": round(max(times[1:]) * 1000, 1),
        "server_execution_ms": round(server_ms, 1),
    }


def _scratch(admin: str) -> tuple[str, str]:
    name = f"psbench_ts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, psycopg.conninfo.make_conninfo(admin, dbname=name)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--what", choices=("engine", "compression", "cagg"), default="engine")
    ap.add_argument("--seconds", type=int, default=86_400, help="compression: seconds of 1 Hz readings")
    ap.add_argument("--tags", type=int, default=50)
    ap.add_argument("--days", type=int, default=30, help="cagg: days of aggregates")
    args = ap.parse_args()
    from plantstream.config import Settings

    admin = Settings.from_env().dsn
    if args.what == "engine":
        print(json.dumps(engine(admin).to_json()))
        return
    name, dsn = _scratch(admin)
    try:
        if args.what == "compression":
            out = compression(dsn, floats=args.tags, seconds=args.seconds)
        else:
            out = cagg_history(dsn, args.tags, args.days)
        out["when"] = datetime.now(tz=UTC).isoformat(timespec="seconds")
        print(json.dumps(out, indent=1))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
