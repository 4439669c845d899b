"""End to end through real services: three simulated plants -> edge agents (OPC-UA and MQTT) ->
Kafka-protocol broker -> Faust streams worker -> sink -> PostgreSQL. The database must hold exactly
the readings the simulators emitted: same count, same values, no duplicates."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from plantstream.config import Settings
from plantstream.pipeline import Pipeline
from plantstream.testing.plugin import free_port, wait_until

PLANTS = ("steel", "chemical", "fiber")

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def load_ledger(path: Path) -> dict[tuple[str, str, int], Any]:
    out: dict[tuple[str, str, int], Any] = {}
    with path.open() as f:
        for line in f:
            rec = json.loads(line)
            if "tag" in rec and "event" not in rec:
                key = (rec["plant"], rec["tag"], rec["ts_us"])
                assert key not in out, f"simulator emitted {key} twice"
                out[key] = rec["value"]
    return out


BAD_NO_COMMUNICATION = 0x80310000  # an OPC-UA gap marker's status code (edge/opcua/source.py)


def db_readings(dsn: str, gaps: dict[tuple[str, str, int], Any] | None = None) -> dict[tuple[str, str, int], Any]:
    """Every reading by (plant, tag, µs); OPC-UA gap markers (bad, BadNoCommunication) go to ``gaps``:
    the edge writes one per tag when a session is lost, which it is when a simulator stops."""
    sql = """
        SELECT t.plant, t.tag, (extract(epoch FROM r.time) * 1000000)::bigint AS ts_us,
               r.v_float, r.v_int, r.v_bool, r.v_text, r.quality, r.status_code
        FROM readings r JOIN tags t ON t.id = r.tag_id
    """
    out: dict[tuple[str, str, int], Any] = {}
    with psycopg.connect(dsn) as conn:
        for plant, tag, ts_us, vf, vi, vb, vt, quality, code in conn.execute(sql):
            key = (plant, tag, int(ts_us))
            assert key not in out, f"duplicate row for {key}"
            value = next(v for v in (vf, vi, vb, vt) if v is not None)
            if gaps is not None and code == BAD_NO_COMMUNICATION and quality == 2:
                gaps[key] = value
            else:
                out[key] = value
    return out


def ledger_events(path: Path, kind: str) -> list[dict[str, Any]]:
    with path.open() as f:
        return [rec for rec in map(json.loads, f) if rec.get("event") == kind]


def aggregate_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM aggregates_1s").fetchone()
        return int(row[0]) if row else 0


def aggregates_disagreeing_with_readings(dsn: str) -> list[tuple[Any, ...]]:
    sql = """
        SELECT a.tag_id, a.start, a.count, a.bad_count, r.good, r.bad
        FROM aggregates_1s a
        CROSS JOIN LATERAL (
            SELECT count(*) FILTER (WHERE quality < 2) AS good, count(*) FILTER (WHERE quality = 2) AS bad
            FROM readings WHERE tag_id = a.tag_id AND time >= a.start AND time < a.start + interval '1 second'
        ) r
        WHERE (a.count, a.bad_count) IS DISTINCT FROM (r.good, r.bad)
    """
    with psycopg.connect(dsn) as conn:
        return list(conn.execute(sql).fetchall())


def lot_stamps(dsn: str) -> list[tuple[str, str, int]]:
    sql = """
        SELECT t.plant, l.lot, count(*) FROM readings r
        JOIN tags t ON t.id = r.tag_id JOIN lots l ON l.id = r.lot_id
        GROUP BY 1, 2
    """
    with psycopg.connect(dsn) as conn:
        return [(p, lot, int(n)) for p, lot, n in conn.execute(sql).fetchall()]


def count_readings(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        # Gap markers are not what the simulators emitted; counting them could end the wait early.
        row = conn.execute(
            "SELECT count(*) FROM readings WHERE status_code IS DISTINCT FROM %s", (BAD_NO_COMMUNICATION,)
        ).fetchone()
        return int(row[0]) if row else 0


@pytest.fixture(params=["plaintext", "tls"])
def transport(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """The local broker as it is, or a private one reachable only through a real TLS terminator
    (stunnel) with the CA configured: every client of the pipeline then speaks TLS."""
    if request.param == "plaintext":
        yield settings
        return
    from plantstream.config import KafkaSecurity
    from plantstream.testing.tls import TlsKafka, make_pki

    pki = make_pki(tmp_path / "pki")
    with TlsKafka(tmp_path / "tls-kafka", pki) as k:
        yield settings.model_copy(
            update={
                "kafka_bootstrap": k.bootstrap,
                "kafka": KafkaSecurity(security_protocol="SSL", ssl_ca_location=pki.ca),
            }
        )


def monitor_feed_state(port: int) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return str(json.load(resp)["kafka"])
    except OSError:
        return "down"


def test_database_holds_exactly_what_the_simulators_emitted(transport: Settings, tmp_path: Path) -> None:
    from plantstream.domain.units import compile_converter

    settings = transport
    monitor_port = free_port()
    pipe = Pipeline(
        settings,
        tmp_path / "run",
        plants=PLANTS,
        seed=11,
        speed=1.0,
        rate=2.0,
        sim_ports={p: free_port() for p in PLANTS},
    )
    try:
        pipe.start_monitor(monitor_port)  # its live feed reads the clean topics like any consumer
        # Samples only count once every edge source is subscribed; then the plants start emitting.
        pipe.run_ledgered(sim_duration=15.0)
        expected: dict[tuple[str, str, int], Any] = {}
        for plant in PLANTS:
            expected.update(load_ledger(pipe.ledger(plant)))
        assert len(expected) > 1000, "the simulators emitted too little to prove anything"
        # The edge publishes every source's data; the sink writes it once streams has processed it.
        wait_until(
            lambda: count_readings(settings.dsn) >= len(expected),
            240,
            f"{len(expected)} readings in the database",
            interval=1.0,
        )
        pipe.check_alive(allow_exited=[p.name for p in pipe.procs if p.name.startswith("sim-")])
        gaps: dict[tuple[str, str, int], Any] = {}
        got = db_readings(settings.dsn, gaps)
        wait_until(lambda: aggregate_rows(settings.dsn) > 0, 120, "closed 1 s windows in aggregates_1s", interval=1.0)
        agg_mismatch = aggregates_disagreeing_with_readings(settings.dsn)
        lots = lot_stamps(settings.dsn)
        wait_until(lambda: monitor_feed_state(monitor_port) == "live", 60, "the monitor's live feed", interval=0.5)
    finally:
        pipe.stop()

    assert set(got) == set(expected), (
        f"missing {len(set(expected) - set(got))}, unexpected {len(set(got) - set(expected))}: "
        f"{sorted(set(expected) ^ set(got))[:5]}"
    )
    # Gap markers: only where a simulator's session ended (after its last sample), at most one per
    # tag and session, NaN, never a value.
    last_us = {plant: max(ts for p, _, ts in expected if p == plant) for plant in PLANTS}
    assert all(isinstance(v, float) and math.isnan(v) for v in gaps.values()), "a gap marker carries a value"
    assert all(ts > last_us[plant] for plant, _, ts in gaps), "a gap marker inside a simulator's run"
    per_tag = [(plant, tag) for plant, tag, _ in gaps]
    assert len(per_tag) == len(set(per_tag)), "more than one gap marker for a tag in one session loss"
    units = pipe.ledger_units()
    mismatches = []
    for key, want in expected.items():
        plant, tag, _ = key
        value = got[key]
        if want is None:  # a dropout: delivered flagged bad, value NaN, never the last good value
            if not (isinstance(value, float) and math.isnan(value)):
                mismatches.append((key, want, value))
        elif isinstance(want, float):
            want_c = compile_converter(units[(plant, tag)])(want)
            if not math.isclose(value, want_c, rel_tol=1e-12, abs_tol=1e-12):
                mismatches.append((key, want, want_c, value))
        elif value != want or type(value) is not type(want):
            mismatches.append((key, want, value))
    assert not mismatches, f"{len(mismatches)} values differ, e.g. {mismatches[:5]}"
    print(f"e2e: {len(expected)} readings compared exactly")

    # Every 1 s aggregate counts exactly the stored readings of its window (good ones in stats).
    assert agg_mismatch == [], f"aggregates disagree with readings: {agg_mismatch[:5]}"
    # Lots come from the simulators' MES over Kafka; streams stamps them onto the readings.
    ledger_lots = {(plant, rec["lot"]) for plant in PLANTS for rec in ledger_events(pipe.ledger(plant), "lot_start")}
    assert ledger_lots, "no lot started during the run"
    stamped_plants = {plant for plant, _lot, n in lots if n > 0}
    assert stamped_plants == set(PLANTS), lots
    assert {(plant, lot) for plant, lot, _ in lots} <= ledger_lots
