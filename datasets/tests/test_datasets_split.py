"""Split by lot: no lot in two splits (property-based), proportions, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.domain.split import SPLITS, SplitError, assign_splits, lot_counts

props_st = st.sampled_from(
    [
        {"train": 0.7, "validation": 0.15, "test": 0.15},
        {"train": 0.8, "validation": 0.0, "test": 0.2},
        {"train": 0.5, "validation": 0.25, "test": 0.25},
        {"train": 1.0},
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    lots=st.lists(st.text(min_size=1, max_size=6), min_size=3, max_size=80, unique=True),
    props=props_st,
    seed=st.integers(0, 2**32),
)
def test_every_lot_in_exactly_one_split(lots: list[str], props: dict[str, float], seed: int) -> None:
    out = assign_splits(lots, props, seed)
    assert set(out) == set(lots)  # every lot placed, a dict cannot place one twice
    assert set(out.values()) <= {s for s in SPLITS if props.get(s, 0) > 0}
    # Rows are routed by lot: simulate rows of each lot and check no lot appears in two splits.
    rows = [(lot, out[lot]) for lot in lots for _ in range(3)]
    seen: dict[str, set[str]] = {}
    for lot, s in rows:
        seen.setdefault(lot, set()).add(s)
    assert all(len(v) == 1 for v in seen.values())
    # Deterministic and independent of input order.
    assert assign_splits(list(reversed(lots)), props, seed) == out
    counts = lot_counts(len(lots), props)
    for s in SPLITS:
        assert sum(1 for v in out.values() if v == s) == counts[s]
        if props.get(s, 0) > 0:
            assert counts[s] >= 1
            assert abs(counts[s] - props[s] * len(lots)) <= 1 + len(SPLITS)


def test_seed_changes_the_assignment() -> None:
    lots = [f"L{i:03d}" for i in range(40)]
    props = {"train": 0.5, "validation": 0.25, "test": 0.25}
    assert assign_splits(lots, props, 1) != assign_splits(lots, props, 2)


def test_too_few_lots_is_refused() -> None:
    with pytest.raises(SplitError, match="2 lot"):
        assign_splits(["a", "b"], {"train": 0.6, "validation": 0.2, "test": 0.2}, 0)


def test_bad_proportions_are_refused() -> None:
    with pytest.raises(SplitError, match="sum to 1"):
        lot_counts(10, {"train": 0.5, "test": 0.2})
    with pytest.raises(SplitError, match="unknown split"):
        lot_counts(10, {"train": 0.5, "holdout": 0.5})
