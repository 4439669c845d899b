from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantstream.config import ConfigError
from plantstream.contract import ContextEvent, ContextKind, Origin, Quality, Reading, Value
from plantstream.producers.codec import encode_readings
from plantstream.streams.config import load
from plantstream.streams.logic.lot_tags import SOURCE_ATTR, LotTagSpec, LotTagTracker, lot_value
from plantstream.streams.logic.lots import LotTracker
from plantstream.streams.logic.processor import Processor, ProcessorConfig, SharedContext

CASTER = "acme/duisburg/steelmaking/caster1"
TAG = "caster1.current_heat"
SPEC = LotTagSpec("steel", TAG, lot_kind="heat", material="EN10025-2:S355J2")

Row = tuple[int, Value, Quality]


def feed(
    tracker: LotTagTracker, rows: list[Row], eq: str = CASTER, tag: str = TAG, plant: str = "steel"
) -> list[ContextEvent]:
    out: list[ContextEvent] = []
    for ts, value, q in rows:
        out += tracker.observe(plant, eq, tag, ts, value, q)
    return out


def summary(events: list[ContextEvent]) -> list[tuple[str, str, int]]:
    return [(e.kind.value, e.lot, e.ts_us) for e in events]


G, U, B = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD


def test_streams_lot_tags_changes_become_start_and_end() -> None:
    lots = LotTracker()
    t = LotTagTracker([SPEC], lots)
    rows: list[Row] = [(10, "", G), (20, "H1", G), (30, "H1", G), (40, "H2", G), (50, " H2 ", G), (60, "", G)]
    events = feed(t, rows)
    assert summary(events) == [
        ("lot_start", "H1", 20),
        ("lot_end", "H1", 40),
        ("lot_start", "H2", 40),
        ("lot_end", "H2", 60),
    ]
    start = events[0]
    assert (start.lot_kind, start.material, start.equipment) == ("heat", "EN10025-2:S355J2", CASTER)
    assert all(e.attrs == {SOURCE_ATTR: TAG} and e.key == f"steel/{CASTER}" for e in events)
    # applied already: the tracker stamps by source time, children inherit
    assert lots.lot_at("steel", CASTER + "/mould", 19) is None
    assert lots.lot_at("steel", CASTER + "/mould", 39) == "H1"
    assert lots.lot_at("steel", CASTER, 40) == "H2"
    assert lots.lot_at("steel", CASTER, 60) is None
    info = lots.info("steel", "H1")
    assert info is not None and info.material == "EN10025-2:S355J2" and info.lot_kind == "heat"
    # other tags and other plants are not watched
    assert t.observe("steel", CASTER, "caster1.current_slab", 70, "S1", G) == []
    assert t.observe("fiber", CASTER, TAG, 70, "X", G) == []


def test_streams_lot_tags_bad_quality_does_not_end_the_lot() -> None:
    lots = LotTracker()
    t = LotTagTracker([SPEC], lots)
    events = feed(t, [(10, "H1", G), (20, "", B), (30, "garbled", B), (40, "H1", U), (50, "H2", U)])
    assert summary(events) == [("lot_start", "H1", 10), ("lot_end", "H1", 50), ("lot_start", "H2", 50)]
    assert lots.lot_at("steel", CASTER, 35) == "H1"
    assert t.ignored_bad == 2


def test_streams_lot_tags_older_readings_and_unusable_types_are_ignored() -> None:
    lots = LotTracker()
    t = LotTagTracker([SPEC], lots)
    assert summary(feed(t, [(100, 4711, G)])) == [("lot_start", "4711", 100)]  # Int32 heat number
    assert feed(t, [(100, "H9", G), (50, "H9", G)]) == []  # same time again / older
    assert t.ignored_old == 2
    assert feed(t, [(110, True, G), (120, 1.5, G)]) == []
    assert t.ignored_type == 2
    assert summary(feed(t, [(130, 4712.0, G)])) == [("lot_end", "4711", 130), ("lot_start", "4712", 130)]
    assert lot_value(" A7 ") == "A7" and lot_value(False) is None and lot_value(3.0) == "3"


