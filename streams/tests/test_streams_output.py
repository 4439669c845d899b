"""Issue 15 item 5: outputs are cut to fit the broker's message size; a lost output stops the
worker loudly (exit status 3) instead of stalling its commits in silence."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.config import Settings
from plantstream.contract import Aggregate, Origin
from plantstream.producers.codec import ReadingBatch, decode_aggregates, decode_readings, encode_readings
from plantstream.producers.kafka import make_producer
from plantstream.producers.topics import Topics
from plantstream.streams import app as streams_app
from plantstream.streams.config import StreamsConfig
from plantstream.streams.logic.output import fit_aggregates, fit_readings, slice_batch, split_encode
from plantstream.streams.logic.processor import Output
from plantstream.testing.plugin import free_port

EQ = "acme/duisburg/steelmaking/caster1"


def batch_of(sizes: list[int]) -> ReadingBatch:
    b = ReadingBatch("steel", EQ, Origin.MQTT, "edge1")
    for i, size in enumerate(sizes):
        b.tag.append(f"t{i % 3}")
        b.unit.append("")
        b.ts_us.append(1_000_000 + i)
        b.value.append("x" * size if size else float(i))
        b.quality.append(0)
        b.status_code.append(None)
        b.seq.append(i + 1)
        b.server_ts_us.append(None)
        b.lot.append("L1" if i % 2 else None)
        b.reason.append(None)
    return b


def rows(b: ReadingBatch) -> list[tuple[Any, ...]]:
    return list(zip(b.tag, b.ts_us, b.value, b.seq, b.lot, strict=True))


@given(st.lists(st.integers(0, 3000), min_size=1, max_size=200), st.integers(200, 20_000))
@settings(max_examples=200, deadline=None)
def test_streams_fit_readings_cuts_in_order_and_every_part_fits(sizes: list[int], limit: int) -> None:
    b = batch_of(sizes)
    parts, too_big = fit_readings(b, limit)
    assert all(len(data) <= limit for data, _ in parts)
    got = [r for data, _ in parts for r in rows(decode_readings(data))]
    assert sum(n for _, n in parts) == len(got)
    big = {one.seq[0] for one in too_big}
    assert all(len(encode_readings(one)) > limit for one in too_big), "only what cannot fit alone is left out"
    assert got == [r for r in rows(b) if r[3] not in big], "every other reading, in order"


def test_streams_fit_readings_keeps_a_fitting_batch_whole() -> None:
    b = batch_of([10] * 50)
    parts, too_big = fit_readings(b, 1_000_000)
    assert [(data, n) for data, n in parts] == [(encode_readings(b), 50)] and too_big == []


def test_streams_split_encode_catch_up_batch_under_one_megabyte() -> None:
    """A take's coalesced catch-up output (200k readings, ~5 MB) becomes messages under 900 kB."""
    b = batch_of([0] * 200_000)
    assert len(encode_readings(b)) > 4_000_000
    parts, too_big = fit_readings(b, 900_000)
    assert len(parts) >= 5 and not too_big
    assert all(len(d) <= 900_000 for d, _ in parts)
    assert [s for d, _ in parts for s in decode_readings(d).seq] == b.seq


def test_streams_fit_aggregates_cuts_and_keeps_order() -> None:
    aggs = [
        Aggregate("steel", EQ, f"tag{i}", "1s", i * 1_000_000, 1, 0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, "degC", None)
        for i in range(2000)
    ]
    msgs, too_big = fit_aggregates(aggs, 10_000)
    assert len(msgs) > 1 and not too_big and all(len(m) <= 10_000 for m in msgs)
    assert [a for m in msgs for a in decode_aggregates(m)] == aggs


