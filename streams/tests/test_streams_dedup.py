from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.contract import Origin, Quality, Reading
from plantstream.edge.buffer import Buffer
from plantstream.producers.codec import encode_readings
from plantstream.streams.logic.dedup import Deduplicator
from plantstream.streams.logic.processor import Processor, ProcessorConfig, SharedContext


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
    assert d.filter("p", "e", "s", [2], [21]) == []  # and a re-send of that is still a duplicate
    # Inside a processed span (100..101) again, with newer data: the counter went back.
    assert d.filter("p", "e", "s", [100, 101], [30, 31]) == [0, 1]
    assert d.stats.resets == 1
    assert d.filter("p", "e", "s", [101], [31]) == []


def test_streams_dedup_resend_after_later_batches_is_kept() -> None:
    """Issue 15 item 2: the forwarder re-sends a failed batch after later ones succeeded."""
    d = Deduplicator()
    assert feed(d, [[1, 2, 3], [7, 8, 9], [10, 11]]) == [1, 2, 3, 7, 8, 9, 10, 11]
    assert feed(d, [[4, 5, 6]]) == [4, 5, 6]  # a high-water mark dropped these
    assert feed(d, [[4, 5, 6], [7, 8], [1]]) == []  # real re-sends still go
    assert d.stats.duplicates == 6


def test_streams_dedup_clock_abuse_does_not_disable_reset_detection() -> None:
    d = Deduplicator()
    assert d.filter("p", "e", "s", [10, 11], [10, 253_402_300_799_000_000], ts_limit=100) is None
    # A timestamp past the limit did not become the stream's newest: a later reset is recognised.
    assert d.filter("p", "e", "s", [10], [50], ts_limit=100) == [0]
    assert d.stats.resets == 1


def test_streams_dedup_memory_is_bounded_and_forgetting_only_accepts() -> None:
    d = Deduplicator(max_spans=4, max_spans_total=6)
    for b in range(10):  # every other seq belongs to another equipment: one span per batch
        d.filter("p", "e", "s", [b * 10, b * 10 + 2], [b, b])
    assert d.spans == 4 and d.stats.forgotten_spans == 6
    assert d.filter("p", "e", "s", [0, 2], [0, 0]) == [0, 1]  # forgotten: accepted, not dropped
    assert d.filter("p", "e", "s", [90, 92], [9, 9]) == []  # remembered: dropped
    d.filter("p", "e2", "s", [1, 3, 5, 7], [1, 3, 5, 7])  # a second stream, increasing: one span
    for b in range(4):
        d.filter("p", "e3", "s", [b * 10], [b])  # 4 more spans: total over 6 -> LRU stream goes
    assert d.spans <= 6 and d.stats.evicted >= 1


@st.composite
def _source_run(draw: st.DrawFn) -> tuple[list[tuple[str, list[int]]], list[int]]:
    """One source numbering three equipment units from one counter, batched per unit like the
    edge batcher; returns the batches and a delivery order with re-sends at arbitrary positions."""
    n = draw(st.integers(1, 120))
    units = [draw(st.sampled_from("abc")) for _ in range(n)]
    size = draw(st.integers(1, 7))
    open_: dict[str, list[int]] = {}
    batches: list[tuple[str, list[int]]] = []
    for seq, u in enumerate(units, start=1):
        b = open_.setdefault(u, [])
        b.append(seq)
        if len(b) >= size or draw(st.booleans()):
            batches.append((u, open_.pop(u)))
    batches += sorted(open_.items())
    order = draw(st.permutations(range(len(batches))))
    resends = draw(st.lists(st.integers(0, len(batches) - 1), max_size=20))
    return batches, [*order, *resends]


@given(_source_run())
@settings(max_examples=300, deadline=None)
def test_streams_dedup_any_arrival_order_yields_each_reading_once(
    run: tuple[list[tuple[str, list[int]]], list[int]],
) -> None:
    batches, order = run
    d = Deduplicator()
    kept: dict[str, list[int]] = {}
    for k in order:
        unit, seqs = batches[k]
        keep = d.filter("p", unit, "s", seqs, [s * 1000 for s in seqs])
        kept.setdefault(unit, []).extend(seqs if keep is None else [seqs[i] for i in keep])
    for unit in "abc":
        want = sorted(s for u, b in batches if u == unit for s in b)
        assert sorted(kept.get(unit, [])) == want


def test_streams_dedup_streams_are_independent_and_bounded() -> None:
    d = Deduplicator(max_streams=3)
    for i in range(10):
        d.filter("p", f"e{i}", "s", [1], [1])
    assert len(d) == 3
    assert d.stats.evicted == 7
    assert d.filter("p", "e9", "s", [1], [1]) == []  # recent stream still remembered


def test_streams_dedup_keeps_readings_of_a_new_edge_buffer_epoch(tmp_path: Path) -> None:
    """Issue 15 item 3, both sides: the edge lost its buffer and restarted its counter; its new
    readings (older timestamps than some already seen, e.g. a backfill) are all kept."""
    d = Deduplicator()
    with Buffer(tmp_path / "old.db") as old:
        seqs = [old.reserve("edge1", 1) for _ in range(500)]
    assert d.filter("steel", "a/b", "edge1", seqs, [10_000 + i for i in range(500)]) is None
    with Buffer(tmp_path / "new.db") as new:
        fresh = [new.reserve("edge1", 1) for _ in range(300)]
    assert d.filter("steel", "a/b", "edge1", fresh, [5_000 + i for i in range(300)]) is None
    assert d.stats.duplicates == 0


def test_streams_processor_keeps_a_batch_resent_after_later_ones() -> None:
    """Issue 15 item 2 through the processor: the forwarder's retry of a failed batch arrives
    after later batches succeeded; its readings reach clean, a second copy does not."""
    p = Processor(SharedContext(), ProcessorConfig(allowed_lateness_s=60.0))
    t0 = 1_700_000_040_000_000

    def raw(seqs: range) -> bytes:
        return encode_readings(
            [
                Reading("steel", "a/b", "t", t0 + s * 1000, float(s), "", Quality.GOOD, Origin.MQTT, "e1", s)
                for s in seqs
            ]
        )

    first, failed, later = range(1, 6), range(6, 11), range(11, 16)
    outs = [p.process_raw(raw(r), f"raw/0/{i}", i, 0) for i, r in enumerate([first, later, failed, failed, later])]
    kept = [s for o in outs for b in o.clean for s in b.seq]
    assert sorted(kept) == list(range(1, 16))
    assert sum(o.duplicates for o in outs) == 10
