"""One bench run: machine limits, each stage alone, end to end at stepped rates, memory; then the report.

Every measurement is isolated (its own topics prefix, a throwaway database) and guarded: one that
fails is reported as ``failed`` with its error and the others still run. Everything the bench
starts is stopped before it returns.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from plantstream.bench import limits, stages
from plantstream.bench.e2e import E2EConfig, E2EResult, EndToEnd
from plantstream.bench.infra import fresh_database
from plantstream.bench.model import TARGETS, Metric, fmt_num
from plantstream.bench.procs import cpu_share, cpu_times, self_peak_rss_mb
from plantstream.bench.report import markdown, plots, write_json
from plantstream.bench.timescale import Engine, engine
from plantstream.config import Settings
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.testing.plugin import free_port

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sizes:
    pg_rows: int
    kafka_batches: int
    mqtt_msgs: int
    opcua_tags: int
    load_processes: int  # OPC-UA servers / MQTT publishers feeding a limit or an edge stage
    opcua_s: float
    edge_s: float
    edge_warmup_s: float
    streams_readings: int
    sink_rows: int
    e2e: E2EConfig
    profile_s: float
    mqtt_per_message: int = 20  # readings per message in the MQTT edge stage (JSON arrays)
    # TimescaleDB stages (issue 14): the compression day (float tags at 1 Hz, seconds) and the
    # 30 days of minute aggregates the hourly history is served from.
    ts_floats: int = 50
    ts_seconds: int = 86_400
    cagg_tags: int = 50
    cagg_days: int = 30


QUICK = Sizes(
    pg_rows=20_000,
    kafka_batches=200,
    mqtt_msgs=3_000,
    opcua_tags=100,
    load_processes=1,
    opcua_s=2.0,
    edge_s=3.0,
    edge_warmup_s=1.5,
    streams_readings=50_000,
    sink_rows=20_000,
    e2e=E2EConfig(
        plants=("steel",),
        steps_hz=(10,),
        logger_steps=(2_000,),
        step_s=5.0,
        settle_s=1.0,
        first_rows_timeout_s=100,
        drain_readings=50_000,
    ),
    profile_s=0.0,
    ts_floats=10,
    ts_seconds=3_600,
    cagg_tags=10,
)
FULL = Sizes(
    pg_rows=500_000,
    kafka_batches=3_000,
    mqtt_msgs=100_000,
    opcua_tags=200,
    load_processes=2,
    opcua_s=8.0,
    edge_s=12.0,
    edge_warmup_s=3.0,
    streams_readings=1_000_000,
    sink_rows=500_000,
    e2e=E2EConfig(step_s=20.0, settle_s=4.0, profile_s=8.0),
    profile_s=8.0,
)


@dataclass
class Run:
    settings: Settings
    out: Path
    quick: bool
    engine: Engine | None = None
    metrics: list[Metric] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=lambda: {"stage_rates": {}})
    peaks: dict[str, float] = field(default_factory=dict)

    def add(self, m: Metric) -> Metric:
        if m.target is None:
            m.target = TARGETS.get(m.name)
        self.metrics.append(m)
        return m

    def get(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def limit(self, name: str) -> tuple[float | None, str]:
        m = self.get(name)
        return (m.value, name) if m is not None and m.status == "ok" else (None, "")

    def guard(self, names: list[tuple[str, str, str]], fn: Callable[[], None]) -> None:
        """Run one measurement; on failure report each of its metrics (name, group, unit) as failed."""
        t = time.monotonic()
        try:
            fn()
        except Exception as exc:
            log.error("bench measurement failed", extra={"kv": {"metrics": [n for n, _, _ in names],
                                                                  "error": repr(exc)}})  # fmt: skip
            self.data.setdefault("errors", {})[names[0][0]] = traceback.format_exc()
            for name, group, unit in names:
                if self.get(name) is None:
                    self.add(Metric(name, group, None, unit, status="failed", note=f"failed: {exc}"[:300]))
        log.info("bench measured", extra={"kv": {"what": names[0][0], "s": round(time.monotonic() - t, 1)}})


def _top(frames: list[tuple[str, float]], n: int = 3) -> str:
    return "; ".join(f"{f} {share:.0%}" for f, share in frames[:n])


def run(settings: Settings, out: Path, quick: bool, sizes: Sizes | None = None) -> Run:
    sz = sizes or (QUICK if quick else FULL)
    out.mkdir(parents=True, exist_ok=True)
    r = Run(settings, out, quick)
    started = datetime.now(UTC)
    meta: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cores": os.cpu_count(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpu_times_start": cpu_times(),
        "python": platform.python_version(),
        "kafka": settings.kafka_bootstrap,
        "latency_method": (
            "the sink observes now - source timestamp right after each database commit for 1 reading in 16"
            " (histogram plantstream_sink_source_to_commit_seconds); the bench scrapes it every 0.5 s and"
            " interpolates quantiles of each step's observations inside the buckets (0.1-0.25 s wide below 2 s)."
            " Logger readings are stamped when published; simulator readings at their sample time"
        ),
    }
    r.engine = engine(settings.dsn)
    meta["database"] = r.engine.to_json()
    logdir = out / "logs"
    prefix = f"psb{uuid.uuid4().hex[:8]}"
    e2e_db = fresh_database(settings.dsn, "e2e")
    e2e_dsn = e2e_db.__enter__()
    e2e: EndToEnd | None = None
    e2e_started = False
    try:
        # Started after the stages, not during them: an idle streams worker, sink and broker
        # still poll each other (~13 % of a core here), which the stage measurements would pay.
        _limits(r, sz, prefix, logdir)
        _stages(r, sz, logdir)
        _history(r)
        _timescale(r, sz)
        e2e = EndToEnd(settings.model_copy(update={"db_dsn": SecretStr(e2e_dsn)}), out / "e2e", sz.e2e)

        def start_e2e() -> None:
            nonlocal e2e_started
            assert e2e is not None
            e2e.start_infra()
            e2e_started = True

        r.guard([("e2e.sustained_readings_per_s", "e2e", "readings/s")], start_e2e)
        if e2e_started:
            _end_to_end(r, e2e, sz)
    finally:
        if e2e is not None:
            e2e.stop()
        e2e_db.__exit__(None, None, None)
    _memory(r)
    meta["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    meta["cpu"] = cpu_share(meta.pop("cpu_times_start"), cpu_times())
    meta["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    _write(r, meta)
    return r


def _limits(r: Run, sz: Sizes, prefix: str, logdir: Path) -> None:
    s = r.settings

    def pg() -> None:
        with fresh_database(s.dsn, "copy") as dsn:
            migrate(dsn)
            res = limits.pg_copy(dsn, sz.pg_rows)
        r.data["pg_copy"] = res
        r.add(Metric("limit.pg_copy_plain", "limit", res["plain_rows_per_s"], "rows/s",
                     note=f"binary COPY, {res['rows']:.0f} rows, plain table without index"))  # fmt: skip
        shape = ("hypertable, primary key" if r.engine is not None and r.engine.timescale
                 else "partitioned, primary key, BRIN")  # fmt: skip
        r.add(Metric("limit.pg_copy_readings", "limit", res["readings_rows_per_s"], "rows/s",
                     note=f"binary COPY into readings ({shape}), fresh database"))  # fmt: skip

    r.guard([("limit.pg_copy_plain", "limit", "rows/s"), ("limit.pg_copy_readings", "limit", "rows/s")], pg)

    def kafka() -> None:
        res = limits.kafka(s.kafka_bootstrap, prefix, sz.kafka_batches)
        r.data["kafka"] = res
        note = f"{res['message_bytes']:.0f}-byte messages of 500 readings; = {fmt_num(res['produce_readings_per_s'])} readings/s"
        r.add(Metric("limit.kafka_produce", "limit", res["produce_msgs_per_s"], "msgs/s", note=note,
                     details={"readings_per_s": res["produce_readings_per_s"]}))  # fmt: skip
        r.add(Metric("limit.kafka_consume", "limit", res["consume_msgs_per_s"], "msgs/s",
                     note=f"= {fmt_num(res['consume_readings_per_s'])} readings/s (assign, from the beginning)",
                     details={"readings_per_s": res["consume_readings_per_s"]}))  # fmt: skip

    r.guard([("limit.kafka_produce", "limit", "msgs/s"), ("limit.kafka_consume", "limit", "msgs/s")], kafka)

    from urllib.parse import urlsplit

    url = urlsplit(s.mqtt)
    for qos in (0, 1):

        def mq(qos: int = qos) -> None:
            res = limits.mqtt(
                url.hostname or "127.0.0.1", url.port or 1883, qos, sz.mqtt_msgs, logdir, sz.load_processes
            )
            r.data[f"mqtt_qos{qos}"] = res
            r.add(Metric(f"limit.mqtt_qos{qos}", "limit", res["msgs_per_s"], "msgs/s",
                         note=f"{sz.load_processes} publisher process(es) -> Mosquitto -> one subscriber; {res['lost']:.0f} of {res['sent']:.0f} lost"))  # fmt: skip

        r.guard([(f"limit.mqtt_qos{qos}", "limit", "msgs/s")], mq)

    def opc() -> None:
        res = limits.opcua([free_port() for _ in range(sz.load_processes)], sz.opcua_tags, sz.opcua_s, logdir)
        r.data["opcua"] = res
        srv = res.get("server_writes_per_s")
        r.add(Metric("limit.opcua_notifications", "limit", res["notifications_per_s"], "notifications/s",
                     note=f"{sz.load_processes} asyncua server process(es) writing {fmt_num(srv)}/s -> one asyncua "
                          f"client, {sz.opcua_tags} items each, 100 ms publishing"))  # fmt: skip

    r.guard([("limit.opcua_notifications", "limit", "notifications/s")], opc)
    r.peaks.update(limits.peaks())


def _stages(r: Run, sz: Sizes, logdir: Path) -> None:
    s = r.settings
    work = r.out / "stages"

    def edge_opc() -> None:
        ports = [free_port() for _ in range(sz.load_processes)]
        res = stages.edge_opcua(s, work, ports, sz.opcua_tags, sz.edge_s, sz.edge_warmup_s, sz.profile_s)
        r.data["edge_opcua"] = res.to_json()
        r.series["stage_rates"]["edge OPC-UA"] = res.series
        lim, lname = r.limit("limit.opcua_notifications")
        m = r.add(Metric("edge.opcua_readings_per_s", "stage", res.readings_per_s, "readings/s", limit=lim,
                         limit_name=lname, details=res.to_json()))  # fmt: skip
        m.note = f"server offered {fmt_num(res.offered_per_s)}/s; agent CPU {fmt_num(res.edge_cpu_pct)}%"
        m.bound = _edge_bound("OPC-UA", res, lim)
        if res.edge_peak_mb:
            r.peaks["edge agent (OPC-UA stage)"] = res.edge_peak_mb

    r.guard([("edge.opcua_readings_per_s", "stage", "readings/s")], edge_opc)

    def edge_mq(per_message: int) -> None:
        single = per_message == 1
        res = stages.edge_mqtt(s, work, sz.edge_s, sz.edge_warmup_s, sz.load_processes,
                               profile_s=0.0 if single else sz.profile_s, per_message=per_message)  # fmt: skip
        name = "edge.mqtt_single_readings_per_s" if single else "edge.mqtt_readings_per_s"
        r.data["edge_mqtt_single" if single else "edge_mqtt"] = res.to_json()
        r.series["stage_rates"]["edge MQTT (1/msg)" if single else f"edge MQTT ({per_message}/msg)"] = res.series
        lim, lname = r.limit("limit.mqtt_qos1")
        if lim is not None and not single:
            # The broker limit is in messages/s; as readings it is that times the readings per message.
            lim, lname = lim * per_message, f"limit.mqtt_qos1 x {per_message} readings/msg"
        m = r.add(Metric(name, "stage", res.readings_per_s, "readings/s", limit=lim, limit_name=lname,
                         details=res.to_json()))  # fmt: skip
        m.note = (f"{per_message} reading(s) per QoS 1 message = {fmt_num(res.msgs_per_s)} msgs/s; publishers "
                  f"offered {fmt_num(res.offered_per_s)} readings/s; agent CPU {fmt_num(res.edge_cpu_pct)}%")  # fmt: skip
        m.bound = _edge_bound("MQTT", res, lim)
        if res.edge_peak_mb:
            r.peaks[f"edge agent (MQTT stage, {per_message}/msg)"] = res.edge_peak_mb

    per_msg = sz.mqtt_per_message
    r.guard([("edge.mqtt_readings_per_s", "stage", "readings/s")], lambda: edge_mq(per_msg))
    r.guard([("edge.mqtt_single_readings_per_s", "stage", "readings/s")], lambda: edge_mq(1))

    def streams() -> None:
        res = stages.streams(sz.streams_readings, profile_readings=0 if r.quick else 200_000)
        r.data["streams"] = {k: v for k, v in res.items() if k != "profile"}
        r.data["streams_profile"] = res.get("profile", "")
        kc = r.get("limit.kafka_consume")
        lim = kc.details.get("readings_per_s") if kc is not None and kc.status == "ok" else None
        m = r.add(Metric("streams.readings_per_s_per_worker", "stage", res["readings_per_s"], "readings/s",
                         limit=lim, limit_name="limit.kafka_consume (readings/s)" if lim else ""))  # fmt: skip
        m.note = (f"Processor only (decode, validate, units, dedup, lots, 1 s/1 min windows), one core, "
                  f"{res['readings']} readings; the Faust/Kafka path is covered end to end")  # fmt: skip
        m.bound = "streams Processor in pure Python: " + _cprofile_top(str(res.get("profile", "")))

    r.guard([("streams.readings_per_s_per_worker", "stage", "readings/s")], streams)

    def sink() -> None:
        with fresh_database(s.dsn, "sink") as dsn:
            migrate(dsn)
            res = stages.sink(dsn, sz.sink_rows, rounds=1 if r.quick else 3)
        r.data["sink"] = res
        lim = res["copy_readings_rows_per_s"]
        n = len(res["sink_rounds"])
        m = r.add(Metric("sink.readings_per_s", "stage", res["readings_per_s"], "readings/s", limit=lim,
                         limit_name=f"binary COPY into readings, alternated with the sink (median of {n})"))  # fmt: skip
        m.details = {"flavor": res.get("flavor")}
        m.note = (f"{'hypertable' if res.get('flavor') == 'timescale' else 'partitioned table'}: "
                  f"decode + tag registration + binary COPY straight into readings (staging + INSERT ON CONFLICT "
                  f"only after a key conflict), {res['rows_per_flush']} rows per transaction; rounds "
                  + ", ".join(f"{a / 1000:.0f}k vs {b / 1000:.0f}k" for a, b in zip(res["sink_rounds"], res["copy_rounds"], strict=True)))  # fmt: skip
        m.bound = ("sink: Python work per row (decode, tag and lot lookups, building the columns, encoding them for "
                   "binary COPY) on top of the same COPY the limit does")  # fmt: skip

    r.guard([("sink.readings_per_s", "stage", "readings/s")], sink)

    def dataset() -> None:
        with fresh_database(s.dsn, "ds") as dsn:
            migrate(dsn)
            res = stages.dataset(dsn, r.quick)
            if res is not None and r.engine is not None and r.engine.timescale:
                # Same data and request again, with the chunks compressed (the database is still there).
                done = res
                r.guard([(DS_COMPRESSED, "timescale", "cells/s")], lambda: _dataset_compressed(r, dsn, done))
        if res is None:
            r.add(Metric("dataset.cells_per_s", "stage", None, "cells/s", status="not_built",
                         note=f"plantstream.datasets provides no bench yet (expected: {stages.DATASET_API})"))  # fmt: skip
            return
        r.data["dataset"] = res
        lim = res.get("read_alone_rows_per_s")
        r.add(Metric("dataset.cells_per_s", "stage", float(res["cells_per_s"]), "cells/s",
                     limit=float(lim) if lim else None, limit_name="the pull's database read alone (readings/s)",
                     note=str(res.get("note", ""))))  # fmt: skip

    r.guard([("dataset.cells_per_s", "stage", "cells/s")], dataset)


DS_COMPRESSED = "timescale.dataset_compressed_cells_per_s"
TS_METRICS = [
    ("timescale.compression_ratio", "timescale", "x"),
    ("timescale.history_30d_cagg_ms", "timescale", "ms"),
    (DS_COMPRESSED, "timescale", "cells/s"),
]


def _dataset_compressed(r: Run, dsn: str, uncompressed: dict[str, Any]) -> None:
    from plantstream.bench.pull import compressed

    res = compressed(dsn, uncompressed, r.quick)
    r.data["dataset_compressed"] = res
    r.add(Metric(DS_COMPRESSED, "timescale", res["compressed_cells_per_s"], "cells/s",
                 limit=res["uncompressed_cells_per_s"], limit_name="the same pull on uncompressed chunks",
                 details={k: v for k, v in res.items() if k != "pull"},
                 note=f"{res['compressed_chunks']} of {res['chunks']} chunks compressed as the policy does (older than"
                      f" {res['compress_after']}, {res['compress_s']} s); same rows and cells:"
                      f" {'yes' if res['same_rows_and_cells'] else 'NO'}; same Parquet bytes:"
                      f" {'yes' if res['same_parquet_bytes'] else 'no'}"))  # fmt: skip


def _history(r: Run) -> None:
    """The monitor's "1 h of 50 tags at 1 s" from raw readings, on either engine."""

    def go() -> None:
        from plantstream.bench import history as bench_history

        with fresh_database(r.settings.dsn, "hist") as dsn:
            res = bench_history.run(dsn, r.quick)
        r.data["history_raw"] = res
        cold, warm = res["history_many_cold"], res["history_many_warm"]
        r.add(Metric("history.raw_1h_ms", "stage", cold["median_ms"], "ms",
                     details={"flavor": res["flavor"], "rows": res["rows"], "cold": cold, "warm": warm},
                     note=f"queries.history_many, 50 tags x 1 h at 1 s buckets = {res['points_per_query']:,} raw"
                          f" points, one round trip; median of the first query of {res['hours_sampled']} random hours"
                          f" of a {res['rows']:,}-reading table ({res['flavor']} flavor); warm repeats median"
                          f" {warm['median_ms']} ms; server execution {res['split_warm']['server_execution']['median_ms']} ms",
                     bound="history: server execution + transfer of 180k points"))  # fmt: skip

    r.guard([("history.raw_1h_ms", "stage", "ms")], go)


