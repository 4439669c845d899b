from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plantstream.domain.units import UnitError, canonical_table, compile_converter, convert_to


@pytest.mark.parametrize(
    ("unit", "value", "canonical", "expected"),
    [
        ("degF", 212.0, "degC", 100.0),
        ("°F", 32.0, "degC", 0.0),
        ("K", 273.15, "degC", 0.0),
        ("°C", 25.0, "degC", 25.0),
        ("psi", 1.0, "kPa", 6.894757),
        ("bar", 2.5, "kPa", 250.0),
        ("MPa", 17.0, "kPa", 17000.0),
        ("m/s", 1.0, "m/min", 60.0),
        ("denier", 9.0, "dtex", 10.0),
        ("g/km", 80.0, "dtex", 800.0),
        ("tex", 1.0, "dtex", 10.0),
        ("t/h", 1.5, "kg/h", 1500.0),
        ("MW", 20.0, "kW", 20000.0),
        ("N", 1500.0, "kN", 1.5),
        ("ppm", 150.0, "percent", 0.015),
        ("%", 42.0, "percent", 42.0),
        ("in", 1.0, "mm", 25.4),
    ],
)
def test_streams_units_convert_to_canonical(unit: str, value: float, canonical: str, expected: float) -> None:
    conv = compile_converter(unit)
    assert conv.canonical == canonical
    assert conv(value) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_streams_units_passthrough_and_identity() -> None:
    for unit in ("", "1", "count"):
        assert compile_converter(unit).identity
        assert compile_converter(unit).canonical == unit
    assert compile_converter("mm").identity
    assert not compile_converter("degF").identity


@pytest.mark.parametrize("unit", ["furlongs_per_fortnight_x", "m/s**2", "kg*m", "blorp/s"])
def test_streams_units_unknown_or_unsupported_raise_at_compile(unit: str) -> None:
    with pytest.raises(UnitError, match=repr(unit).strip("'")[:3]):
        compile_converter(unit)


def test_streams_units_converter_compiled_once() -> None:
    assert compile_converter("psi") is compile_converter("psi")


def test_streams_units_every_canonical_maps_to_itself() -> None:
    for canonical in set(canonical_table().values()):
        conv = compile_converter(canonical)
        assert conv.canonical == canonical
        assert conv(123.5) == pytest.approx(123.5)


@given(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.sampled_from(["degF", "K", "psi", "bar", "denier"])
)
def test_streams_units_compiled_matches_pint(value: float, unit: str) -> None:
    conv = compile_converter(unit)
    exact = convert_to(value, unit, conv.canonical)
    assert math.isclose(conv(value), exact, rel_tol=1e-9, abs_tol=1e-9)


def test_streams_units_convert_to_rejects_incompatible() -> None:
    with pytest.raises(UnitError):
        convert_to(1.0, "kg", "m")


def test_temperature_differences_scale_without_offset() -> None:
    # A superheat of 30 K is 30 degC of difference, not -243.15 degC (a bare K stays absolute).
    for unit, value, want in [("ΔK", 30.0, 30.0), ("Δ°C", 30.0, 30.0), ("delta_degC", 5.0, 5.0), ("Δ°F", 9.0, 5.0)]:
        conv = compile_converter(unit)
        assert conv.canonical == "delta_degC" and conv.offset == 0.0
        assert conv(value) == pytest.approx(want)
    assert compile_converter("K")(30.0) == pytest.approx(-243.15)
    assert convert_to(15.0, "ΔK", "delta_degC") == pytest.approx(15.0)
