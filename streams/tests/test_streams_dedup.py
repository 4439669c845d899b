from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.streams.logic.dedup import Deduplicator


def feed(d: Deduplicator, batches: list[list[int]]) -> list[int]:
    kept: list[int] = []
    for seqs in batches:
        ts = [s * 1000 for s in seqs]
        keep = d.filter("steel", "a/b", "edge1", seqs, ts)
        kept += seqs if keep is None else [seqs[i] for i in keep]
    return kept


def test_streams_dedup_fast_path_returns_none() -> None:
    d = Deduplicator()
    assert d.filter("p", "e", "s", [1, 2, 3], [1, 2, 3]) is None
    assert d.filter("p", "e", "s", [4, 5], [4, 5]) is None
    assert d.filter("p", "e", "s", [3, 4, 5, 6], [3, 4, 5, 6]) == [3]
    assert d.stats.duplicates == 3


@given(
    st.integers(1, 300), st.lists(st.tuples(st.integers(0, 299), st.integers(1, 60)), max_size=8), st.integers(1, 50)
)
@settings(max_examples=200, deadline=None)
def test_streams_dedup_in_order_replays_yield_each_reading_once(
    n: int, replays: list[tuple[int, int]], bs: int
) -> None:
    """The edge sends 1..n in batches, re-sending ranges in order after simulated crashes."""
    stream: list[int] = []
    pos = 1
    for start, length in sorted(replays):
        start = min(start, n) + 1
        while pos <= start and pos <= n:
            stream.append(pos)
            pos += 1
        stream += list(range(max(1, start - length), pos))  # replay a suffix of what was sent
    stream += list(range(pos, n + 1))
    batches = [stream[i : i + bs] for i in range(0, len(stream), bs)]
    kept = feed(Deduplicator(), batches)
    assert kept == list(range(1, n + 1))


def test_streams_dedup_counter_reset_with_newer_timestamps_is_accepted() -> None:
    d = Deduplicator()
    assert d.filter("p", "e", "s", [100, 101], [10, 11]) is None
    keep = d.filter("p", "e", "s", [1, 2], [20, 21])  # agent lost its counter but data is new
    assert keep == [0, 1]
    assert d.stats.resets == 1
    assert d.filter("p", "e", "s", [2], [21]) == []  # and a re-send of that is still a duplicate


def test_streams_dedup_streams_are_independent_and_bounded() -> None:
    d = Deduplicator(max_streams=3)
    for i in range(10):
        d.filter("p", f"e{i}", "s", [1], [1])
    assert len(d) == 3
    assert d.stats.evicted == 7
    assert d.filter("p", "e9", "s", [1], [1]) == []  # recent stream still remembered
