"""Resampling and gap rules against hand-computed grids (no database)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.datasets.logic.resample import NO_LOT, Chunk, Resampler, Rows, TagPlan

S = 1_000_000


def run(rs: Resampler, readings: list[tuple[int, int, Any, int]], cuts: list[int] | None = None) -> Rows:
    """Feed (tag, t_us, value, lot) readings in windows cut at ``cuts`` (grid row indexes)."""
    tag = np.array([r[0] for r in readings], np.int32)
    t = np.array([r[1] for r in readings], np.int64)
    lot = np.array([r[3] for r in readings], np.int32)
    vals = [r[2] for r in readings]
    is_text = any(isinstance(v, str) for v in vals)
    value = np.array([0.0 if isinstance(v, str) else float(v) for v in vals], np.float64)
    ivalue = np.array([0 if isinstance(v, str) else int(v) for v in vals], np.int64)
    text = np.array(vals, dtype=object) if is_text else None
    k_of = (t - rs.start_us) // rs.interval_us
    bounds = [rs.first_k, *sorted(c for c in (cuts or []) if rs.first_k < c < rs.last_k), rs.last_k]
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        m = (k_of >= lo) & (k_of < hi)
        parts.append(
            rs.feed(lo, hi, Chunk(tag[m], t[m], value[m], lot[m], ivalue[m], text[m] if text is not None else None))
        )
    parts.append(rs.finish())
    return Rows(
        np.concatenate([p.k for p in parts]),
        [np.concatenate([p.values[i] for p in parts]) for i in range(len(rs.tags))],
        [np.concatenate([p.valid[i] for p in parts]) for i in range(len(rs.tags))],
        np.concatenate([p.lot for p in parts]),
    )


def col_values(rows: Rows, i: int) -> list[Any]:
    out = []
    for v, ok in zip(rows.values[i], rows.valid[i], strict=True):
        out.append((v.item() if hasattr(v, "item") else v) if ok else None)
    return out


def test_bucket_last_value_and_none_rule() -> None:
    rs = Resampler(0, 10 * S, 4, [TagPlan("a", "float", "none")])
    rows = run(rs, [(0, 1 * S, 1.0, 1), (0, 9 * S, 9.0, 1), (0, 25 * S, 25.0, 1)])
    # bucket 0: last of 1 s and 9 s; bucket 1 empty; bucket 2: 25 s; bucket 3 empty.
    assert rows.k.tolist() == [0, 1, 2, 3]
    assert col_values(rows, 0) == [9.0, None, 25.0, None]


def test_locf_respects_max_gap_from_the_reading_time() -> None:
    rs = Resampler(0, 10 * S, 6, [TagPlan("a", "float", "locf", 25 * S)])
    rows = run(rs, [(0, 3 * S, 3.0, 1), (0, 52 * S, 52.0, 1)])
    # t_k - 3 s: 10-3=7, 20-3=17 <= 25 filled; 30-3=27 > 25 null; 40 null; 50: observed 52.
    assert col_values(rows, 0) == [3.0, 3.0, 3.0, None, None, 52.0]


def test_locf_uses_a_reading_before_the_range() -> None:
    rs = Resampler(100 * S, 10 * S, 3, [TagPlan("a", "float", "locf", 15 * S)])
    rows = run(rs, [(0, 92 * S, 7.0, 1)])
    # 100-92=8 and 110-92=18 > 15: only the first row is filled.
    assert col_values(rows, 0) == [7.0, None, None]


def test_linear_interpolates_at_bucket_start_within_max_gap() -> None:
    rs = Resampler(0, 10 * S, 6, [TagPlan("a", "float", "linear", 40 * S)])
    rows = run(rs, [(0, 5 * S, 0.0, 1), (0, 45 * S, 80.0, 1)])
    # (5 s, 0) .. (45 s, 80): 2 per second; at 10 s: 10, 20 s: 30, 30 s: 50; 45-5 = 40 <= 40.
    assert col_values(rows, 0) == [0.0, 10.0, 30.0, 50.0, 80.0, None]


def test_linear_refuses_a_gap_wider_than_max_gap_and_uses_a_reading_after_the_range() -> None:
    rs = Resampler(0, 10 * S, 3, [TagPlan("a", "float", "linear", 30 * S)])
    rows = run(rs, [(0, 5 * S, 0.0, 1), (0, 45 * S, 80.0, 1)])
    assert col_values(rows, 0) == [0.0, None, None]
    rs2 = Resampler(0, 10 * S, 3, [TagPlan("a", "float", "linear", 30 * S)])
    # The second reading (35 s) is past the range [0, 30 s); at 20 s: 10 + 20 * (20 - 15) / (35 - 15) = 15.
    rows2 = run(rs2, [(0, 15 * S, 10.0, 1), (0, 35 * S, 30.0, 1)])
    assert col_values(rows2, 0) == [None, 10.0, 15.0]


def test_exact_int_bool_and_text_with_locf() -> None:
    tags = [
        TagPlan("i", "int", "locf", 20 * S),
        TagPlan("b", "bool", "locf", 20 * S),
        TagPlan("s", "str", "locf", 20 * S),
    ]
    rs = Resampler(0, 10 * S, 3, tags)
    big = 2**53 + 1  # not representable as float64
    rows = run(rs, [(0, 1 * S, big, 1), (1, 1 * S, 1, 1), (2, 1 * S, "H001", 1)])
    assert col_values(rows, 0) == [big, big, big]
    assert col_values(rows, 1) == [True, True, True]
    assert col_values(rows, 2) == ["H001", "H001", "H001"]
    assert rows.values[0].dtype == np.int64


def test_lot_is_latest_reading_and_carried_within_gap() -> None:
    tags = [TagPlan("a", "float", "none"), TagPlan("b", "float", "none")]
    rs = Resampler(0, 10 * S, 5, tags, lot_max_gap_us=15 * S)
    rows = run(rs, [(0, 2 * S, 1.0, 7), (1, 4 * S, 1.0, 8), (0, 31 * S, 1.0, 9)])
    # row 0: latest reading (4 s) has lot 8; row 1 (10 s): 10-4 <= 15 carried; row 2 (20 s): 16 > 15.
    assert rows.lot.tolist() == [8, 8, NO_LOT, 9, 9]


readings_st = st.lists(
    st.tuples(st.integers(0, 2), st.integers(-50, 250), st.integers(-1000, 1000), st.integers(1, 4)),
    max_size=60,
    unique_by=lambda r: (r[0], r[1]),
)


@settings(max_examples=60, deadline=None)
@given(readings=readings_st, cuts=st.lists(st.integers(-20, 40), max_size=6), interval=st.sampled_from([1, 3, 10]))
def test_output_does_not_depend_on_windowing(
    readings: list[tuple[int, int, int, int]], cuts: list[int], interval: int
) -> None:
    tags = [TagPlan("a", "float", "locf", 7 * S), TagPlan("b", "float", "linear", 12 * S), TagPlan("c", "int", "none")]
    data = [(tg, t * S, v, lot) for tg, t, v, lot in readings]

    def make() -> Resampler:
        return Resampler(0, interval * S, 200 // interval, tags, lot_max_gap_us=9 * S)

    whole = run(make(), data)
    cut = run(make(), data, cuts)
    assert whole.k.tolist() == list(range(200 // interval))
    assert cut.k.tolist() == whole.k.tolist()
    for i in range(3):
        assert col_values(cut, i) == col_values(whole, i)
    assert cut.lot.tolist() == whole.lot.tolist()
