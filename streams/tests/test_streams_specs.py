from __future__ import annotations

import pytest

from plantstream.contract import ContextEvent, ContextKind
from plantstream.domain.materials import MaterialSpec, PropertyLimit
from plantstream.streams.logic.lots import LotTracker
from plantstream.streams.logic.specs import MaterialsRegistry, SpecChecker, condition_holds

CASTER = "acme/duisburg/steelmaking/caster1"
SPEC = MaterialSpec(
    spec_id="TEST:S355",
    standard="EN 10025-2:2004",
    grade="S355J2",
    revision="1",
    effective_from="2004-01-01",
    material_class="structural steel",
    description="test",
    limits=(
        PropertyLimit("casting_speed", "m/min", min=0.8, max=2.0, basis="process"),
        PropertyLimit("C", "percent", max=0.20, basis="lab"),
        PropertyLimit("ReH", "MPa", min=355, basis="lab", condition="thickness_mm<=16"),
        PropertyLimit("ReH", "MPa", min=345, basis="lab", condition="16<thickness_mm<=40"),
        PropertyLimit("KV", "J", min=27, basis="lab", condition="test_temperature=-20degC"),
    ),
)


def checker(**lot_attrs: object) -> SpecChecker:
    lots = LotTracker()
    lots.apply(
        ContextEvent(ContextKind.LOT_START, "steel", CASTER, 0, "H1", material="TEST:S355", attrs=dict(lot_attrs))
    )
    return SpecChecker(lots, MaterialsRegistry({"TEST:S355": SPEC}))


def test_streams_specs_excursion_open_then_closed_same_id() -> None:
    sc = checker()
    # tag in m/s: limits converted (0.8..2.0 m/min = 0.01333..0.0333 m/s)
    assert sc.check("steel", CASTER, "speed", "casting_speed", "m/min", 10, 1.5, "H1") == []
    opened = sc.check("steel", CASTER, "speed", "casting_speed", "m/min", 20, 2.3, "H1")
    assert len(opened) == 1 and opened[0].status == "open" and opened[0].start_us == 20
    assert opened[0].limit_max == pytest.approx(2.0) and opened[0].lot == "H1"
    assert sc.check("steel", CASTER, "speed", "casting_speed", "m/min", 30, 2.6, "H1") == []
    assert sc.check("steel", CASTER, "speed", "casting_speed", "m/min", 40, 2.1, "H1") == []
    closed = sc.check("steel", CASTER, "speed", "casting_speed", "m/min", 2_000_020, 1.9, "H1")
    assert len(closed) == 1
    c = closed[0]
    assert c.id == opened[0].id and c.status == "closed"
    assert (c.peak, c.end_us, c.details["duration_s"]) == (2.6, 2_000_020, 2.0)


def test_streams_specs_limits_converted_to_tag_unit() -> None:
    sc = checker()
    lim = sc.process_limit("steel", "H1", "casting_speed", "m/min")
    assert lim is not None and lim.hi == pytest.approx(2.0)
    opened = sc.check("steel", CASTER, "speed", "casting_speed", "m/min", 1, 0.5, "H1")
    assert opened and opened[0].limit_min == pytest.approx(0.8)


def test_streams_specs_lot_change_closes_excursion() -> None:
    sc = checker()
    sc.check("steel", CASTER, "speed", "casting_speed", "m/min", 10, 3.0, "H1")
    out = sc.check("steel", CASTER, "speed", "casting_speed", "m/min", 20, 3.0, "H2")  # H2 has no material
    assert [d.status for d in out] == ["closed"] and out[0].lot == "H1"
    assert sc.open_count() == 0


def test_streams_specs_no_lot_or_unknown_material_no_deviation() -> None:
    sc = checker()
    assert sc.check("steel", CASTER, "speed", "casting_speed", "m/min", 10, 9.0, None) == []
    assert sc.check("steel", CASTER, "x", "no_such_property", "m/min", 10, 9.0, "H1") == []


def test_streams_specs_lab_results_with_conditions_and_units() -> None:
    sc = checker(thickness_mm=30)
    ev = ContextEvent(
        ContextKind.LAB_RESULT,
        "steel",
        CASTER,
        99,
        "H1",
        results={"C": (0.25, "percent"), "ReH": (350.0, "MPa"), "KV": (20.0, "J"), "Mn": (9.0, "percent")},
    )
    devs = sc.lab_result(ev)
    props = sorted(d.property or "" for d in devs)
    assert props == ["C", "KV"]  # ReH 350 >= 345 for 16 < t <= 40; Mn has no limit
    c = next(d for d in devs if d.property == "C")
    assert c.kind == "lab" and c.lot == "H1" and c.peak == pytest.approx(0.25)
    assert sc.lab_result(ev) == devs  # deterministic ids


def test_streams_specs_lab_result_in_ppm_against_percent_limit() -> None:
    sc = checker()
    ev = ContextEvent(ContextKind.LAB_RESULT, "steel", CASTER, 5, "H1", results={"C": (2500.0, "ppm")})
    devs = sc.lab_result(ev)
    assert len(devs) == 1 and devs[0].peak == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("cond", "attrs", "expected"),
    [
        ("thickness_mm<=16", {"thickness_mm": 10}, True),
        ("thickness_mm<=16", {"thickness_mm": 20}, False),
        ("16<thickness_mm<=40", {"thickness_mm": 20}, True),
        ("16<thickness_mm<=40", {}, None),
        ("test_temperature=-20degC", {}, None),
        ("", {}, True),
    ],
)
def test_streams_specs_condition_evaluation(cond: str, attrs: dict[str, object], expected: bool | None) -> None:
    assert condition_holds(cond, attrs) is expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_streams_specs_nonfinite_lab_result_is_counted_not_passed_as_in_spec(value: float) -> None:
    """Issue 15 item 8: NaN compares as inside any limits; it must not count as checked."""
    sc = checker()
    ev = ContextEvent(ContextKind.LAB_RESULT, "steel", CASTER, 5, "H1", results={"C": (value, "percent")})
    assert sc.lab_result(ev) == []
    assert sc.errors == 1
