from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.contract import Aggregate
from plantstream.streams.logic.windows import ACCEPTED, LATE, MINUTE_US, REPLAYED, SECOND_US, WindowEngine

T0 = 1_700_000_040 * SECOND_US - (1_700_000_040 * SECOND_US) % MINUTE_US  # a minute boundary


def feed(
    eng: WindowEngine, samples: Sequence[tuple[str, int, float | None]], offset0: int = 0
) -> tuple[list[Aggregate], list[int]]:
    out: list[Aggregate] = []
    codes: list[int] = []
    for i, (tag, ts, v) in enumerate(samples):
        stt = eng.state("p", tag, "a/b", "degC")
        codes.append(eng.add(stt, ts, v, offset0 + i, 0))
        out += eng.collect()
    return out, codes


def reference(samples: list[tuple[int, float]], start: int, length: int) -> dict[str, float | int | None]:
    """Brute force over sorted good samples (ts, v) of one tag, per the documented semantics."""
    end = start + length
    inside = [(t, v) for t, v in samples if start <= t < end]
    vs = [v for _, v in inside]
    minute = start - start % MINUTE_US
    before = [(t, v) for t, v in samples if minute <= t < start] if length == SECOND_US else []
    points = ([(start, before[-1][1])] if before else []) + inside
    integral = sum(
        points[i][1] * ((points[i + 1][0] if i + 1 < len(points) else end) - points[i][0]) for i in range(len(points))
    )
    return {
        "count": len(vs),
        "min": min(vs),
        "max": max(vs),
        "mean": statistics.fmean(vs),
        "stddev": statistics.pstdev(vs),
        "last": inside[-1][1],
        "twa": integral / (end - points[0][0]),
    }


def check(agg: Aggregate, ref: dict[str, float | int | None]) -> None:
    assert agg.count == ref["count"]
    for f in ("min", "max", "mean", "stddev", "last", "twa"):
        assert getattr(agg, f) == pytest.approx(ref[f], rel=1e-9, abs=1e-9), f


def test_streams_windows_one_second_stats_and_emission_after_lateness() -> None:
    eng = WindowEngine(allowed_lateness_us=500_000)
    pts = [(T0 + 100_000, 1.0), (T0 + 400_000, 3.0), (T0 + 900_000, 2.0)]
    out, _ = feed(eng, [("x", t, v) for t, v in pts])
    assert out == []  # watermark T0+0.9 s: window [T0, T0+1 s) still open
    out, _ = feed(eng, [("x", T0 + 1_400_000, 5.0)])
    assert out == []  # 1.4 s < end + lateness (1.5 s)
    out, _ = feed(eng, [("x", T0 + 1_500_000, 5.0)])
    assert [a.window for a in out] == ["1s"] and out[0].start_us == T0
    check(out[0], reference(pts, T0, SECOND_US))
    assert out[0].twa == pytest.approx((1 * 0.3 + 3 * 0.5 + 2 * 0.1) / 0.9)  # from the first sample on


def test_streams_windows_carry_in_within_minute() -> None:
    eng = WindowEngine(allowed_lateness_us=0)
    out, _ = feed(eng, [("x", T0 + 500_000, 10.0), ("x", T0 + 1_500_000, 20.0), ("x", T0 + 3_000_000, 0.0)])
    second = next(a for a in out if a.start_us == T0 + SECOND_US)
    assert second.twa == pytest.approx(15.0)  # 10 held for 0.5 s then 20 for 0.5 s


def test_streams_windows_bad_samples_counted_not_aggregated() -> None:
    eng = WindowEngine(allowed_lateness_us=0)
    out, _ = feed(eng, [("x", T0 + 1, None), ("x", T0 + 2, 4.0), ("x", T0 + 3, None), ("x", T0 + 2 * SECOND_US, 1.0)])
    agg = next(a for a in out if a.start_us == T0)
    assert (agg.count, agg.bad_count, agg.mean) == (1, 2, 4.0)
    out, _ = feed(eng, [("y", T0 + 1, None), ("y", T0 + 2 * SECOND_US, None)])
    only_bad = next(a for a in out if a.tag == "y")
    assert (only_bad.count, only_bad.bad_count, only_bad.mean, only_bad.twa) == (0, 1, None, None)


def test_streams_windows_late_data_is_reported_not_merged() -> None:
    eng = WindowEngine(allowed_lateness_us=200_000)
    out, codes = feed(eng, [("x", T0 + 100, 1.0), ("x", T0 + 1_300_000, 2.0), ("x", T0 + 500, 99.0)])
    assert codes == [ACCEPTED, ACCEPTED, LATE]
    first = next(a for a in out if a.start_us == T0)
    assert first.max == 1.0 and first.count == 1
    assert eng.stats.late == 1
    # a gap window that was never opened is late too once the watermark passed it
    _, codes = feed(eng, [("x", T0 + 3_500_000, 1.0), ("x", T0 + 2_100_000, 1.0)])
    assert codes == [ACCEPTED, LATE]


