from __future__ import annotations

from plantstream.contract import ContextEvent, ContextKind
from plantstream.streams.logic.lots import LotTracker

CASTER = "acme/duisburg/steelmaking/caster1"


def ev(kind: ContextKind, lot: str, ts: int, equipment: str = CASTER, **kw: object) -> ContextEvent:
    return ContextEvent(kind, "steel", equipment, ts, lot, **kw)  # type: ignore[arg-type]


def test_streams_lots_intervals_and_hierarchy() -> None:
    t = LotTracker()
    t.apply(ev(ContextKind.LOT_START, "H1", 100, material="EN10025-2:S355J2"))
    t.apply(ev(ContextKind.LOT_START, "H2", 200))
    assert t.lot_at("steel", CASTER, 99) is None
    assert t.lot_at("steel", CASTER, 100) == "H1"
    assert t.lot_at("steel", CASTER + "/mould", 150) == "H1"  # descendants inherit
    assert t.lot_at("steel", CASTER + "/mould", 250) == "H2"  # the new start ended H1
    assert t.lot_at("steel", "acme/duisburg/steelmaking/caster2", 150) is None  # siblings do not
    t.apply(ev(ContextKind.LOT_END, "H2", 300))
    assert t.lot_at("steel", CASTER, 300) is None
    assert t.lot_at("steel", CASTER, 299) == "H2"


def test_streams_lots_most_specific_equipment_wins() -> None:
    t = LotTracker()
    t.apply(ev(ContextKind.LOT_START, "H1", 0))
    t.apply(ev(ContextKind.LOT_START, "S1", 50, equipment=CASTER + "/strand1"))
    assert t.lot_at("steel", CASTER + "/strand1/segment3", 60) == "S1"
    assert t.lot_at("steel", CASTER + "/strand2", 60) == "H1"


def test_streams_lots_late_event_still_stamps_earlier_timestamps() -> None:
    t = LotTracker()
    t.apply(ev(ContextKind.LOT_START, "H2", 200))
    t.apply(ev(ContextKind.LOT_START, "H1", 100))  # arrives after H2's start, belongs before it
    assert t.lot_at("steel", CASTER, 150) == "H1"
    assert t.lot_at("steel", CASTER, 250) == "H2"


def test_streams_lots_idempotent_replay() -> None:
    t = LotTracker()
    assert t.apply(ev(ContextKind.LOT_START, "H1", 100))
    v = t.version
    assert not t.apply(ev(ContextKind.LOT_START, "H1", 100))
    assert not t.apply(ev(ContextKind.LOT_END, "H9", 100))
    assert t.version == v
    assert len(t.intervals("steel", CASTER)) == 1


def test_streams_lots_uniform_fast_path() -> None:
    t = LotTracker()
    t.apply(ev(ContextKind.LOT_START, "H1", 100))
    t.apply(ev(ContextKind.LOT_START, "H2", 200))
    assert t.uniform("steel", CASTER + "/mould", 120, 180) == (True, "H1")
    assert t.uniform("steel", CASTER + "/mould", 150, 250) == (False, None)
    assert t.uniform("steel", "other", 1, 2) == (True, None)
    t.apply(ev(ContextKind.LOT_START, "X", 130, equipment=CASTER + "/mould"))
    assert t.uniform("steel", CASTER + "/mould", 120, 180) == (False, None)


def test_streams_lots_genealogy_and_material_inheritance() -> None:
    t = LotTracker()
    t.apply(ev(ContextKind.LOT_START, "H1", 0, material="EN10025-2:S355J2", lot_kind="heat"))
    t.apply(ev(ContextKind.GENEALOGY, "S1", 10, parents=("H1",), relation="split"))
    t.apply(ev(ContextKind.GENEALOGY, "C1", 20, parents=("S1",), relation="transform"))
    assert list(t.lineage("steel", "C1")) == ["C1", "S1", "H1"]
    assert t.material("steel", "C1") == "EN10025-2:S355J2"
    info = t.info("steel", "S1")
    assert info is not None and info.relation == "split"


def test_streams_lots_history_is_bounded() -> None:
    t = LotTracker(history=4)
    for i in range(10):
        t.apply(ev(ContextKind.LOT_START, f"L{i}", i * 10))
    assert [iv.lot for iv in t.intervals("steel", CASTER)] == ["L6", "L7", "L8", "L9"]
    assert t.lot_at("steel", CASTER, 95) == "L9"
