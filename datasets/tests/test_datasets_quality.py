"""Quality counts and unit codes (pure)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.datasets.logic.quality import TagQuality
from plantstream.datasets.logic.units import ucum


def _naive(k: list[int], valid: list[bool]) -> tuple[int, int]:
    gaps, longest, run = 0, 0, 0
    for i, (kk, ok) in enumerate(zip(k, valid, strict=True)):
        cont = i > 0 and kk == k[i - 1] + 1 and not valid[i - 1]
        if ok:
            run = 0
            continue
        run = run + 1 if cont else 1
        gaps += 0 if cont else 1
        longest = max(longest, run)
    return gaps, longest


def test_gaps_by_hand() -> None:
    q = TagQuality()
    k = np.array([0, 1, 2, 3, 4, 7, 8, 9], np.int64)  # rows 5, 6 left out: a hole, not a gap
    valid = np.array([1, 0, 0, 1, 0, 0, 0, 1], np.bool_)
    q.update(k[:3], valid[:3], valid[:3])
    q.update(k[3:], valid[3:], np.zeros(5, np.bool_))
    assert (q.rows, q.valid, q.observed, q.gaps, q.longest_gap_rows) == (8, 3, 1, 3, 2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=60), st.data())
def test_gaps_do_not_depend_on_how_rows_are_cut(steps: list[tuple[int, bool]], data: st.DataObject) -> None:
    k = np.cumsum([s for s, _ in steps]).astype(np.int64)
    valid = np.array([v for _, v in steps], np.bool_)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(k) - 1)), max_size=5)))
    q = TagQuality()
    for a, b in zip([0, *cuts], [*cuts, len(k)], strict=True):
        q.update(k[a:b], valid[a:b], valid[a:b])
    assert (q.gaps, q.longest_gap_rows) == _naive(k.tolist(), valid.tolist())
    assert q.rows == len(k) and q.valid == int(valid.sum())


def test_ucum_codes_beside_the_display_form() -> None:
    assert ucum("m**3/h") == "m3/h"
    assert ucum("degC") == "Cel" and ucum("°C") == "Cel"
    assert ucum("percent") == "%" and ucum("%") == "%"
    assert ucum("m/min") == "m/min" and ucum("MPa") == "MPa" and ucum("cN") == "cN"
    assert ucum("kg/m**3") == "kg/m3" and ucum("m/s^2") == "m/s2"
    assert ucum("dtex") == "dg/km" and ucum("cN/dtex") == "cN/(dg/km)"
    assert ucum("") is None and ucum("1") == "1"
    assert ucum("furlongs") is None  # unknown: no code rather than a wrong one