def test_streams_windows_out_of_order_within_lateness_is_merged_in_time_order() -> None:
    eng = WindowEngine(allowed_lateness_us=2 * SECOND_US)
    pts = [(T0 + 800_000, 8.0), (T0 + 200_000, 2.0), (T0 + 1_100_000, 11.0), (T0 + 500_000, 5.0)]
    out, codes = feed(eng, [("x", t, v) for t, v in pts] + [("x", T0 + 4 * SECOND_US, 0.0)])
    assert all(c == ACCEPTED for c in codes)
    first = next(a for a in out if a.start_us == T0 and a.window == "1s")
    check(first, reference(sorted(pts), T0, SECOND_US))
    assert first.last == 8.0


def test_streams_windows_per_tag_watermark_outage_replay_not_late() -> None:
    eng = WindowEngine(allowed_lateness_us=SECOND_US)
    live = [("live", T0 + 40 * SECOND_US + i * 100_000, 1.0) for i in range(30)]
    replay = [("old", T0 + i * SECOND_US, float(i)) for i in range(30)]  # 30 s outage re-sent in order
    _, codes = feed(eng, [s for pair in zip(live, replay, strict=True) for s in pair])
    assert all(c == ACCEPTED for c in codes)
    assert eng.stats.late == 0


def test_streams_windows_idle_timeout_closes_and_later_data_in_minute_is_late() -> None:
    eng = WindowEngine(allowed_lateness_us=SECOND_US, idle_timeout_us=5 * SECOND_US)
    stt = eng.state("p", "x", "a/b", "degC")
    assert eng.add(stt, T0 + 10, 1.0, 0, now_us=1_000) == ACCEPTED
    assert eng.collect() == []
    assert eng.tick(now_us=1_000 + 4 * SECOND_US) == []
    out = eng.tick(now_us=1_000 + 5 * SECOND_US)
    assert sorted(a.window for a in out) == ["1m", "1s"]
    assert eng.add(stt, T0 + 30 * SECOND_US, 1.0, 1, now_us=0) == LATE  # its minute was published


@given(
    st.lists(
        st.tuples(st.integers(0, 3 * MINUTE_US - 1), st.floats(-1e3, 1e3, allow_nan=False)), min_size=1, max_size=120
    ),
    st.integers(0, 3 * SECOND_US),
)
@settings(max_examples=150, deadline=None)
def test_streams_windows_match_brute_force_reference(samples: list[tuple[int, float]], lateness: int) -> None:
    """Arbitrary arrival order: accepted samples aggregate exactly as the reference computes."""
    eng = WindowEngine(allowed_lateness_us=lateness)
    out, codes = feed(eng, [("x", T0 + t, v) for t, v in samples])
    out += eng.flush()
    accepted = sorted((T0 + t, v) for (t, v), c in zip(samples, codes, strict=True) if c == ACCEPTED)
    stable: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for (t, v), c in zip(samples, codes, strict=True):  # arrival order within equal timestamps
        if c == ACCEPTED:
            stable[T0 + t].append((T0 + t, v))
    ordered = [p for ts in sorted(stable) for p in stable[ts]]
    assert len(ordered) == len(accepted)
    seen = set()
    for agg in out:
        key = (agg.window, agg.start_us)
        assert key not in seen  # each window exactly once
        seen.add(key)
        check(agg, reference(ordered, agg.start_us, SECOND_US if agg.window == "1s" else MINUTE_US))
    assert sum(a.count for a in out if a.window == "1s") == len(ordered)
    assert sum(a.count for a in out if a.window == "1m") == len(ordered)
    assert codes.count(LATE) == eng.stats.late
    # Nothing else refused but a second copy of a time already accepted (one reading per time).
    assert all(
        c == REPLAYED and T0 + t in stable
        for (t, _), c in zip(samples, codes, strict=True)
        if c not in (ACCEPTED, LATE)
    )


