"""The sim clock and run identity (pure code): no stamp after the wall clock, a fast run's history
ends now, lot ids are the run's own and reproducible for the same start."""

from __future__ import annotations

import pytest

from plantstream.demo import demo_speed
from plantstream.sim.catalog import PLANTS
from plantstream.sim.engine import SimClock, run_id
from plantstream.sim.plants import build

NOW = 1_796_000_000_123_456  # 2026-11-30, not on a millisecond boundary
S = 1_000_000


def emitted_by(clock: SimClock, start_us: int, end_us: int, step_us: int) -> list[tuple[int, int]]:
    """(wall time it became due, stamp) of every sample a loop polling every ``step_us`` sends."""
    out: list[tuple[int, int]] = []
    for wall in range(start_us, end_us + 1, step_us):
        for k in range(len(out), clock.due_count(wall, start_us)):
            out.append((wall, clock.stamp(k)))
    return out


@pytest.mark.parametrize(
    ("speed", "rate", "duration_s", "backfill_s"),
    [(300.0, 2.0, 30.0, None), (20.0, 4.0, 300.0, None), (1.0, 4.0, 20.0, None), (20.0, 4.0, 60.0, 120.0),
     (20.0, 4.0, None, None), (0.5, 2.0, 10.0, None), (7.3, 3.7, 11.0, None)],
)  # fmt: skip
def test_no_sample_is_due_before_its_stamp(
    speed: float, rate: float, duration_s: float | None, backfill_s: float | None
) -> None:
    clock = SimClock.backfill(NOW, speed, rate, duration_s, backfill_s)
    assert clock.t0_us <= NOW and clock.t0_us % 1000 == 0
    sent = emitted_by(clock, NOW, NOW + round((duration_s or 60.0) * S), 10_007)
    assert len(sent) > 1
    assert all(stamp <= wall for wall, stamp in sent), [(w, s) for w, s in sent if s > w][:3]
    # due_count is exactly the samples whose due time has come (both sides of every boundary).
    for k in range(len(sent)):
        due = clock.due_us(k, NOW)
        assert clock.due_count(due, NOW) == k + 1 and clock.due_count(due - 1, NOW) == k
        assert clock.stamp(k) <= due


@pytest.mark.parametrize(("speed", "rate", "duration_s"), [(300.0, 2.0, 30.0), (20.0, 4.0, 300.0), (1200.0, 4.0, 6)])
def test_fast_run_backfills_history_that_ends_now(speed: float, rate: float, duration_s: float) -> None:
    clock = SimClock.backfill(NOW, speed, rate, duration_s)
    assert NOW - clock.t0_us == pytest.approx((speed - 1) * duration_s * S, abs=1000)
    n = round(duration_s * rate)
    end = NOW + round(duration_s * S)
    # On schedule throughout (the fast-forward is never held back by the wall clock) ...
    assert all(clock.due_us(k, NOW) == clock.schedule_us(k, NOW) for k in range(n + 1))
    # ... and the samples of the run reach the wall clock as it ends.
    assert clock.due_count(end, NOW) == n + 1
    assert end - clock.step_us - 1000 <= clock.stamp(n - 1) <= end
    assert end - 1000 <= clock.stamp(n) <= end


def test_without_backfill_sim_time_runs_at_wall_pace() -> None:
    # No duration at speed 20: nothing to fast-forward, so the stamps gate (one sample per 5 s).
    clock = SimClock.backfill(NOW, 20.0, 4.0, None)
    assert clock.step_us == 5 * S and NOW - 1000 < clock.t0_us <= NOW
    assert clock.due_count(NOW + 60 * S, NOW) == 13  # samples 0..12 are stamped by then
    assert clock.stamp(12) <= NOW + 60 * S < clock.stamp(13)
    # A shorter backfill than (speed - 1) * duration: fast until the stamps catch up, then gated.
    short = SimClock.backfill(NOW, 20.0, 4.0, 300.0, backfill_s=95.0)
    caught_up = next(k for k in range(10_000) if short.due_us(k, NOW) > short.schedule_us(k, NOW))
    assert 0 < short.schedule_us(caught_up, NOW) - NOW <= 6 * S  # 95 s of history, gaining 19 s per s
    with pytest.raises(ValueError):
        SimClock.backfill(NOW, 20.0, 4.0, 300.0, backfill_s=-1.0)


def test_run_ids_differ_between_starts_and_repeat_for_the_same_start() -> None:
    assert run_id(NOW) == run_id(NOW + 999 - NOW % 1000)  # the same millisecond
    assert len({run_id(NOW + d) for d in (0, 1000, 2000, 3_600 * S, 86_400 * S)}) == 5
    assert run_id(0) == "0" and run_id(36_000) == "10"
    a, b = SimClock.backfill(NOW, 20.0, 4.0, 300.0), SimClock.backfill(NOW + 5 * S, 20.0, 4.0, 300.0)
    assert a.run != b.run and SimClock.backfill(NOW, 20.0, 4.0, 300.0).run == a.run


def lot_events(plant: str, seed: int, clock: SimClock, hours: float) -> list[tuple[str, int, str]]:
    m = build(plant, seed, clock.step_us, clock.run)
    return [(e.kind.value, e.ts_us, e.lot) for e in m.events(-1.0, hours * 3600.0, clock.t0_us)]


@pytest.mark.parametrize("plant", PLANTS)
def test_lot_ids_are_the_runs_own(plant: str) -> None:
    first = SimClock.backfill(NOW, 20.0, 4.0, 300.0)
    # The next demo five minutes later backfills the same stretch of the day again.
    second = SimClock.backfill(NOW + 300 * S, 20.0, 4.0, 300.0)
    a, b = lot_events(plant, 7, first, 6), lot_events(plant, 7, second, 6)
    lots_a, lots_b = {lot for *_, lot in a}, {lot for *_, lot in b}
    assert len(lots_a) >= 5 and len(lots_b) >= 5
    assert not lots_a & lots_b
    assert all(first.run in lot for lot in lots_a)
    # The same start reproduces the same lots, ids and times; another seed shares none.
    assert lot_events(plant, 7, first, 6) == a
    assert not {lot for *_, lot in lot_events(plant, 1007, first, 6)} & lots_a


def test_demo_history_starts_after_the_previous_runs_readings() -> None:
    assert demo_speed(20.0, 300.0, NOW, None) == 20.0
    assert demo_speed(20.0, 300.0, NOW, NOW - 86_400 * S) == 20.0
    # An earlier demo ended 10 minutes ago: this one's history may not reach back among its readings.
    slower = demo_speed(20.0, 300.0, NOW, NOW - 600 * S)
    assert 1.0 < slower < 20.0
    clock = SimClock.backfill(NOW, slower, 4.0, 300.0)
    assert clock.t0_us > NOW - 600 * S and clock.due_us(1200, NOW) == clock.schedule_us(1200, NOW)
    # Readings stamped in the future by an older simulator: nothing to backfill.
    assert demo_speed(20.0, 300.0, NOW, NOW + 600 * S) == 1.0
    assert demo_speed(0.5, 300.0, NOW, NOW - 600 * S) == 0.5