def _timescale(r: Run, sz: Sizes) -> None:
    """Compression and the continuous-aggregate history (the compressed dataset pull runs in the
    dataset stage); on plain PostgreSQL every TimescaleDB metric is reported not applicable."""
    eng = r.engine
    if eng is None or not eng.timescale:
        why = f"not applicable: {eng.text if eng else 'engine unknown'}"
        for name, group, unit in TS_METRICS:
            r.add(Metric(name, group, None, unit, status="not_applicable", note=why))
        return
    from plantstream.bench import timescale as bt

    def compression() -> None:
        with fresh_database(r.settings.dsn, "tscomp") as dsn:
            res = bt.compression(dsn, floats=sz.ts_floats, seconds=sz.ts_seconds)
        r.data["compression"] = res
        r.add(Metric("timescale.compression_ratio", "timescale", res["ratio"], "x",
                     details={k: res[k] for k in ("before_bytes", "after_bytes", "before", "after", "chunk_stats_ratio",
                                                  "compressed_chunks", "readings", "rows_after")},
                     note=f"readings hypertable (hypertable_detailed_size, table + indexes + toast) with a demo-like"
                          f" day: {res['floats']} float tags ({res['seconds']:,} s at 1 Hz, base + noise + wander, 2"
                          f" decimals), {res['ints']} int, {res['bools']} bool = {res['readings']:,} readings:"
                          f" {res['before_bytes'] / 2**20:.1f} MiB ({res['bytes_per_reading_before']} B/reading) ->"
                          f" {res['after_bytes'] / 2**20:.2f} MiB ({res['bytes_per_reading_after']} B/reading) after"
                          f" the compression policy's chunks (older than {res['policy']['compress_after']}) were"
                          f" compressed in {res['compress_s']} s; chunk_compression_stats: {res['chunk_stats_ratio']}x",
                     bound="compression: noisy float values (2 decimals) dominate the compressed bytes"))  # fmt: skip

    def cagg() -> None:
        with fresh_database(r.settings.dsn, "tscagg") as dsn:
            res = bt.cagg_history(dsn, sz.cagg_tags, sz.cagg_days)
        r.data["cagg_history"] = {k: v for k, v in res.items() if k != "plan"} | {"plan": res["plan"][:40]}
        r.add(Metric("timescale.history_30d_cagg_ms", "timescale", res["median_ms"], "ms",
                     details={k: res[k] for k in ("served_from", "tags_answered", "points", "expected_points",
                                                  "counts_match", "cold_ms", "server_execution_ms", "minute_rows")},
                     note=f"{res['tags']} tags x {res['days']} days at 1 h buckets ({res['points']:,} points, one round"
                          f" trip) from aggregates_1h, served from: {res['served_from']}; cold {res['cold_ms']} ms,"
                          f" server {res['server_execution_ms']} ms; the bench's query in history_many's shape"
                          f" (queries.history_many itself reads readings only)",
                     bound="history over aggregates: server execution + transfer"))  # fmt: skip

    r.guard([("timescale.compression_ratio", "timescale", "x")], compression)
    r.guard([("timescale.history_30d_cagg_ms", "timescale", "ms")], cagg)
    if r.get(DS_COMPRESSED) is None:
        r.add(Metric(DS_COMPRESSED, "timescale", None, "cells/s", status="failed",
                     note="the dataset stage failed before its pull over compressed chunks"))  # fmt: skip


