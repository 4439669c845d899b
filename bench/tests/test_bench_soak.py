"""The soak's verdicts without services: is memory flat, did the buffer stay bounded, what was dropped."""

from __future__ import annotations

import math

import pytest

from plantstream.bench.model import judge_flat
from plantstream.bench.soak import Sample, SoakConfig, SoakResult, analyse, markdown


def _wobble(i: int) -> float:
    # Deterministic +-1.5 MB noise, like an allocator returning and taking pages.
    return 1.5 * math.sin(i * 1.7)


def test_flat_memory_with_noise_and_warmup_is_flat() -> None:
    # 60 MB warming up to 90 MB in the first two minutes, then level for eight.
    pts = [(t * 5.0, min(90.0, 60.0 + t * 5.0 / 4.0) + _wobble(t)) for t in range(120)]
    v = judge_flat(pts)
    assert v.flat, v.reason
    assert abs(v.slope_mb_per_min) < 0.5


def test_steady_growth_is_a_leak() -> None:
    pts = [(t * 5.0, 80.0 + 2.0 * t * 5.0 / 60.0 + _wobble(t)) for t in range(120)]  # 2 MB/min
    v = judge_flat(pts)
    assert not v.flat
    assert v.slope_mb_per_min == pytest.approx(2.0, abs=0.2)
    assert "MB/min" in v.reason


def test_slow_growth_under_the_limit_passes_and_spike_fails() -> None:
    slow = [(t * 5.0, 80.0 + 0.5 * t * 5.0 / 60.0) for t in range(120)]  # 0.5 MB/min
    assert judge_flat(slow).flat
    spiky = [(t * 5.0, 80.0 + (30.0 if t == 20 else 0.0)) for t in range(120)]
    v = judge_flat(spiky)
    assert not v.flat and v.above_median_mb == pytest.approx(30.0)
    assert "above the median" in v.reason


def test_too_few_samples_are_not_flat() -> None:
    assert not judge_flat([(0.0, 1.0), (5.0, 1.0)]).flat


def _sample(t: float, phase: str, rss: float, buf: int, dropped: int, rin: int, out: int) -> Sample:
    return Sample(t, phase, rss, buf, buf // 20, dropped, rin, out, buf / 1e6)


def test_analyse_reports_rates_cap_and_drops() -> None:
    cap = 1_000_000
    cfg = SoakConfig(minutes=2, buffer_max_bytes=cap)
    res = SoakResult(cfg, outage_at_s=60.0)
    for i in range(12):  # steady: 8000 readings/s in and out, buffer nearly empty
        t = i * 5.0
        res.samples.append(_sample(t, "steady", 100.0, 20_000, 0, int(8000 * t), int(8000 * t)))
    for i in range(12):  # outage: buffer grows 200 kB per sample to the cap, then drops
        t = 60.0 + i * 5.0
        buf = min(cap, 200_000 * (i + 1))
        dropped = max(0, 200_000 * (i + 1) - cap) // 20
        res.samples.append(_sample(t, "outage", 100.5, buf, dropped, int(8000 * t), 480_000))
    analyse(res)
    assert res.steady_in_per_s == pytest.approx(8000)
    assert res.steady_out_per_s == pytest.approx(8000)
    assert res.outage_in_per_s == pytest.approx(8000)
    assert res.buffer_bounded and res.max_buffer_bytes == cap
    assert res.cap_reached_at_s == pytest.approx(80.0)
    assert res.dropped == res.samples[-1].dropped > 0
    assert res.flat is not None and res.flat.flat and res.ok
    md = markdown(res, "test")
    assert "| buffer stayed at or below the cap | yes |" in md


def test_buffer_over_its_cap_is_not_ok() -> None:
    cfg = SoakConfig(minutes=1, buffer_max_bytes=1000)
    res = SoakResult(cfg)
    res.samples = [_sample(i * 5.0, "outage", 50.0, 900 + i * 50, 10, 0, 0) for i in range(6)]
    analyse(res)
    assert not res.buffer_bounded and not res.ok
    assert "| buffer stayed at or below the cap | **no** |" in markdown(res, "test")