def run_with_crash(samples: Sequence[tuple[str, int, float]], crash_at: int) -> tuple[list[Aggregate], list[Aggregate]]:
    """Full run, and a run that 'crashes' after ``crash_at`` records and restarts from the safe
    offset with the checkpoint; returns (all emitted without crash, emitted after the restart)."""
    full, _ = feed(WindowEngine(allowed_lateness_us=SECOND_US), samples)
    eng = WindowEngine(allowed_lateness_us=SECOND_US)
    feed(eng, samples[:crash_at])
    safe = eng.safe_offset()
    safe = crash_at if safe is None else safe
    horizons = eng.checkpoint()
    again = WindowEngine(allowed_lateness_us=SECOND_US)
    again.restore(horizons)
    replayed, codes = feed(again, samples[safe:], offset0=safe)
    assert LATE not in codes  # the input has no late data; replays are REPLAYED, not late
    return full, replayed


@given(st.integers(1, 399), st.integers(1, 4))
@settings(max_examples=60, deadline=None)
def test_streams_windows_replay_from_safe_offset_reemits_identical(crash_at: int, ntags: int) -> None:
    samples = [(f"t{k}", T0 + i * 700_000 + k * 1000, math.sin(i + k)) for i in range(100) for k in range(ntags)]
    samples = samples[:400]
    crash_at = min(crash_at, len(samples) - 1)
    full, replayed = run_with_crash(samples, crash_at)
    by_key = {(a.tag, a.window, a.start_us): a for a in full}
    assert len(by_key) == len(full)
    for a in replayed:
        assert by_key[(a.tag, a.window, a.start_us)] == a  # identical upsert, never a partial window
    # and nothing closed after the crash point is missing from the replay
    before_crash, _ = feed(WindowEngine(allowed_lateness_us=SECOND_US), samples[:crash_at])
    assert {(a.tag, a.window, a.start_us) for a in full} - {(a.tag, a.window, a.start_us) for a in before_crash} <= {
        (a.tag, a.window, a.start_us) for a in replayed
    }


def test_streams_windows_deterministic_for_same_input() -> None:
    samples = [(f"t{i % 3}", T0 + (i * 37_123) % (90 * SECOND_US), float(i)) for i in range(2000)]
    a, ca = feed(WindowEngine(), samples)
    b, cb = feed(WindowEngine(), samples)
    assert a == b and ca == cb and len(a) > 0


def test_streams_windows_safe_offset_tracks_oldest_open_window() -> None:
    eng = WindowEngine(allowed_lateness_us=0)
    feed(eng, [("x", T0 + 10, 1.0), ("y", T0 + 20, 1.0)], offset0=5)
    assert eng.safe_offset() == 5
    feed(eng, [("x", T0 + MINUTE_US + 1, 1.0)], offset0=7)  # x's first minute closes; y still open
    assert eng.safe_offset() == 6


def test_streams_windows_replay_after_out_of_order_arrival_keeps_the_earliest_record() -> None:
    # Second 1 gets a record before second 0 does: the minute's replay must start at that record.
    samples = [
        ("x", T0 + 1_100_000, 1.0),  # offset 0, second 1
        ("x", T0 + 900_000, 2.0),  # offset 1, second 0 (out of order, within lateness)
        ("x", T0 + 2_500_000, 3.0),
        ("x", T0 + 3_500_000, 4.0),  # closes seconds 0 and 1 into the open minute
        ("x", T0 + MINUTE_US + 2_500_000, 5.0),  # closes the minute
    ]
    eng = WindowEngine(allowed_lateness_us=SECOND_US)
    feed(eng, samples[:4])
    assert eng.safe_offset() == 0
    full, replayed = run_with_crash(samples, crash_at=4)
    minute = [a for a in replayed if a.window == "1m"]
    assert [a.count for a in minute] == [4]
    assert minute == [a for a in full if a.window == "1m"]


def test_streams_windows_same_time_twice_is_one_reading() -> None:
    """The database keeps one reading per (tag, time); a second copy under a new seq (an OPC-UA
    value reported again with its source time) must not count twice (chaos run: 2 vs 1)."""
    eng = WindowEngine(allowed_lateness_us=0)
    pts = [(T0 + 100_000, 1.0), (T0 + 100_000, 1.0), (T0 + 500_000, 4.0), (T0 + 300_000, 2.0), (T0 + 100_000, 1.0)]
    out, codes = feed(eng, [("x", t, v) for t, v in pts])
    assert codes == [ACCEPTED, REPLAYED, ACCEPTED, ACCEPTED, REPLAYED]
    out, _ = feed(eng, [("x", T0 + MINUTE_US, 0.0)])
    one_s = [a for a in out if a.window == "1s" and a.start_us == T0]
    one_m = [a for a in out if a.window == "1m" and a.start_us == T0]
    distinct = sorted(set(pts))
    assert len(one_s) == 1 and one_s[0].count == 3
    check(one_s[0], reference(distinct, T0, SECOND_US))
    assert len(one_m) == 1 and one_m[0].count == 3
