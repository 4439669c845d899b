"""A process excursion travels raw -> streams worker -> deviations topic -> sink -> ``deviations``
with start, end, peak, the crossed limit, lot, spec and property (real broker, sink, PostgreSQL)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from plantstream.config import Settings
from plantstream.contract import ContextEvent, ContextKind, Origin, Quality, Reading, TagMeta
from plantstream.producers.codec import ReadingBatch, encode_context, encode_readings, encode_tag_meta
from plantstream.producers.kafka import ensure_contract_topics, make_producer, produce
from plantstream.producers.topics import Topics
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.testing.plugin import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

CASTER = "acme/duisburg/steelmaking/caster1"
STRAND = CASTER + "/strand1"
T0 = 1_700_000_040_000_000 - 1_700_000_040_000_000 % 60_000_000
SPEC = "EN10025-2:S355J2"  # casting_speed process window 0.9 .. 1.6 m/min


@pytest.fixture
def services(settings: Settings, settings_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    ensure_contract_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix, settings.partitions))
    migrate(settings.dsn)
    cfg = tmp_path / "streams.yaml"
    cfg.write_text("allowed_lateness_s: 0.5\ncheckpoint_interval_s: 1.0\nclock_past_s: 1.0e10\n")  # T0: 2023
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for name, argv in (
        ("worker", ["streams", "worker", "--config", str(cfg)]),
        ("sink", ["sink", "run", "--static-assignment"]),
    ):
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as f:
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-m", "plantstream.cli", *argv],
                        env=settings_env,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )
    yield
    for p, _ in procs:
        p.send_signal(signal.SIGTERM)
    for p, log in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        sys.stderr.write(log.read_text(errors="replace")[-2000:])


def deviations(dsn: str) -> list[dict[str, Any]]:
    sql = """
        SELECT d.id, d.kind, d.status, (extract(epoch FROM d.start_time) * 1e6)::bigint AS start_us,
               (extract(epoch FROM d.end_time) * 1e6)::bigint AS end_us, d.peak, d."limit", l.lot, d.spec_id,
               d.property, t.tag, d.attrs
        FROM deviations d LEFT JOIN lots l ON l.id = d.lot_id LEFT JOIN tags t ON t.id = d.tag_id
    """
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql)
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_streams_process_excursion_reaches_deviations_table(settings: Settings, services: None) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    prod = make_producer(settings.kafka_bootstrap)
    meta = TagMeta("steel", "speed", STRAND, "m/min", spec_property="casting_speed")
    produce(prod, topics.tags, encode_tag_meta(meta), key=meta.key)
    lot = ContextEvent(ContextKind.LOT_START, "steel", CASTER, T0 - 1, "H9", lot_kind="heat", material=SPEC)
    produce(prod, topics.context, encode_context(lot), key=lot.key)
    # 1 Hz casting speed: in spec, out above 1.6 for three samples (peak 1.9), back in; then a
    # sample from a second whose window has closed (late data).
    values = [1.2, 1.3, 1.8, 1.9, 1.7, 1.3, 1.2, 1.25]
    rows = [
        Reading("steel", STRAND, "speed", T0 + i * 1_000_000, v, "m/min", Quality.GOOD, Origin.OPCUA, "e1", i + 1)
        for i, v in enumerate(values)
    ]
    rows.append(Reading("steel", STRAND, "speed", T0 + 500_000, 1.2, "m/min", Quality.GOOD, Origin.OPCUA, "e1", 99))
    produce(prod, topics.raw, encode_readings(ReadingBatch.of(rows)), key=f"steel/{STRAND}")
    assert prod.flush(30) == 0

    def process_row() -> dict[str, Any] | None:
        got = [d for d in deviations(settings.dsn) if d["kind"] == "process" and d["status"] == "closed"]
        return got[0] if got else None

    found = wait_until(process_row, 150, "the closed excursion in the database (group join ~30 s)", 0.5)
    assert found is not None
    dev: dict[str, Any] = found
    assert (dev["start_us"], dev["end_us"]) == (T0 + 2_000_000, T0 + 5_000_000)  # first out .. back in
    assert dev["peak"] == pytest.approx(1.9) and dev["limit"] == pytest.approx(1.6)
    assert (dev["lot"], dev["spec_id"], dev["property"], dev["tag"]) == ("H9", SPEC, "casting_speed", "speed")
    assert dev["attrs"]["limit_min"] == pytest.approx(0.9) and dev["attrs"]["limit_max"] == pytest.approx(1.6)
    assert dev["attrs"]["unit"] == "m/min" and dev["attrs"]["duration_s"] == pytest.approx(3.0)
    # the open record was upserted into the same row (same id), not stored beside it
    assert [d["kind"] for d in deviations(settings.dsn)].count("process") == 1

    late = wait_until(
        lambda: [d for d in deviations(settings.dsn) if d["kind"] == "late_data"], 30, "the late-data record"
    )
    assert late[0]["tag"] == "speed" and late[0]["attrs"]["count"] == 1 and late[0]["lot"] == "H9"