def test_streams_split_encode_reports_single_items_too_large() -> None:
    parts, too_big = split_encode(5, lambda lo, hi: b"x" * sum(100 if i == 2 else 1 for i in range(lo, hi)), 50)
    assert too_big == [2]
    assert [(p.lo, p.hi) for p in parts] == [(0, 2), (3, 4), (4, 5)]
    assert slice_batch(batch_of([1, 2, 3]), 1, 3).seq == [2, 3]


def runtime(tmp_path: Path, bootstrap: str, **cfg: Any) -> streams_app.Runtime:
    settings_ = Settings.model_validate(
        {"kafka_bootstrap": bootstrap, "state_dir": tmp_path, "topic_prefix": "t-output"}
    )
    rt = streams_app.Runtime(settings_, StreamsConfig.model_validate(cfg), Topics("t-output", 1), "t-output-streams")
    return rt


def test_streams_undeliverable_output_stops_the_worker_instead_of_stalling(tmp_path: Path) -> None:
    """librdkafka gives up on an output (nothing listens at the bootstrap address): the runtime
    records it, shows it in the metrics, acks nothing more and asks the worker to stop."""
    rt = runtime(tmp_path, f"127.0.0.1:{free_port()}")
    conf: dict[str, Any] = {"message.timeout.ms": 1500}
    rt.producer = make_producer(rt.settings.kafka_bootstrap, **conf)
    stops: list[str] = []
    rt.on_fatal = stops.append
    failures_before = streams_app.DELIVERY_FAILURES.labels("t-output.readings.clean.v1")._value.get()
    rt.emit(Output(clean=[batch_of([0] * 10)]))
    assert asyncio.run(rt.delivered(rt.seq, 20.0)), "the failure is reported, not left in flight"
    assert rt.fatal is not None and "t-output.readings.clean.v1" in rt.fatal
    assert len(stops) == 1
    assert streams_app.OUTPUT_FAILED._value.get() == 1
    assert streams_app.DELIVERY_FAILURES.labels("t-output.readings.clean.v1")._value.get() == failures_before + 1
    # Nothing is acked after it: the checkpoint returns before it touches the consumer.
    asyncio.run(rt.checkpoint(cast(Any, None)))
    rt.emit(Output(clean=[batch_of([0] * 10)]))  # a second failure does not stop it twice
    asyncio.run(rt.delivered(rt.seq, 20.0))
    assert len(stops) == 1


def test_streams_output_refused_by_the_producer_is_not_left_in_flight(tmp_path: Path) -> None:
    """produce() refusing a message synchronously (MSG_SIZE_TOO_LARGE) used to leave its sequence
    number in flight forever: every later checkpoint waited for it, no offset was committed again."""
    rt = runtime(tmp_path, f"127.0.0.1:{free_port()}", max_output_bytes=50_000)
    conf: dict[str, Any] = {"message.max.bytes": 2_000}
    rt.producer = make_producer(rt.settings.kafka_bootstrap, **conf)
    stops: list[str] = []
    rt.on_fatal = stops.append
    rt.emit(Output(clean=[batch_of([3000])]))  # fits max_output_bytes, not the producer's limit
    assert not rt.inflight
    assert asyncio.run(rt.delivered(rt.seq, 0.5))
    assert rt.fatal is not None and "too large" in rt.fatal.lower(), rt.fatal
    assert len(stops) == 1


def test_streams_lost_output_exits_with_status_3_even_if_shutdown_hangs() -> None:
    """The stop after a lost output is SIGTERM (graceful: the consumer leaves the group); if that
    hangs, e.g. with the broker away, the process still exits, with status 3."""
    child = textwrap.dedent(
        """
        import signal, sys, time
        from plantstream.streams import app
        app.HARD_EXIT_AFTER_S = 0.2
        got = []
        signal.signal(signal.SIGTERM, lambda *a: got.append(1))  # a shutdown that never finishes
        app._stop_self("test")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if got:
                sys.stderr.write("sigterm received\\n")
                got.clear()
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == streams_app.EXIT_OUTPUT_FAILED == 3
    assert b"sigterm received" in proc.stderr
