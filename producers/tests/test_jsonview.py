"""Every contract message as JSON-able objects, and `plantstream topics tail --json` on the real broker."""

from __future__ import annotations

import base64
import math
import os
import subprocess
import sys

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from plantstream.config import Settings
from plantstream.contract import Aggregate, ContextEvent, ContextKind, Grade, Origin, Quality, Reading, TagMeta
from plantstream.producers import codec
from plantstream.producers.jsonview import record_objects
from plantstream.producers.kafka import ensure_contract_topics, make_producer, produce
from plantstream.producers.topics import DEADLETTER_REASON_HEADER, Topics

EQ = "acme/works/melt/lf/u1"


def _reading(i: int, value: float | int | bool | str, quality: Quality = Quality.GOOD) -> Reading:
    return Reading("steel", EQ, f"t{i % 3}", 1_700_000_000_000_000 + i, value, "degC", quality, Origin.OPCUA, "s1", i)


values = st.one_of(st.floats(allow_nan=True), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.text(max_size=20))


@given(st.lists(values, min_size=1, max_size=30))
def test_readings_round_trip_through_json(vals: list[float | int | bool | str]) -> None:
    rs = [_reading(i, v) for i, v in enumerate(vals)]
    objs = list(
        record_objects(codec.encode_readings(rs), topic="t", partition=2, offset=7, key=b"steel/" + EQ.encode())
    )
    assert len(objs) == len(rs)
    for o, r in zip(objs, rs, strict=True):
        back = orjson.loads(orjson.dumps(o))  # JSON-able as it is
        assert back["type"] == "reading" and back["topic"] == "t" and back["partition"] == 2 and back["offset"] == 7
        assert back["key"] == f"steel/{EQ}"
        assert (back["tag"], back["ts_us"], back["seq"], back["unit"]) == (r.tag, r.ts_us, r.seq, r.unit)
        assert back["quality"] == "good" and back["origin"] == "opcua"
        if isinstance(r.value, float) and not math.isfinite(r.value):
            assert back["value"] is None
        else:
            assert back["value"] == r.value and type(back["value"]) is type(r.value)


def test_every_message_kind_has_a_json_view() -> None:
    agg = Aggregate(
        "steel",
        EQ,
        "t0",
        "1s",
        start_us=1_700_000_000_000_000,
        count=3,
        bad_count=1,
        min=1.0,
        max=3.0,
        mean=2.0,
        last=3.0,
        stddev=0.5,
        twa=2.1,
        unit="degC",
        lot="L1",
    )
    ctx = ContextEvent(ContextKind.LOT_START, "steel", EQ, 5, "H1", lot_kind="heat", material="EN10025-2:S355J2")
    meta = TagMeta("steel", "t0", EQ, "degC", grade=Grade.IMPORTANT)
    dev = {"kind": "process", "plant": "steel", "tag": "t0", "start_us": 5, "peak": float("inf")}
    (a,) = record_objects(codec.encode_aggregates([agg]))
    (c,) = record_objects(codec.encode_context(ctx))
    (m,) = record_objects(codec.encode_tag_meta(meta))
    (d,) = record_objects(codec.encode_deviation_map(dev))
    assert a["type"] == "aggregate" and a["count"] == 3 and a["lot"] == "L1" and a["window"] == "1s"
    assert c["type"] == "context" and c["kind"] == "lot_start" and c["lot"] == "H1"
    assert m["type"] == "tag" and m["grade"] == "important" and m["unit"] == "degC"
    assert d["type"] == "deviation" and d["kind"] == "process" and d["peak"] is None  # JSON has no infinity
    for o in (a, c, m, d):
        orjson.dumps(o)


def test_undecodable_records_carry_bytes_reason_and_headers() -> None:
    (o,) = record_objects(b"\x00junk", headers=[(DEADLETTER_REASON_HEADER, b"undecodable: bad magic")])
    assert o["type"] == "undecodable" and "bad magic" in o["error"]
    assert base64.b64decode(o["value_b64"]) == b"\x00junk"
    assert o["headers"] == {DEADLETTER_REASON_HEADER: "undecodable: bad magic"}
    (t,) = record_objects(None)
    assert t["type"] == "undecodable" and "tombstone" in t["error"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_topics_tail_json_prints_what_was_produced(settings: Settings, settings_env: dict[str, str]) -> None:
    topics = Topics(settings.topic_prefix, settings.partitions)
    ensure_contract_topics(settings.kafka_bootstrap, topics)
    rs = [_reading(i, float(i)) for i in range(5)]
    p = make_producer(settings.kafka_bootstrap)
    produce(p, topics.clean, codec.encode_readings(rs), key=f"steel/{EQ}")
    produce(p, topics.clean, b"not plantstream", key=f"steel/{EQ}")  # one partition: order kept
    assert p.flush(30) == 0
    cmd = [sys.executable, "-m", "plantstream.cli", "topics", "tail", "clean", "--from-beginning", "--json"]
    out = subprocess.run(
        [*cmd, "--max", "2", "--idle-timeout", "20"], env=settings_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    objs = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [o["type"] for o in objs] == ["reading"] * 5 + ["undecodable"]
    assert [(o["tag"], o["ts_us"], o["value"]) for o in objs[:5]] == [(r.tag, r.ts_us, r.value) for r in rs]
    assert {o["topic"] for o in objs} == {topics.clean}

    missing = subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "topics", "tail", "no-such-topic", "--idle-timeout", "1"],
        env={**os.environ, **settings_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "no-such-topic" in missing.stderr, missing.stderr
