"""The chaos run (issue 15): a 2.5-minute ``plantstream bench --chaos`` through real processes and
services must lose and duplicate nothing, every scheduled fault must really have happened, and
every hostile payload must be dead-lettered with its reason (or stored flagged BAD where the edge
keeps it by design); plus the schedule's rules and the hostile payloads' decoding without services."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from plantstream.bench.chaos import ChaosConfig, hostile_payloads, schedule


def test_schedule_is_seeded_bounded_and_each_outage_outlasts_the_message_timeout() -> None:
    cfg = ChaosConfig(minutes=2.5)
    a, b, c = schedule(15, cfg), schedule(15, cfg), schedule(16, cfg)
    assert [(f.kind, f.target, f.at_s, f.duration_s) for f in a] == [
        (f.kind, f.target, f.at_s, f.duration_s) for f in b
    ]
    assert [(f.kind, f.at_s) for f in a] != [(f.kind, f.at_s) for f in c]
    kinds = {f.kind for f in a}
    assert kinds == {"kill_edge", "kill_streams", "kill_sink", "kill_monitor", "kafka_outage", "pg_restart", "hostile",
                     "edge_disk_full"}  # fmt: skip
    assert "edge_disk_full" not in {f.kind for f in schedule(15, cfg, disk=False)}
    assert {f.target for f in a if f.kind == "kill_edge"} & {"steel", "chemical", "fiber"}
    assert "loggers" in {f.target for f in a if f.kind == "kill_edge"}
    for f in a:
        if f.kind == "kafka_outage":
            assert f.duration_s > 2 * cfg.message_timeout_ms / 1000
    # In order, inside the load, never overlapping (each fault's evidence is its own).
    for x, y in itertools.pairwise(a):
        assert x.at_s + x.duration_s < y.at_s
    assert a[0].at_s > 0 and a[-1].at_s + a[-1].duration_s < cfg.load_s
    assert len(schedule(15, ChaosConfig(minutes=10))) == 3 * len(a)


def test_hostile_payloads_are_rejected_or_flagged_by_the_edge_decoder_with_the_expected_reason() -> None:
    from plantstream.edge.config import MqttSource
    from plantstream.edge.mqtt.decode import Malformed, MqttDecoder
    from plantstream.edge.vet import DEFAULT_LIMITS

    root = "psbchaostest"
    src = MqttSource.model_validate({"type": "mqtt", "id": "loggers", "url": "mqtt://127.0.0.1:1883",
                                     "subscriptions": [{"template": f"{root}/{{_}}/{{equipment+}}/{{tag}}",
                                                        "readings_path": "$"}]})  # fmt: skip
    dec = MqttDecoder(src, DEFAULT_LIMITS)
    now = time.time_ns() // 1000
    items = hostile_payloads(root, 0, 1, now)
    assert {h.kind for h in items} >= {"lone_surrogate_bytes", "nan_value", "year_9999", "oversize", "not_json"}
    for h in items:
        try:
            readings, problems = dec.decode_all(h.topic, h.payload, now)
        except Malformed as exc:
            readings, problems = [], [exc.reason]
        if h.expect == "deadletter":
            assert not readings and any(h.reason in p for p in problems), (h.kind, problems)
        else:
            assert len(readings) == 1 and not problems, (h.kind, problems)
            assert readings[0][1] == h.tag and readings[0][2] == h.ts_us and readings[0][5] == 2, readings


def _faults(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in report["faults"] if f["kind"] == kind]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_run_loses_and_duplicates_nothing(settings_env: dict[str, str], tmp_path: Path) -> None:
    env = {**settings_env, "PLANTSTREAM_LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "bench", "--chaos", "--chaos-minutes", "2.5", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=840, check=False,
    )  # fmt: skip
    assert (tmp_path / "chaos.json").exists(), proc.stderr[-3000:]
    report = json.loads((tmp_path / "chaos.json").read_text())
    v = report["verdict"]
    # The report itself is every failure's message (tmp_path may be rotated away by later pytest runs).
    md = (tmp_path / "chaos.md").read_text()
    # Each fault really happened, by its own evidence (first: a verdict on a run without its faults proves nothing).
    for kind in ("kill_edge", "kill_streams", "kill_sink", "kill_monitor"):
        fs = _faults(report, kind)
        assert fs, kind
        for f in fs:
            e = f["evidence"]
            assert e["returncode"] == -signal.SIGKILL and e["pid_gone"], f
            assert e["new_pid"] != e["pid"] and f["recovered_s"] is not None, f
    for f in _faults(report, "kafka_outage"):
        e = f["evidence"]
        # started_s/ended_s are rounded to 0.01 s in the report: allow that rounding, nothing more.
        assert f["ended_s"] - f["started_s"] >= f["duration_s"] - 0.011, f
        assert f["duration_s"] > 2 * report["config"]["message_timeout_ms"] / 1000, f
        assert e["proxy_refused_mid_outage"] and e["edge_message_timeouts_seen"], f
        assert f["recovered_s"] is not None, f
    for f in _faults(report, "pg_restart"):
        e = f["evidence"]
        assert e["pg_refused_mid_outage"] and e["postmaster_pid_down"] is None, f
        assert e["postmaster_pid_before"] != e["postmaster_pid_after"] and e["postmaster_pid_after"], f
    disk = _faults(report, "edge_disk_full")
    if not disk:  # only where no tmpfs could be mounted, and then the report says so
        assert any("fill-the-edge-disk" in x for x in report["not_included"]), report["not_included"]
    for f in disk:
        e = f["evidence"]
        # The disk really was full; whether an agent's writes failed is recorded (edges_saw_disk_full),
        # the ledger below says whether anything was lost meanwhile.
        assert e["filled_bytes"] > 0 and e["free_bytes_after_fill"] < 1 << 20 and f["recovered_s"] is not None, f
        assert isinstance(e["edges_saw_disk_full"], bool), f
    assert _faults(report, "kafka_outage") and _faults(report, "pg_restart") and _faults(report, "hostile")
    assert all(f["happened"] and not f["error"] for f in report["faults"]), md
    # Every hostile payload accounted for: dead-lettered with its reason, or stored flagged BAD.
    assert v["hostile"] and all(h["ok"] for h in v["hostile"]), md
    assert {h["expect"] for h in v["hostile"]} == {"dead-lettered", "stored BAD"}
    # The ledger verdict: what the run exists to prove.
    assert v["emitted"] >= 100_000, md
    assert v["lost"] == 0 and v["duplicated"] == 0, md
    assert v["unexpected"] == 0 and v["value_mismatches"] == 0, md
    for table, agg in v["aggregates"].items():
        assert agg["rows"] > 0 and agg["mismatched"] == 0, f"{table}: {agg}\n{md}"
    assert proc.returncode == 0 and report["ok"], md
    assert f"Seed **{report['seed']}**" in md and "| lost | 0" in md
