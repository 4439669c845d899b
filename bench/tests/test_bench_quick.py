"""The bench must never rot: ``plantstream bench --quick`` runs every measurement against the real
services and reports a positive rate for each; plus the pure judging rules it reports with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from plantstream.bench.e2e import SinkSample, bucket_delta, parse_sink_metrics
from plantstream.bench.model import (
    TARGETS,
    Metric,
    StepObservation,
    Target,
    histogram_quantile,
    judge_step,
    per_second,
    percentile,
    slope,
    window_rate,
)
from plantstream.bench.procs import collapsed_top
from plantstream.bench.report import markdown
from plantstream.config import Settings

EXPECTED = [
    "limit.pg_copy_plain",
    "limit.pg_copy_readings",
    "limit.kafka_produce",
    "limit.kafka_consume",
    "limit.mqtt_qos0",
    "limit.mqtt_qos1",
    "limit.opcua_notifications",
    "edge.opcua_readings_per_s",
    "edge.mqtt_readings_per_s",
    "edge.mqtt_single_readings_per_s",
    "streams.readings_per_s_per_worker",
    "sink.readings_per_s",
    "streams.worker_readings_per_s",
    "dataset.cells_per_s",
    "e2e.backlog_drain_readings_per_s",
    "e2e.sustained_readings_per_s",
    "e2e.latency_p50_s",
    "e2e.latency_p99_s",
    "e2e.plants.sustained_readings_per_s",
    "e2e.plants.latency_p50_s",
    "e2e.plants.latency_p99_s",
    "history.raw_1h_ms",
    "timescale.compression_ratio",
    "timescale.history_30d_cagg_ms",
    "timescale.dataset_compressed_cells_per_s",
]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_quick_bench_reports_every_metric(settings_env: dict[str, str], settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    env = {**settings_env, "PLANTSTREAM_LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "bench", "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    doc = json.loads((out / "bench.json").read_text())
    metrics = {m["name"]: m for m in doc["metrics"]}
    missing = [n for n in EXPECTED if n not in metrics]
    assert not missing, f"metrics missing from bench.json: {missing}"
    # The engine is recorded; the TimescaleDB stages run on it or say why they do not apply.
    eng = doc["meta"]["database"]
    assert eng["name"] in ("timescaledb", "postgresql") and eng["text"] and eng["postgres"]
    assert f"Database engine: {eng['text']}." in (out / "bench.md").read_text()
    ts = [n for n in EXPECTED if n.startswith("timescale.")]
    if eng["name"] == "postgresql":
        assert eng["reason"]
        for name in ts:
            m = metrics[name]
            assert m["status"] == "not_applicable" and m["value"] is None and m["pass"] is None, m
            assert eng["reason"] in m["note"], m
            assert f"| {name} | n/a |" in (out / "bench.md").read_text()
    else:
        comp = doc["data"]["compression"]
        assert 0 < comp["after_bytes"] < comp["before_bytes"] and metrics["timescale.compression_ratio"]["value"] > 1
        assert comp["compressed_chunks"] >= 1 and comp["rows_after"] == comp["readings"]
        cagg = metrics["timescale.history_30d_cagg_ms"]["details"]
        assert cagg["served_from"].startswith("aggregates_1h materialization") and cagg["counts_match"]
        ds = doc["data"]["dataset_compressed"]
        assert ds["compressed_chunks"] >= 1 and ds["same_rows_and_cells"]
        assert metrics["timescale.dataset_compressed_cells_per_s"]["limit"] == doc["data"]["dataset"]["cells_per_s"]
    hist = metrics["history.raw_1h_ms"]["details"]
    assert hist["flavor"] == ("timescale" if eng["name"] == "timescaledb" else "plain")
    assert doc["data"]["history_raw"]["points_per_query"] == 50 * 3600
    for name, m in metrics.items():
        if name == "dataset.cells_per_s" and m["status"] == "not_built":
            continue  # reported as "not built" until the datasets stage ships a bench
        if name in ts and eng["name"] == "postgresql":
            continue  # not applicable, checked above
        assert m["status"] == "ok", f"{name}: {m['status']} {m['note']}"
        assert m["value"] is not None and m["value"] > 0, f"{name} has no positive value: {m}"
    assert any(n.startswith("memory.") for n in metrics), "no peak-memory metrics"
    # The sink is judged against binary COPY into readings measured alternately with it (the
    # machine's speed drifts within minutes): that limit and its rounds are in the report.
    sink = metrics["sink.readings_per_s"]
    rounds = doc["data"]["sink"]
    assert (
        sink["limit"]
        == rounds["copy_readings_rows_per_s"]
        == sorted(rounds["copy_rounds"])[len(rounds["copy_rounds"]) // 2]
    )
    assert sink["value"] == sorted(rounds["sink_rounds"])[len(rounds["sink_rounds"]) // 2]
    assert "alternated with the sink" in sink["limit_name"]
    # The MQTT target is measured on JSON arrays (20 readings a message); 1 a message is shown beside it.
    batched, single = (
        metrics["edge.mqtt_readings_per_s"]["details"],
        metrics["edge.mqtt_single_readings_per_s"]["details"],
    )
    assert batched["per_message"] == 20 and single["per_message"] == 1
    assert batched["msgs_per_s"] == pytest.approx(batched["readings_per_s"] / 20)
    assert not any(n.startswith("soak") for n in metrics), "the soak must not run in --quick"
    # Both end-to-end sources ran, each with a measured step and its latency from the sink's histogram.
    sources = doc["data"]["e2e"]["sources"]
    assert set(sources) == {"loggers", "plants"}
    for src in sources.values():
        assert src["steps"] and src["steps"][0]["db_per_s"] > 0 and src["steps"][0]["latency_p99_s"] is not None
    md = (out / "bench.md").read_text()
    for name in EXPECTED:
        assert f"| {name} |" in md
    for png in ("rates.png", "latency.png"):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG"), f"{png} is not a PNG"


# --- the judging rules, without services ----------------------------------------------------


def test_percentile_interpolates_and_handles_empty() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_rates_over_windows_and_seconds() -> None:
    events = [(10.0, 5), (10.5, 5), (11.2, 10), (12.9, 1)]
    assert window_rate(events, 10.0, 12.0) == pytest.approx(10.0)
    assert window_rate(events, 12.0, 12.0) == 0.0
    assert per_second(events, 10.0) == [(0.0, 10.0), (1.0, 10.0), (2.0, 1.0)]
    assert slope([(0, 1.0), (1, 2.0), (2, 3.0)]) == pytest.approx(1.0)


def _obs(**kw: object) -> StepObservation:
    base: dict[str, object] = dict(
        rate_hz=100, seconds=20, offered_per_s=10_000, edge_out_per_s=10_000, db_per_s=9_900,
        freshness=[(float(t), 0.5) for t in range(20)],
    )  # fmt: skip
    base.update(kw)
    return StepObservation(**base)  # type: ignore[arg-type,unused-ignore]


def test_step_sustained_when_everything_keeps_up() -> None:
    assert judge_step(_obs()) == (True, "")


def test_step_bound_names_the_lagging_stage() -> None:
    growing = [(float(t), 0.5 + 0.5 * t) for t in range(20)]
    ok, why = judge_step(_obs(edge_out_per_s=5_000, db_per_s=5_000, edge_buffer_growth=50_000))
    assert not ok and why.startswith("edge:")
    ok, why = judge_step(_obs(db_per_s=4_000, freshness=growing, raw_lag_growth=300))
    assert not ok and why.startswith("streams:")
    ok, why = judge_step(_obs(db_per_s=4_000, freshness=growing, clean_lag_growth=200))
    assert not ok and why.startswith("sink:")
    ok, why = judge_step(_obs(sim_lag_s=5.0))
    assert not ok and why.startswith("simulator:")
    # Lagging with every core busy: the report says the machine, not only the stage, is the bound.
    busy = {"edge": 60.0, "streams-0": 50.0, "tansu (all)": 70.0}
    ok, why = judge_step(_obs(db_per_s=4_000, freshness=growing, clean_lag_growth=200, cpu=busy, cores=2))
    assert not ok and why.startswith("sink:") and "CPU-saturated: processes use 180% of 200%" in why
    ok, why = judge_step(_obs(db_per_s=4_000, freshness=growing, clean_lag_growth=200, cpu=busy, cores=4))
    assert not ok and "CPU-saturated" not in why


def test_targets_pass_and_miss() -> None:
    sink = Metric(
        "sink.readings_per_s", "stage", 100.0, "readings/s", limit=200.0, target=TARGETS["sink.readings_per_s"]
    )
    assert sink.ratio == pytest.approx(0.5) and sink.passed is False
    p99 = Metric("e2e.latency_p99_s", "e2e", 1.5, "s", target=Target("max", 2.0))
    assert p99.passed is True
    nb = Metric(
        "dataset.cells_per_s", "stage", None, "cells/s", status="not_built", target=TARGETS["dataset.cells_per_s"]
    )
    assert nb.passed is None
    md = markdown([sink, p99, nb], {"mode": "test"})
    assert "| sink.readings_per_s | 100 | readings/s |" in md and "**miss**" in md and "not built" in md


def test_collapsed_stacks_give_leaf_shares() -> None:
    text = "main;a;hot 30\nmain;b;hot 10\nmain;cold 10\n"
    top = collapsed_top(text)
    assert [f for f, _ in top] == ["hot", "cold"]
    assert [share for _, share in top] == pytest.approx([0.8, 0.2])


def test_histogram_quantile_interpolates_inside_buckets() -> None:
    # 100 observations: 50 in (0, 0.5], 40 in (0.5, 1], 10 in (1, 2].
    b = [(0.5, 50.0), (1.0, 90.0), (2.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(b, 0.5) == pytest.approx(0.5)
    assert histogram_quantile(b, 0.7) == pytest.approx(0.75)
    assert histogram_quantile(b, 0.99) == pytest.approx(1.9)
    assert histogram_quantile(b, 0.25) == pytest.approx(0.25)  # first bucket from 0
    # Ranks beyond the last finite bound are only known to be above it.
    assert histogram_quantile([(1.0, 1.0), (float("inf"), 10.0)], 0.99) == 1.0
    assert histogram_quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None


def test_sink_metrics_parse_and_window_delta() -> None:
    text = """# TYPE plantstream_sink_rows_written_total counter