def _edge_bound(kind: str, res: stages.EdgeResult, limit: float | None) -> str:
    cpu = res.edge_cpu_pct or 0.0
    load = res.load_cpu_pct or 0.0
    svc = ", ".join(f"{k} {v:.0f}%" for k, v in res.services_cpu_pct.items() if v >= 5)
    why = f"agent at {cpu:.0f}% of a core, {res.load_processes} load generator(s) at {load:.0f}% each"
    why += f", services {svc}" if svc else ""
    if cpu >= 85:
        why = f"edge agent ({kind}) CPU-bound in one Python process: " + why
    elif load >= 85:
        why = "load generator bound (the 2 cores are shared by generator, agent and broker): " + why
    elif limit and res.readings_per_s >= 0.8 * limit:
        why = f"near the {kind} client/broker limit: " + why
    else:
        why = "no process CPU-saturated: bounded by round trips (acknowledgements, commit cadence): " + why
    if res.profile:
        why += "; agent top frames (py-spy): " + _top(res.profile)
    return why


def _cprofile_top(text: str, n: int = 3) -> str:
    """First ``n`` function names of a cProfile 'tottime' listing."""
    rows = []
    started = False
    for line in text.splitlines():
        if line.strip().startswith("ncalls"):
            started = True
            continue
        if started and line.strip():
            parts = line.split(None, 5)
            if len(parts) == 6:
                rows.append(f"{parts[5].strip()} ({parts[1]} s self)")
        if len(rows) >= n:
            break
    return "top self-time: " + "; ".join(rows) if rows else "profile not taken in --quick"


