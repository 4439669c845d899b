"""Quality counts and unit codes (pure)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.datasets.logic.quality import Runs, TagQuality
from plantstream.datasets.logic.units import ucum


def _naive(k: list[int], valid: list[bool], min_len: int = 1) -> tuple[int, int, int]:
    """(runs of >= min_len missing rows contiguous in k, their rows, the longest)."""
    runs: list[int] = []
    for i, (kk, ok) in enumerate(zip(k, valid, strict=True)):
        if ok:
            continue
        if i > 0 and kk == k[i - 1] + 1 and not valid[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    long = [r for r in runs if r >= min_len]
    return len(long), sum(long), max(long, default=0)


def test_gaps_by_hand() -> None:
    q = TagQuality()
    k = np.array([0, 1, 2, 3, 4, 7, 8, 9], np.int64)  # rows 5, 6 left out: a hole, not a gap
    valid = np.array([1, 0, 0, 1, 0, 0, 0, 1], np.bool_)
    q.update(k[:3], valid[:3], valid[:3])
    q.update(k[3:], valid[3:], np.zeros(5, np.bool_))
    q.finish()
    assert (q.rows, q.valid, q.observed, q.gaps, q.longest_gap_rows) == (8, 3, 1, 3, 2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=60), st.data())
def test_gaps_do_not_depend_on_how_rows_are_cut(steps: list[tuple[int, bool]], data: st.DataObject) -> None:
    k = np.cumsum([s for s, _ in steps]).astype(np.int64)
    valid = np.array([v for _, v in steps], np.bool_)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(k) - 1)), max_size=5)))
    min_len = data.draw(st.integers(1, 4))
    q = TagQuality()
    r = Runs(min_len=min_len)
    for a, b in zip([0, *cuts], [*cuts, len(k)], strict=True):
        q.update(k[a:b], valid[a:b], valid[a:b])
        r.update(k[a:b], ~valid[a:b])
    q.finish()
    r.finish()
    assert (q.gaps, q.longest_gap_rows) == _naive(k.tolist(), valid.tolist())[::2]
    assert (r.count, r.rows, r.longest) == _naive(k.tolist(), valid.tolist(), min_len)
    assert q.rows == len(k) and q.valid == int(valid.sum())


def test_out_of_range_outside_spec_and_stuck() -> None:
    k = np.arange(40, dtype=np.int64)
    v = np.arange(40, dtype=np.float64)
    v[10:25] = 7.0  # rows 10..24: 15 rows of one value (row 7 is 7.0 too, but 8 and 9 differ)
    v[30:33] = 500.0  # above the range and the spec
    ok = np.ones(40, np.bool_)
    ok[35] = False
    spec_lo = np.full(40, 5.0)
    spec_hi = np.full(40, np.nan)  # no upper limit: NaN never compares
    spec_hi[30:] = 100.0
    q = TagQuality(stuck=Runs(min_len=9))  # >= 10 rows with one value
    for a, b in ((0, 12), (12, 31), (31, 40)):
        q.update(k[a:b], ok[a:b], ok[a:b], v[a:b], lo=0.0, hi=200.0, spec_lo=spec_lo[a:b], spec_hi=spec_hi[a:b])
    q.finish()
    assert (q.out_of_range.count, q.out_of_range.rows) == (1, 3)
    assert (q.outside_spec.count, q.outside_spec.rows) == (2, 5 + 3)  # rows 0..4 below 5, rows 30..32 above 100
    # Rows 10..24 hold 7.0 (15 rows, 14 "same as before"); rows 30..32 (3 rows) are too short.
    assert (q.stuck.count, q.stuck.longest) == (1, 14)
    assert q.gaps == 1 and q.valid == 39


def test_ucum_codes_beside_the_display_form() -> None:
    assert ucum("m**3/h") == "m3/h"
    assert ucum("degC") == "Cel" and ucum("°C") == "Cel"
    assert ucum("percent") == "%" and ucum("%") == "%"
    assert ucum("m/min") == "m/min" and ucum("MPa") == "MPa" and ucum("cN") == "cN"
    assert ucum("kg/m**3") == "kg/m3" and ucum("m/s^2") == "m/s2"
    assert ucum("dtex") == "dg/km" and ucum("cN/dtex") == "cN/(dg/km)"
    assert ucum("") is None and ucum("1") == "1"
    assert ucum("furlongs") is None  # unknown: no code rather than a wrong one
