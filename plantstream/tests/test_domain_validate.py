from __future__ import annotations

import pytest

from plantstream.contract import TagMeta
from plantstream.domain.units import compile_converter
from plantstream.domain.validate import BAD, GOOD, UNCERTAIN, RuleError, Validator, compile_rule


def meta(**kw: object) -> TagMeta:
    base: dict[str, object] = {"plant": "steel", "tag": "t", "equipment": "a/b", "unit": "degF"}
    base.update(kw)
    return TagMeta(**base)  # type: ignore[arg-type]


def test_streams_validate_range_converted_to_canonical() -> None:
    rule = compile_rule(meta(lo=32.0, hi=212.0))
    assert rule.lo == pytest.approx(0.0, abs=1e-9)
    assert rule.hi == pytest.approx(100.0)
    v = Validator()
    conv = compile_converter("degF")
    val, q, r = v.check(rule, conv, "steel", "t", 122.0, 1, GOOD, None)
    assert val == pytest.approx(50.0) and q == GOOD and r is None
    val, q, r = v.check(rule, conv, "steel", "t", 300.0, 2, GOOD, None)
    assert val == pytest.approx(148.888888) and q == UNCERTAIN
    assert r is not None and "out of range" in r and "degC" in r


def test_streams_validate_quality_never_upgraded() -> None:
    rule = compile_rule(meta(lo=0.0, hi=10.0, unit="mm"))
    v = Validator()
    _, q, _ = v.check(rule, compile_converter("mm"), "steel", "t", 50.0, 1, BAD, "sensor")
    assert q == BAD
    _, q, r = v.check(rule, compile_converter("mm"), "steel", "t", 5.0, 2, UNCERTAIN, "sensor")
    assert q == UNCERTAIN and r == "sensor"


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("float", "abc"), ("float", True), ("int", 1.5), ("bool", 1), ("str", 3.0), ("float", float("nan"))],
)
def test_streams_validate_wrong_type_is_bad_and_value_kept(datatype: str, value: float | str | int) -> None:
    rule = compile_rule(meta(datatype=datatype, unit="mm" if datatype in ("float", "int") else ""))
    val, q, r = Validator().check(rule, compile_converter("mm"), "steel", "t", value, 1, GOOD, None)
    assert q == BAD and r
    assert val is value or (isinstance(val, float) and val != val)


def test_streams_validate_rate_of_change() -> None:
    rule = compile_rule(meta(unit="mm", roc_limit=10.0))
    v = Validator()
    conv = compile_converter("mm")
    assert v.check(rule, conv, "steel", "t", 0.0, 0, GOOD, None)[1] == GOOD
    assert v.check(rule, conv, "steel", "t", 5.0, 1_000_000, GOOD, None)[1] == GOOD  # 5 mm/s
    _val, q, r = v.check(rule, conv, "steel", "t", 100.0, 2_000_000, GOOD, None)  # 95 mm/s
    assert q == UNCERTAIN and r is not None and "rate of change" in r


def test_streams_validate_unit_mismatch_is_bad() -> None:
    rule = compile_rule(meta(unit="degC"))
    _, q, r = Validator().check(rule, compile_converter("kPa"), "steel", "t", 1.0, 1, GOOD, None)
    assert q == BAD and r is not None and "does not match" in r


def test_streams_validate_compile_errors_name_tag_and_field() -> None:
    with pytest.raises(RuleError, match=r"steel/t.*unit"):
        compile_rule(meta(unit="blorps"))
    with pytest.raises(RuleError, match="datatype"):
        compile_rule(meta(datatype="complex"))
    with pytest.raises(RuleError, match="lo"):
        compile_rule(meta(unit="mm", lo=5.0, hi=1.0))


def test_streams_validate_int_identity_keeps_int() -> None:
    rule = compile_rule(meta(unit="mm", datatype="int"))
    val, q, _ = Validator().check(rule, compile_converter("mm"), "steel", "t", 7, 1, GOOD, None)
    assert val == 7 and type(val) is int and q == GOOD


@pytest.mark.parametrize("value", ["abc", True, False])
def test_streams_validate_without_metadata_passes_non_numbers_unconverted(value: str | bool) -> None:
    # Only plain float/int are unit-converted; str and bool (an int subclass) pass through as they are.
    val, q, r = Validator().check(None, compile_converter("degF"), "steel", "t", value, 1, GOOD, None)
    assert val is value and q == GOOD and r is None


def test_streams_validate_without_metadata_converts_numbers() -> None:
    v = Validator()
    val, q, r = v.check(None, compile_converter("degF"), "steel", "t", 212, 1, GOOD, None)
    assert val == pytest.approx(100.0) and q == GOOD and r is None
    val, q, r = v.check(None, None, "steel", "t", 5.0, 2, GOOD, None)
    assert val == 5.0 and q == UNCERTAIN and r == "unit not normalizable"