E2E_NAMES = {"loggers": "e2e", "plants": "e2e.plants"}


def _end_to_end(r: Run, e2e: EndToEnd, sz: Sizes) -> None:
    """Metrics per source: ``e2e.*`` for the data loggers (the rate the target asks for is only
    reachable with them), ``e2e.plants.*`` for the three plant simulators."""
    results: list[E2EResult] = []

    def go() -> None:
        results.extend(e2e.run(r.out))

    names = [
        ("streams.worker_readings_per_s", "stage", "readings/s"),
        ("e2e.backlog_drain_readings_per_s", "e2e", "readings/s"),
    ]
    names += [(f"{E2E_NAMES[src]}.{m}", "e2e", u) for src in sz.e2e.sources
             for m, u in (("sustained_readings_per_s", "readings/s"), ("latency_p50_s", "s"), ("latency_p99_s", "s"))]  # fmt: skip
    r.guard(names, go)
    r.peaks.update(e2e.peaks)
    r.data["e2e"] = {"sources": {}, "plants": list(sz.e2e.plants), "steps": []}
    for res in results:
        _e2e_metrics(r, res, sz)
    d = e2e.drain_result
    if d is not None:
        r.data["e2e"]["drain"] = asdict(d)
        r.add(Metric("streams.worker_readings_per_s", "stage", d.streams_per_s, "readings/s",
                     status="ok" if d.streams_per_s else "failed",
                     note=f"one `plantstream streams worker` (Faust) draining a backlog of {d.readings:,} readings"
                     f" (500 per message) from the raw topic, producing clean readings and aggregates, while the"
                     f" sink writes them; worker CPU {d.streams_cpu_pct}% of a core, sink {d.sink_cpu_pct}%"
                     f"{'; ' + d.note if d.note else ''}"))  # fmt: skip
        r.add(Metric("e2e.backlog_drain_readings_per_s", "e2e", d.db_per_s, "readings/s",
                     limit=r.limit("limit.pg_copy_readings")[0], limit_name="limit.pg_copy_readings",
                     status="ok" if d.db_per_s else "failed",
                     note="the same backlog: raw topic -> worker -> sink -> committed in the database"))  # fmt: skip


