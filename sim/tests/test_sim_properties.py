"""The simulated plants' tags carry standard properties (issue 18): every one fits the vocabulary,
and the same quantity in two plants lines up by property id and unit, whatever the tag is called."""

from __future__ import annotations

from pathlib import Path

import pytest

from plantstream.domain.units import compile_converter
from plantstream.domain.vocabulary import current
from plantstream.edge.config import load_config
from plantstream.sim import chemical, fiber, steel
from plantstream.sim.catalog import CATALOGS, PLANTS
from plantstream.sim.edgeconfig import config_for_sim, dump_config

URLS = {p: f"opc.tcp://127.0.0.1:{4841 + i}/plantstream/{p}" for i, p in enumerate(PLANTS)}
# Tags with no standard property on purpose (none today: temperature differences are in ΔK).
WITHOUT: set[str] = set()


@pytest.mark.parametrize("plant", PLANTS)
def test_every_tag_carries_a_property_that_fits_it(plant: str) -> None:
    vocab = current()
    mapping = {"steel": steel, "chemical": chemical, "fiber": fiber}[plant].STD_PROPERTIES
    tags = {t.tag: t for t in CATALOGS[plant]}
    assert set(mapping) <= set(tags), set(mapping) - set(tags)  # no entry for a tag that is gone
    spec_owner = {s: p.id for p in vocab for s in p.spec_properties}
    for t in tags.values():
        if t.tag in WITHOUT:
            assert not t.std_property
            continue
        assert t.std_property == mapping[t.tag], t.tag
        vocab.check_tag(t.std_property, t.unit, t.datatype)  # raises when the unit cannot convert
        if t.spec_property:  # a spec-checked tag carries the property the vocabulary maps the spec name to
            assert spec_owner[t.spec_property] == t.std_property, t.tag


def _metas(plant: str, tmp_path: Path) -> dict[str, tuple[str, str]]:
    """tag -> (standard property, canonical unit), from the plant's edge config as the agent loads it."""
    path = tmp_path / f"{plant}.yaml"
    dump_config(config_for_sim(plant, URLS[plant], "mqtt://127.0.0.1:11883"), path)
    return {m.tag: (m.std_property, compile_converter(m.unit).canonical) for m in load_config(path).tag_metas()}


def test_the_same_quantity_in_two_plants_lines_up_by_property(tmp_path: Path) -> None:
    s, c, f = (_metas(p, tmp_path) for p in PLANTS)
    # Steel's ladle bath and tundish, fiber's polymer melt: three names, one property, one unit.
    assert s["lf1.bath_temperature"] == s["caster1.tundish_temperature"] == f["poy1.melt_temperature"]
    assert f["poy1.melt_temperature"] == ("ps:temperature.melt", "degC")
    # Casting speed (m/min), strip speed (m/s on the wire) and winding speed: line speed in m/min.
    assert s["caster1.casting_speed"] == s["hsm1.strip_speed"] == f["poy1.winding_speed"] == f["cf1.line_speed"]
    assert s["hsm1.strip_speed"] == ("ps:linear-speed.material", "m/min")
    # A gauge in psi (steel), kPa (chemical) and MPa (fiber): gauge pressure in kPa.
    assert s["caster1.cooling_water_pressure"] == c["reactor.pressure"] == f["poy1.pack_pressure"]
    assert c["reactor.pressure"] == ("ps:pressure.gauge", "kPa")
    # Cooling water in degF and in degC within one plant, too.
    assert (
        c["condenser.cw_outlet_temperature"] == c["reactor.cw_outlet_temperature"] == ("ps:temperature.coolant", "degC")
    )
    # Every plant's lot tags and run flags share theirs.
    assert s["hsm1.current_coil"] == c["product.current_batch"] == f["cf1.current_spool"] == ("ps:lot-id", "")
    # Searching by a broader property finds the narrower ones of every plant.
    vocab = current()
    temps = {p: sorted(t for t, (sp, _) in m.items() if sp and vocab.is_a(sp, "ps:temperature"))
             for p, m in zip(PLANTS, (s, c, f), strict=True)}  # fmt: skip
    assert (
        all(temps.values()) and "poy1.melt_temperature" in temps["fiber"] and "lf1.bath_temperature" in temps["steel"]
    )
    assert "caster1.tundish_superheat" not in temps["steel"]
