"""Issue 15 item 4 (clock abuse) and item 8 (NaN/inf), through the pure processor."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.contract import Aggregate, Origin, Quality, Reading, TagMeta
from plantstream.producers.codec import encode_readings
from plantstream.streams.config import StreamsConfig
from plantstream.streams.logic.lot_tags import LotTagSpec
from plantstream.streams.logic.processor import Output, Processor, SharedContext

EQ = "acme/duisburg/steelmaking/caster1"
NOW = 1_796_000_000_000_000 - 1_796_000_000_000_000 % 60_000_000  # the worker's clock, a minute boundary
Y9999 = 253_402_300_799_000_000  # 9999-12-31T23:59:59Z
Y1970 = 1_000_000


def reading(tag: str, ts: int, value: float | str, seq: int, unit: str = "degC") -> Reading:
    return Reading("steel", EQ, tag, ts, value, unit, Quality.GOOD, Origin.OPCUA, "edge1", seq)


def worker_processor(shared: SharedContext | None = None, **kw: object) -> Processor:
    """A processor configured like the worker: StreamsConfig defaults (7 days / 10 minutes)."""
    cfg = StreamsConfig.model_validate({"allowed_lateness_s": 0.5, **kw}).processor()
    return Processor(shared or SharedContext(), cfg)


def run(p: Processor, batches: list[list[Reading]]) -> Output:
    out = Output()
    for off, b in enumerate(batches):
        out.extend(p.process_raw(encode_readings(b), f"raw/0/{off}", off, NOW))
    return out


def seconds(aggs: list[Aggregate], tag: str) -> list[int]:
    return [a.start_us for a in aggs if a.tag == tag and a.window == "1s"]


def test_streams_clock_defaults() -> None:
    cfg = StreamsConfig().processor()
    assert cfg.clock_past_s == 7 * 86400 and cfg.clock_future_s == 600


def test_streams_year_9999_and_1970_readings_do_not_stop_aggregates() -> None:
    p = worker_processor()
    before = [reading("temp", NOW - 10_000_000 + i * 250_000, 20.0 + i, i + 1) for i in range(8)]  # 2 s
    abuse = [reading("temp", Y9999, 99.0, 9), reading("temp", Y1970, 98.0, 10)]
    after = [reading("temp", NOW - 8_000_000 + i * 250_000, 30.0, 11 + i) for i in range(12)]  # 3 s more
    out = run(p, [before, abuse, after])
    clean_abuse = out.clean[1]
    assert clean_abuse.value == [99.0, 98.0], "kept, with the value"
    assert clean_abuse.quality == [Quality.BAD, Quality.BAD]
    reasons = clean_abuse.reason
    assert reasons[0] is not None and "ahead of the receiving clock" in reasons[0]
    assert reasons[1] is not None and "behind the receiving clock" in reasons[1]
    assert out.clock_rejected == 2
    # Normal readings after the abuse are not late and their seconds close as usual.
    assert out.late == 0
    assert all(r is None for b in (out.clean[0], out.clean[2]) for r in b.reason)
    s0 = NOW - 10_000_000
    assert seconds(out.aggregates, "temp") == [s0 + k * 1_000_000 for k in range(4)]
    assert all(a.bad_count == 0 and a.count == 4 for a in out.aggregates), "abusive readings are not windowed"
    # The checkpoint carries no horizon from the abuse either.
    assert all(h < NOW for _, _, h in p.checkpoint()["horizons"])
    flushed = p.flush().aggregates
    assert max(a.start_us for a in flushed) < NOW


def test_streams_clock_abuse_does_not_move_lot_tag_time() -> None:
    spec = LotTagSpec("steel", "caster1.current_heat", "heat", None, "", frozenset())
    shared = SharedContext()
    p = worker_processor(shared, lot_tags=[{"plant": "steel", "tag": "caster1.current_heat", "lot_kind": "heat"}])
    assert p.config.lot_tags == (spec,)
    out = run(
        p,
        [
            [reading("caster1.current_heat", Y9999, "H9", 1, "")],
            [reading("caster1.current_heat", NOW - 5_000_000, "H1", 2, "")],
        ],
    )
    assert [(e.kind.value, e.lot) for e in out.context] == [("lot_start", "H1")]
    assert shared.lots.lot_at("steel", EQ, NOW - 1_000_000) == "H1"


def test_streams_clock_window_is_configurable() -> None:
    p = worker_processor(clock_future_s=3600.0, clock_past_s=60.0)
    out = run(p, [[reading("t", NOW + 1800_000_000, 1.0, 1), reading("t", NOW - 120_000_000, 1.0, 2)]])
    assert out.clean[0].quality == [Quality.GOOD, Quality.BAD]


@pytest.mark.parametrize("with_meta", [False, True])
@pytest.mark.parametrize("unit", ["degC", "degF", "no-such-unit"])
def test_streams_nonfinite_values_are_bad_and_not_windowed(with_meta: bool, unit: str) -> None:
    shared = SharedContext()
    if with_meta:
        assert shared.register_tag(TagMeta("steel", "t", EQ, "degC")) is None
    p = worker_processor(shared)
    vals = [1.0, math.nan, 3.0, math.inf, -math.inf, 5.0]
    rows = [reading("t", NOW - 5_000_000 + i * 100_000, v, i + 1, unit) for i, v in enumerate(vals)]
    out = run(p, [rows, [reading("t", NOW - 2_000_000, 1.0, 99, unit)]])
    clean = out.clean[0]
    for i in (1, 3, 4):
        assert clean.quality[i] == Quality.BAD
        reason = clean.reason[i]
        assert reason is not None and "not finite" in reason
    for i in (0, 2, 5):
        assert clean.quality[i] != Quality.BAD
    (agg,) = [a for a in out.aggregates if a.window == "1s" and a.start_us == NOW - 5_000_000]
    assert agg.count == 3 and agg.bad_count == 3
    for stat in (agg.mean, agg.min, agg.max, agg.twa, agg.stddev):
        assert stat is not None and math.isfinite(stat)


def test_streams_conversion_overflow_is_bad() -> None:
    p = worker_processor()
    out = run(p, [[reading("t", NOW - 1_000_000, 1e308, 1, "MPa")]])
    assert out.clean[0].quality == [Quality.BAD]
    assert "not finite" in (out.clean[0].reason[0] or "")


# Plant-sized finite values (stats of values near float max overflow by arithmetic, not input)
# mixed with every non-finite value.
_VALUES = st.one_of(st.floats(-1e12, 1e12), st.sampled_from([math.nan, math.inf, -math.inf, -math.nan]))


@given(st.lists(_VALUES, min_size=1, max_size=40))
@settings(max_examples=150, deadline=None)
def test_streams_no_window_statistic_is_ever_nonfinite(values: list[float]) -> None:
    p = worker_processor()
    rows = [reading("t", NOW - 3_000_000 + i * 10_000, v, i + 1, "degF") for i, v in enumerate(values)]
    out = run(p, [rows])
    aggs = out.aggregates + p.flush().aggregates
    assert sum(a.count + a.bad_count for a in aggs if a.window == "1s") == len(values)
    for a in aggs:
        stats = (a.mean, a.min, a.max, a.last, a.twa, a.stddev)
        assert all(s is None or math.isfinite(s) for s in stats)


def test_streams_checkpoint_poisoned_by_a_far_future_reading_is_not_restored() -> None:
    """A checkpoint written before the clock window existed holds a year-9999 horizon (and lot-tag
    mark); restored as is, every later reading would be skipped as a replay, for good."""
    poisoned = {
        "version": 1,
        "offset": 0,
        "horizons": [["steel", "temp", Y9999 + 60_000_000], ["steel", "other", NOW - 60_000_000]],
        "lot_tags": [["steel", "caster1.current_heat", Y9999]],
    }
    p = worker_processor(lot_tags=[{"plant": "steel", "tag": "caster1.current_heat", "lot_kind": "heat"}])
    assert p.restore(poisoned, NOW) == 2
    assert [h for _, t, h in p.checkpoint()["horizons"] if t == "other"] == [NOW - 60_000_000]
    batch = [reading("temp", NOW - 5_000_000 + i * 250_000, 1.0, i + 1) for i in range(8)]
    batch.append(reading("caster1.current_heat", NOW - 4_000_000, "H2", 100, ""))
    out = run(p, [batch])
    assert seconds(out.aggregates, "temp") == [NOW - 5_000_000], "aggregated, not skipped as replayed"
    assert [e.lot for e in out.context] == ["H2"]