def _e2e_metrics(r: Run, res: E2EResult, sz: Sizes) -> None:
    base = E2E_NAMES[res.source]
    steps = [{**s.to_json(), "source": res.source, "unit": res.step_unit} for s in res.steps]
    r.data["e2e"]["sources"][res.source] = {"steps": steps, "bound": res.bound, "profiled": res.profiled,
                                            "profile": res.profile}  # fmt: skip
    r.data["e2e"]["steps"].extend(steps)
    r.series[f"{base}_db"] = res.db_series
    r.series[f"{base}_raw"] = res.raw_series
    r.series[f"{base}_latency"] = res.latency_series
    r.series[f"{base}_steps"] = [{"from": s.t_start - res.t0, "to": s.t_end - res.t0, "hz": s.obs.rate_hz,
                                  "unit": res.step_unit, "sustained": s.sustained, "p50": s.obs.latency_p50_s,
                                  "p99": s.obs.latency_p99_s} for s in res.steps]  # fmt: skip
    # The source's own ceiling: MQTT QoS 1 messages/s x readings per message for the loggers,
    # OPC-UA notifications for the plants; and the database's COPY ceiling for both.
    src_lim = (
        r.limit("limit.opcua_notifications")
        if res.source == "plants"
        else _scaled(r.limit("limit.mqtt_qos1"), sz.e2e.logger_per_message)
    )
    lims = [(v, n) for v, n in (src_lim, r.limit("limit.pg_copy_readings")) if v]
    lim, lname = min(lims) if lims else (None, "")
    value = res.sustained_per_s
    note = (
        f"highest step kept up with p99 < {sz.e2e.p99_target_s:g} s: {res.sustained_step:g} {res.step_unit}"
        if res.sustained_step
        else "no step kept up within the latency target"
    )
    if res.keeps_up_step is not None and res.keeps_up_step != res.sustained_step:
        note += (f"; kept up (latency aside) to {res.keeps_up_step:g} {res.step_unit}:"
                 f" {fmt_num(res.keeps_up_per_s)}/s at p99 {fmt_num(res.keeps_up_p99_s)} s")  # fmt: skip
    if not value and res.steps:
        value = res.steps[0].obs.db_per_s
        note += f"; lowest step's database rate shown ({res.steps[0].reason or res.latency_bound})"
    bound = "; ".join(b for b in (res.latency_bound, res.bound) if b)
    if res.profile:
        bound += f"; py-spy {res.profiled}: {_top(res.profile)}"
    steps_txt = ", ".join(f"{fmt_num(s.obs.rate_hz)}: {fmt_num(s.obs.db_per_s)}/s{'' if s.sustained else ' (not sustained)'}"
                          for s in res.steps)  # fmt: skip
    what = (
        f"{len(sz.e2e.plants)} simulated plants (OPC-UA + MQTT JSON)"
        if res.source == "plants"
        else f"{sz.e2e.logger_publishers} data-logger publishers, MQTT QoS 1 JSON arrays of"
        f" {sz.e2e.logger_per_message} readings, one edge agent"
    )
    r.add(Metric(f"{base}.sustained_readings_per_s", "e2e", value, "readings/s", limit=lim, limit_name=lname,
                 bound=bound, note=f"{note}; {what}; steps ({res.step_unit}) {steps_txt}"))  # fmt: skip
    first = res.steps[0].obs if res.steps else None
    p50 = res.latency_p50_s if res.latency_p50_s is not None else (first.latency_p50_s if first else None)
    p99 = res.latency_p99_s if res.latency_p99_s is not None else (first.latency_p99_s if first else None)
    r.add(Metric(f"{base}.latency_p50_s", "e2e", p50, "s",
                 note="source timestamp -> database commit, at the sustained rate"))  # fmt: skip
    r.add(Metric(f"{base}.latency_p99_s", "e2e", p99, "s", bound=bound if p99 is None or p99 >= 2.0 else "",
                 note="from the sink's source-to-commit histogram (interpolated in 0.1-0.25 s buckets)"))  # fmt: skip


