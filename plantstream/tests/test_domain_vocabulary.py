"""The shared vocabulary of standard properties: the shipped file is valid and covers the simulated
plants and the seeded specs; a bad file is refused naming file, line, property and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from plantstream.config import ConfigError
from plantstream.domain.materials import MATERIALS
from plantstream.domain.units import compile_converter
from plantstream.domain.vocabulary import SHIPPED, VocabularyError, current, load_vocabulary

HEAD = "vocabulary: test\nprefix: ps\nversion: 1.0.0\niri: 'urn:test#'\nproperties:\n"
TEMP = (
    "  - id: ps:temperature\n    label: t\n    description: d\n    kind: temperature\n    unit: degC\n    ucum: Cel\n"
)


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "vocab.yaml"
    p.write_text(HEAD + body)
    return p


def test_the_shipped_vocabulary_loads_with_canonical_units() -> None:
    v = load_vocabulary()
    assert v.source == str(SHIPPED) and v.prefix == "ps" and v.version == "1.0.0"
    assert len(v) >= 30 and "ps:temperature.melt" in v and "ps:pressure.gauge" in v
    for p in v:
        if p.unit:  # what streams normalizes to: a pulled column of the property is in this unit
            assert compile_converter(p.unit).canonical == p.unit, p.id
            assert p.ucum, p.id
        if p.broader:
            assert (v.get(p.broader).kind, v.get(p.broader).unit) == (p.kind, p.unit), p.id
    assert v.get("ps:temperature.melt").broader == "ps:temperature"
    assert v.property_iri("ps:temperature.melt") == "urn:plantstream:vocabulary:1.0.0#temperature.melt"
    assert v.is_a("ps:temperature.melt", "ps:temperature") and not v.is_a("ps:temperature", "ps:temperature.melt")
    assert not v.is_a("ps:temperature-difference", "ps:temperature")  # a prefix of the id is not a parent


def test_it_covers_the_process_properties_of_the_seeded_specs() -> None:
    v = current()
    mapped = {s: p.id for p in v for s in p.spec_properties}
    process = {lim.property: lim for spec in MATERIALS.values() for lim in spec.limits if lim.basis == "process"}
    # Every name the vocabulary maps is a process property of a seeded spec, in a convertible unit.
    for name, ident in mapped.items():
        assert name in process, name
        assert compile_converter(process[name].unit).canonical == v.get(ident).unit, name
    # All of them, the superheat (a temperature difference in ΔK, normalized without offset) too.
    assert set(process) - set(mapped) == set()


def test_check_tag_accepts_convertible_units_and_refuses_others() -> None:
    v = current()
    assert v.check_tag("ps:pressure.gauge", "psi").unit == "kPa"
    assert v.check_tag("ps:temperature.coolant", "degF").unit == "degC"
    assert v.check_tag("ps:running", "", "bool").kind == "state"
    with pytest.raises(VocabularyError, match="unit 'kPa' cannot be converted to ps:temperature's unit 'degC'"):
        v.check_tag("ps:temperature", "kPa")
    with pytest.raises(VocabularyError, match="unit '' cannot be converted"):
        v.check_tag("ps:temperature", "")
    with pytest.raises(VocabularyError, match="a bool tag cannot carry it"):
        v.check_tag("ps:temperature", "degC", "bool")
    with pytest.raises(VocabularyError, match="must be empty"):
        v.check_tag("ps:lot-count", "kg", "int")
    with pytest.raises(VocabularyError, match="unknown standard property 'ps:temprature'"):
        v.get("ps:temprature")


def test_a_small_valid_file_loads(tmp_path: Path) -> None:
    melt = TEMP.replace("ps:temperature", "ps:temperature.melt") + "    range: [200, 1700]\n"
    v = load_vocabulary(_write(tmp_path, TEMP + melt))
    assert [p.id for p in v] == ["ps:temperature", "ps:temperature.melt"]
    assert v.get("ps:temperature.melt").range == (200.0, 1700.0)


@pytest.mark.parametrize(
    ("body", "line", "says"),
    [
        # Duplicate id: named with where the first one is.
        (TEMP + TEMP, 12, "property 'ps:temperature': key 'id': duplicate id (first at properties[0], line 6)"),
        # A unit pint cannot read.
        (TEMP.replace("unit: degC", "unit: furlong_per_blorp"), 10, "property 'ps:temperature': key 'unit': unknown unit"),
        # A unit that is not the canonical unit of its quantity.
        (TEMP.replace("unit: degC", "unit: K"), 10, "key 'unit': 'K' is not canonical: plantstream normalizes this quantity to 'degC'"),
        # The UCUM code missing.
        (TEMP.replace("    ucum: Cel\n", ""), 6, "property 'ps:temperature': key 'ucum': missing: the UCUM code of 'degC'"),
        # A narrower property whose broader one is not there.
        (TEMP.replace("ps:temperature", "ps:temperature.melt"), 6, "key 'id': narrows 'ps:temperature', which is not in"),
        # A narrower property in another unit than its broader one.
        (TEMP + TEMP.replace("ps:temperature", "ps:temperature.x").replace("degC", "kPa").replace("Cel", "kPa")
         .replace("kind: temperature", "kind: pressure"), 16, "key 'unit': must share kind and unit with ps:temperature"),
        # Ids: the prefix and kebab-case segments.
        (TEMP.replace("ps:temperature", "xx:temperature"), 6, "key 'id': must be 'ps:'"),
        (TEMP.replace("ps:temperature", "ps:Melt_Temperature"), 6, "key 'id': must be 'ps:'"),
        # A unit-less kind with a unit.
        (TEMP.replace("kind: temperature", "kind: state"), 10, "key 'unit': a state has no unit"),
        # A range that is not [min, max].
        (TEMP + "    range: [5, 1]\n", 12, "key 'range': must be [min, max] with min < max"),
        # A typo'd key.
        (TEMP + "    colour: red\n", 12, "key 'colour': Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_naming_line_property_and_key(tmp_path: Path, body: str, line: int, says: str) -> None:
    p = _write(tmp_path, body)
    with pytest.raises(VocabularyError) as exc:
        load_vocabulary(p)
    assert isinstance(exc.value, ConfigError) and exc.value.exit_code == 2
    assert f"{p}:{line}: " in str(exc.value) and says in str(exc.value), str(exc.value)


def test_every_bad_entry_is_reported_not_just_the_first(tmp_path: Path) -> None:
    body = TEMP.replace("unit: degC", "unit: K") + TEMP.replace("ps:temperature", "ps:pressure").replace(
        "    ucum: Cel\n", ""
    ).replace("degC", "kPa").replace("kind: temperature", "kind: pressure")
    with pytest.raises(VocabularyError) as exc:
        load_vocabulary(_write(tmp_path, body))
    assert "property 'ps:temperature': key 'unit'" in str(exc.value)
    assert "property 'ps:pressure': key 'ucum'" in str(exc.value)


def test_a_bad_head_or_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match="cannot read vocabulary"):
        load_vocabulary(tmp_path / "missing.yaml")
    p = tmp_path / "v.yaml"
    p.write_text(HEAD.replace("version: 1.0.0", "version: one") + TEMP)
    with pytest.raises(VocabularyError, match=f"{p}:1: key 'version'"):
        load_vocabulary(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(VocabularyError, match="a vocabulary is a mapping"):
        load_vocabulary(p)


def test_an_entry_that_is_not_a_mapping_is_named_by_its_line(tmp_path: Path) -> None:
    p = _write(tmp_path, TEMP + "  - just a string\n")
    with pytest.raises(VocabularyError, match=f"{p}:12: key 'properties.1': Input should be a valid dictionary"):
        load_vocabulary(p)
