"""Sink throughput against the floor PostgreSQL allows: ``python -m plantstream.bench.sink``.

Two timings over the same readings in the same database and run:

* ``sink``: the sink's whole write path from encoded Kafka record values: decode, tag/lot
  registration, binary COPY straight into the (partitioned or hyper-) ``readings`` table with its
  primary key and BRIN index (staging + ``INSERT ... ON CONFLICT`` only after a key conflict),
  COMMIT.
* ``copy``: a raw binary COPY of the finished rows (pre-built Python tuples) into a plain table
  with no index - the fastest a Python client can put these rows into PostgreSQL.

``ratio = sink / copy``. The product target (sink >= 0.6 x binary COPY into ``readings``) is judged
by ``plantstream bench``, which alternates :func:`sink_rate` with that COPY.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from plantstream.bench import copyload
from plantstream.contract import now_us
from plantstream.producers import codec
from plantstream.sinks.base import RecordOrigin, decode
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.testing.sinks import messages, readings


@dataclass(frozen=True, slots=True)
class BenchResult:
    rows: int
    sink_rows_per_s: float
    copy_rows_per_s: float
    ratio: float
    flushes: int
    rows_per_flush: int


def _messages(rows: int, tags: int, per_message: int) -> list[bytes]:
    # Unique equipment per run so repeated runs measure inserts, not conflicts.
    eq = f"bench/site/area/line/u{now_us() % 10**9}"
    rs = readings(rows, tags=tags, equipment=eq, t0=now_us() - rows * 100, step_us=100)
    return messages(rs, per_message)


def _time_sink(dsn: str, raw: list[bytes], per_message: int, rows_per_flush: int) -> tuple[float, int]:
    """(seconds, flushes) for the sink to write ``raw``, flushing every ``rows_per_flush`` rows."""
    sink = PostgresSink(dsn)
    sink.connect()
    flushes = 0
    t0 = time.perf_counter()
    staged = 0
    for i, value in enumerate(raw):
        sink.write([decode("readings", value, RecordOrigin("bench", 0, i))])
        staged += per_message
        if staged >= rows_per_flush:
            assert sink.flush() == []
            flushes += 1
            staged = 0
    if staged:
        assert sink.flush() == []
        flushes += 1
    seconds = time.perf_counter() - t0
    sink.close()
    return seconds, flushes


def sink_rate(
    dsn: str, rows: int = 500_000, tags: int = 200, per_message: int = 1000, rows_per_flush: int = 50_000
) -> tuple[float, int]:
    """(rows/s, flushes) of the sink alone on ``dsn`` (migrated first; the rows stay in ``readings``)."""
    migrate(dsn)
    seconds, flushes = _time_sink(dsn, _messages(rows, tags, per_message), per_message, rows_per_flush)
    return rows / seconds, flushes


def measure(
    dsn: str, rows: int = 500_000, tags: int = 200, per_message: int = 1000, rows_per_flush: int = 50_000
) -> BenchResult:
    """Run both timings on ``dsn`` (migrated first; the bench's rows stay in ``readings``)."""
    migrate(dsn)
    raw = _messages(rows, tags, per_message)
    sink_s, flushes = _time_sink(dsn, raw, per_message, rows_per_flush)

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    tuples = []
    for m in raw:
        b = codec.decode_readings(m)
        for i in range(len(b)):
            tuples.append(
                copyload.row(
                    time=epoch + timedelta(microseconds=b.ts_us[i]),
                    tag_id=i % tags,
                    v_float=b.value[i],
                    quality=b.quality[i],
                    status_code=b.status_code[i],
                    seq=b.seq[i],
                )
            )
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_copy (time timestamptz, tag_id integer, v_float double precision, v_int bigint, "
            "v_bool boolean, v_text text, quality smallint, status_code bigint, lot_id integer, "
            "server_time timestamptz, seq bigint)"
        )
        conn.commit()
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for start in range(0, len(tuples), rows_per_flush):
                with cur.copy(f"COPY bench_copy ({', '.join(copyload.COLUMNS)}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(list(copyload.TYPES.values()))
                    for row in tuples[start : start + rows_per_flush]:
                        cp.write_row(row)
                conn.commit()
        copy_s = time.perf_counter() - t0
    sink_per_s, copy_per_s = rows / sink_s, rows / copy_s
    return BenchResult(
        rows, round(sink_per_s), round(copy_per_s), round(sink_per_s / copy_per_s, 3), flushes, rows_per_flush
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", help="database (default: PLANTSTREAM_DB_DSN / local stack)")
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--tags", type=int, default=200)
    args = ap.parse_args()
    from plantstream.config import Settings

    dsn = args.dsn or Settings.from_env().dsn
    print(json.dumps(asdict(measure(dsn, args.rows, args.tags))))


if __name__ == "__main__":
    main()