def _scaled(lim: tuple[float | None, str], k: int) -> tuple[float | None, str]:
    v, n = lim
    return (None, "") if v is None else (v * k, f"{n} x {k} readings/msg")


def _memory(r: Run) -> None:
    r.peaks["bench process (limits, streams, sink in-process)"] = self_peak_rss_mb()
    for name, mb in sorted(r.peaks.items()):
        r.add(Metric(f"memory.{name}", "memory", mb, "MB", note="peak RSS (VmHWM)"))


def _write(r: Run, meta: dict[str, Any]) -> None:
    extra: list[str] = []
    if r.data.get("e2e", {}).get("steps"):
        extra += ["## End-to-end steps", "",
                  "| source | step | offered/s | edge out/s | db/s | p50 s | p99 s | sustained | bound |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for s in r.data["e2e"]["steps"]:
            extra.append(f"| {s['source']} | {fmt_num(s['rate_hz'])} {s['unit']} | {fmt_num(s['offered_per_s'])} | {fmt_num(s['edge_out_per_s'])} | "
                         f"{fmt_num(s['db_per_s'])} | {fmt_num(s['latency_p50_s'])} | {fmt_num(s['latency_p99_s'])} | "
                         f"{'yes' if s['sustained'] else 'no'} | {s['reason']} |")  # fmt: skip
        for src, d in r.data["e2e"]["sources"].items():
            busiest = d["steps"][-1].get("cpu", {}) if d["steps"] else {}
            if busiest:
                top = sorted(busiest.items(), key=lambda kv: -kv[1])[:7]
                extra += ["", f"CPU in the last {src} step (% of one core): "
                          + ", ".join(f"{k} {v:.0f}" for k, v in top)]  # fmt: skip
    if r.data.get("streams_profile"):
        extra += ["", "## Streams Processor profile (cProfile, tottime)", "", "```",
                  *str(r.data["streams_profile"]).strip().splitlines()[:30], "```"]  # fmt: skip
    if r.data.get("errors"):
        extra += ["", "## Errors", ""] + [f"- {k}: see bench.json errors" for k in r.data["errors"]]
    extra += ["", f"Latency method: {meta['latency_method']}.", "", "Plots: rates.png, latency.png."]
    md = markdown(r.metrics, meta, extra)
    (r.out / "bench.md").write_text(md)
    write_json(r.out / "bench.json", r.metrics, meta, {"data": r.data, "series": r.series})
    try:
        plots(r.out, r.series)
    except Exception as exc:  # a plotting problem must not lose the numbers
        log.error("plots failed", extra={"kv": {"error": repr(exc)}})
    results = Path(__file__).resolve().parent / "results"
    if r.out.resolve().is_relative_to(results):
        shutil.copyfile(r.out / "bench.md", results / "latest.md")
        shutil.copyfile(r.out / "bench.json", results / "latest.json")