def test_streams_lot_tags_idle_values_and_equipment_override() -> None:
    lots = LotTracker()
    spec = LotTagSpec(
        "chem", "product.current_batch", "batch", equipment="acme/site/area/reactor1", idle_values=frozenset({"0"})
    )
    t = LotTagTracker([spec], lots)
    events = feed(t, [(1, "B1", G), (2, "0", G), (3, "B2", G)], eq="product", tag="product.current_batch", plant="chem")
    assert {e.equipment for e in events} == {"acme/site/area/reactor1"}
    assert [(e.kind.value, e.lot, e.ts_us) for e in events] == [
        ("lot_start", "B1", 1),
        ("lot_end", "B1", 2),
        ("lot_start", "B2", 3),
    ]
    assert lots.lot_at("chem", "product", 3) is None and lots.lot_at("chem", "acme/site/area/reactor1", 3) == "B2"
    with pytest.raises(ValueError, match="twice"):
        LotTagTracker([spec, spec], lots)


def test_streams_lot_tags_tag_ends_a_lot_from_another_source() -> None:
    lots = LotTracker()
    lots.apply(ContextEvent(ContextKind.LOT_START, "steel", CASTER, 5, "MES1"))
    t = LotTagTracker([SPEC], lots)
    assert summary(feed(t, [(10, "H1", G)])) == [("lot_end", "MES1", 10), ("lot_start", "H1", 10)]
    # a lot on an ancestor is not "the running lot" of the tag's equipment
    lots.apply(ContextEvent(ContextKind.LOT_START, "steel", "acme/duisburg", 0, "SITE"))
    assert feed(t, [(20, "H1", G)]) == []


def test_streams_lot_tags_restart_rederives_nothing_or_the_same_events() -> None:
    rows: list[Row] = [(10, "H1", G), (20, "H1", G), (30, "H2", G), (40, "", G), (50, "H3", G)]
    first = feed(LotTagTracker([SPEC], LotTracker()), rows)
    assert len(first) == 5
    # restart: lot tracker rebuilt from the context topic (all events delivered), raw re-read
    rebuilt = LotTracker()
    for ev in first:
        rebuilt.apply(ev)
    assert feed(LotTagTracker([SPEC], rebuilt), rows) == []
    assert feed(LotTagTracker([SPEC], rebuilt), rows[2:]) == []  # from a later committed offset
    # crash before the last two events were delivered: the re-read derives exactly those again
    partial = LotTracker()
    for ev in first[:3]:
        partial.apply(ev)
    again = feed(LotTagTracker([SPEC], partial), rows)
    assert again == first[3:]


def test_streams_lot_tags_processor_stamps_the_same_batch() -> None:
    shared = SharedContext()
    p = Processor(shared, ProcessorConfig(lot_tags=(SPEC,)))
    mould = CASTER + "/mould"

    def r(eq: str, tag: str, ts: int, value: Value, seq: int, unit: str = "") -> Reading:
        return Reading("steel", eq, tag, ts, value, unit, G, Origin.OPCUA, "edge1", seq)

    # one source, one equipment per batch (the contract): lot tag and a process tag of the caster
    batch = [
        r(CASTER, "caster1.speed", 1_000, 1.0, 1, "m/min"),
        r(CASTER, TAG, 2_000, "H7", 2),
        r(CASTER, "caster1.speed", 3_000, 1.1, 3, "m/min"),
    ]
    out = p.process_raw(encode_readings(batch), "raw/0/0", 0, 0)
    assert summary(out.context) == [("lot_start", "H7", 2_000)]
    clean = out.clean[0]
    assert clean.tag == ["caster1.speed", TAG, "caster1.speed"]  # the lot tag is stored too
    assert clean.lot == [None, "H7", "H7"] and clean.value[1] == "H7"
    # the mould (another partition's processor, same worker) sees it through the shared tracker
    q = Processor(shared, ProcessorConfig(lot_tags=(SPEC,)), partition=1)
    out2 = q.process_raw(encode_readings([r(mould, "caster1.mould_level", 4_000, 100.0, 1, "mm")]), "raw/1/0", 0, 0)
    assert out2.clean[0].lot == ["H7"] and out2.context == []
    # a replayed batch (dedup drops it) derives nothing; a restarted processor re-reading derives nothing
    assert p.process_raw(encode_readings(batch), "raw/0/1", 1, 0).context == []
    fresh = Processor(shared, ProcessorConfig(lot_tags=(SPEC,)))
    again = fresh.process_raw(encode_readings(batch), "raw/0/0", 0, 0)
    assert again.context == [] and again.clean[0].lot == [None, "H7", "H7"]


