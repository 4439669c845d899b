"""Two sink processes in one consumer group share the partitions: exact counts, no duplicates."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from plantstream.config import Settings
from plantstream.contract import Reading
from plantstream.producers.kafka import ensure_contract_topics, make_producer, produce
from plantstream.producers.topics import Topics
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.testing.plugin import wait_until
from plantstream.testing.sinks import messages, readings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

UNITS = 6


def spread(n: int, t0: int) -> list[Reading]:
    out: list[Reading] = []
    for u in range(UNITS):
        eq = f"acme/works/melt/lf/u{u}"
        out += [
            dataclasses.replace(r, equipment=eq, tag=f"u{u}.{r.tag}")
            for r in readings(n // UNITS, tags=4, t0=t0, step_us=1000)
        ]
    return out


def send(settings: Settings, rs: list[Reading]) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    p = make_producer(settings.kafka_bootstrap)
    by_eq: dict[str, list[Reading]] = {}
    for r in rs:
        by_eq.setdefault(r.equipment, []).append(r)
    for eq, group in by_eq.items():
        for m in messages(group, 500):
            produce(p, topics.clean, m, key=f"steel/{eq}")
    assert p.flush(30) == 0


def log_records(log: Path, msg: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"msg": "{msg}"' in line:
            out.append(json.loads(line[line.index("{") :]))
    return out


def counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT (tag_id, time)) FROM readings").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def test_two_sinks_in_one_group_share_partitions_exact_counts(
    settings: Settings, settings_env: dict[str, str], tmp_path: Path
) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    ensure_contract_topics(settings.kafka_bootstrap, topics)
    migrate(settings.dsn)
    first, second = spread(60_000, 1_700_000_000_000_000), spread(60_000, 1_700_000_100_000_000)
    send(settings, first)
    cfg = tmp_path / "sink.yaml"
    cfg.write_text("batch_max_rows: 5000\nlinger_ms: 20\nprogress_interval_s: 1\nsession_timeout_ms: 6000\n")
    logs = [tmp_path / "sink-a.log", tmp_path / "sink-b.log"]
    procs = []
    for log in logs:
        with open(log, "wb") as f:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "plantstream.cli", "sink", "run", "--config", str(cfg)],
                    env=settings_env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                )
            )
    try:

        def shared() -> bool:
            for p in procs:
                assert p.poll() is None, "a sink died"
            last = [log_records(log, "partitions assigned") for log in logs]
            if not all(last):
                return False
            mine = [{x for x in rec[-1]["partitions"] if x.startswith(topics.clean)} for rec in last]
            return all(mine) and not (mine[0] & mine[1]) and len(mine[0] | mine[1]) == settings.partitions

        wait_until(shared, 150, "both sinks to own clean partitions (group join ~30 s)", 0.5)
        send(settings, second)
        total = len(first) + len(second)
        wait_until(lambda: counts(settings.dsn)[0] >= total, 90, f"{total} readings", 0.5)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    assert counts(settings.dsn) == (total, total)
    with psycopg.connect(settings.dsn) as conn:
        assert conn.execute("SELECT count(DISTINCT seq) FROM readings").fetchone() == (len(first) // UNITS,)
    stopped = [log_records(log, "sink stopped") for log in logs]
    rows = [rec[-1]["rows"] for rec in stopped]
    assert all(r > 0 for r in rows), f"both sinks must have written rows: {rows}"