plantstream_sink_rows_written_total{table="readings"} 1200.0
plantstream_sink_rows_written_total{table="aggregates"} 7.0
# TYPE plantstream_sink_newest_source_timestamp_seconds gauge
plantstream_sink_newest_source_timestamp_seconds 1.7e9
# TYPE plantstream_sink_source_to_commit_seconds histogram
plantstream_sink_source_to_commit_seconds_bucket{le="0.5"} 10.0
plantstream_sink_source_to_commit_seconds_bucket{le="1.0"} 30.0
plantstream_sink_source_to_commit_seconds_bucket{le="+Inf"} 30.0
plantstream_sink_source_to_commit_seconds_count 30.0
plantstream_sink_source_to_commit_seconds_sum 20.0
"""
    b = parse_sink_metrics(text, 10.0)
    assert b.rows == 1200.0 and b.newest_source_s == 1.7e9
    assert b.latency_buckets == ((0.5, 10.0), (1.0, 30.0), (float("inf"), 30.0))
    a = SinkSample(9.0, 200.0, None, ((0.5, 10.0), (1.0, 10.0), (float("inf"), 10.0)))
    # Between the two scrapes, 20 observations, all in (0.5, 1]: the median is 0.75.
    d = bucket_delta(a, b)
    assert d == [(0.5, 0.0), (1.0, 20.0), (float("inf"), 20.0)]
    assert histogram_quantile(d, 0.5) == pytest.approx(0.75)


def test_cpu_share_splits_busy_iowait_and_steal() -> None:
    from plantstream.bench.procs import cpu_share, cpu_times

    # user nice system idle iowait irq softirq steal
    a = [100, 0, 50, 800, 10, 0, 0, 5]
    b = [400, 0, 150, 1300, 60, 0, 0, 45]  # +300 +0 +100 +500 +50 +0 +0 +40 = 990
    assert cpu_share(a, b) == {"busy_pct": 44.4, "iowait_pct": 5.1, "steal_pct": 4.0}
    now = cpu_times()
    assert len(now) == 8 and sum(now) > 0