def test_streams_lot_tags_config(tmp_path: Path) -> None:
    good = tmp_path / "streams.yaml"
    good.write_text(
        "lot_tags:\n"
        "  - {plant: steel, tag: caster1.current_heat, lot_kind: heat}\n"
        "  - plant: chemical\n"
        "    tag: product.current_batch\n"
        "    equipment: acme/site/chem/reactor1\n"
        "    idle_values: ['0']\n"
    )
    cfg = load(good)
    specs = cfg.processor().lot_tags
    assert specs[0] == LotTagSpec("steel", "caster1.current_heat", "heat")
    assert specs[1].equipment == "acme/site/chem/reactor1" and specs[1].idle_values == frozenset({"0"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lot_tags:\n  - plant: steel\n    tag: x\n    equipment: a//b\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4: key 'lot_tags\.0\.equipment'"):
        load(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("lot_tags:\n  - {plant: steel, tag: x}\n  - {plant: steel, tag: x}\n")
    with pytest.raises(ConfigError, match="listed twice"):
        load(dup)


# --- properties ----------------------------------------------------------------------------------

rows_strategy = st.lists(
    st.tuples(
        st.integers(min_value=-3, max_value=20),  # time step; <= 0 makes the reading out of order
        st.sampled_from(["", "A", "B", "C", "0"]),
        st.sampled_from([G, G, G, U, B]),
    ),
    max_size=40,
)


def to_rows(steps: list[tuple[int, str, Quality]]) -> list[Row]:
    out: list[Row] = []
    ts = 1_000
    for dt, v, q in steps:
        ts += dt
        out.append((ts, v, q))
    return out


@settings(max_examples=200, deadline=None)
@given(rows_strategy)
def test_streams_lot_tags_property_intervals_follow_the_tag(steps: list[tuple[int, str, Quality]]) -> None:
    rows = to_rows(steps)
    spec = LotTagSpec("steel", TAG, idle_values=frozenset({"0"}))
    lots = LotTracker()
    original = LotTagTracker([spec], lots)
    half = len(rows) // 2
    events = feed(original, rows[:half])
    snapshot = original.checkpoint()
    events += feed(original, rows[half:])
    # every usable reading newer than all before it (and alone at its time) reads back as its lot
    usable = [(ts, v) for ts, v, q in rows if q is not B]
    for k, (ts, v) in enumerate(usable):
        if all(t < ts for t, _ in usable[:k]) and all(t != ts for t, _ in usable[k + 1 :]):
            assert lots.lot_at("steel", CASTER, ts) == (None if v in ("", "0") else v)
    # intervals are ordered and do not overlap; only the last may be open
    ivs = lots.intervals("steel", CASTER)
    for a, b in itertools.pairwise(ivs):
        assert a.end_us is not None and a.start_us < a.end_us <= b.start_us
    # deterministic: the same readings give the same events
    assert feed(LotTagTracker([spec], LotTracker()), rows) == events
    # replay-idempotent: a restarted tracker (checkpoint restored) re-reading from any committed
    # offset at or before the checkpoint changes nothing
    version = lots.version
    for start in (0, half // 2, half):
        restarted = LotTagTracker([spec], lots)
        restarted.restore(snapshot)
        assert feed(restarted, rows[start:]) == []
    # without a checkpoint too, as long as the tag's readings come in time order (the contract)
    ordered = [r for r in rows if r[2] is not B]
    if all(a[0] < b[0] for a, b in itertools.pairwise(ordered)):
        for start in (0, half):
            assert feed(LotTagTracker([spec], lots), rows[start:]) == []
    assert lots.version == version
    # the published events rebuild the same intervals, however often they are re-read
    rebuilt = LotTracker()
    for ev in events + events:
        rebuilt.apply(ev)
    assert rebuilt.intervals("steel", CASTER) == ivs


def test_streams_lot_tags_checkpoint_roundtrip() -> None:
    t = LotTagTracker([SPEC], LotTracker())
    feed(t, [(10, "H1", G), (20, "H1", G)])
    cp = t.checkpoint()
    assert cp == [["steel", TAG, 20]]
    u = LotTagTracker([SPEC], LotTracker())
    u.restore([*cp, ["steel", "not.a.lot.tag", 5]])
    assert u.checkpoint() == cp
    with pytest.raises(ValueError):
        u.restore([["steel", TAG, "20"]])
