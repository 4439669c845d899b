"""Unit normalization: one canonical unit per physical quantity.

Canonical table (by pint dimensionality):

=============================  ============  ===========================================
quantity                       canonical     converts from (examples)
=============================  ============  ===========================================
temperature                    degC          degF, K, degR
temperature difference         delta_degC    delta_degF, ΔK, Δ°C, Δ°F (never offset)
pressure                       kPa           Pa, bar, mbar, psi, MPa, atm
length                         mm            m, cm, um, in, ft
speed                          m/min         m/s, mm/s, ft/min, km/h
force                          kN            N, MN, lbf
power                          kW            W, MW, hp
energy                         kWh           J, MJ, MWh
mass                           kg            g, t, lb
mass flow                      kg/h          t/h, kg/s, lb/h
volumetric flow                m**3/h        L/min, L/s, gal/min
linear density                 dtex          tex (= g/km), denier, g/m
tenacity (force/lin. density)  cN/dtex       N/tex, gf/denier
density                        kg/m**3       g/cm**3, g/L
frequency / rotation           1/min         Hz, rpm
time                           s             ms, min, h
current / voltage              A / V         mA, kV
intrinsic viscosity            dL/g          m**3/kg
ratio (dimensionless)          percent       ppm, ppb, permille
=============================  ============  ===========================================

A temperature *difference* (a superheat, a cooling-water delta T) must be spelled as one (``ΔK``,
``Δ°C``, ``delta_degC``): a bare ``K`` is a thermodynamic temperature, and 30 K is -243.15 degC.

Dimensionless units *with a scale* (``%``, ``ppm``, ``ppb``, ``permille``) become percent.
Unit-less tags (``""``, ``1``, ``count``, ``dimensionless``) and non-numeric tags pass through
unchanged: a count or a state code is not a ratio.

Contract: :func:`compile_converter` is called once per unit string (at configuration time, when
tag metadata is registered) and returns a :class:`Converter` (``canonical = value * factor +
offset``). Unknown units or units of a quantity outside the table raise :class:`UnitError`
there, never per reading.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pint

_UREG: pint.UnitRegistry[float] = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)

# Spellings edge devices use that pint does not read (or reads differently).
ALIASES: dict[str, str] = {
    "°C": "degC",
    "℃": "degC",
    "C": "degC",  # a bare "C" on a temperature tag means Celsius, never coulomb, in plant data
    "°F": "degF",
    "℉": "degF",
    "F": "degF",
    "%": "percent",
    "pct": "percent",
    "rpm": "1/min",
    "RPM": "1/min",
    "mpm": "m/min",
    "barg": "bar",  # gauge pressure stays gauge; only the scale changes
    "psig": "psi",
    "m3/h": "m**3/h",
    "m³/h": "m**3/h",
    "kg/m3": "kg/m**3",
    "kg/m³": "kg/m**3",
    "µm": "um",
    "dl/g": "dL/g",
    # Differences: pint's delta units scale without an offset.
    "ΔK": "delta_degC",
    "Δ°C": "delta_degC",
    "ΔC": "delta_degC",
    "delta_K": "delta_degC",
    "Δ°F": "delta_degF",
    "ΔF": "delta_degF",
}

DELTA_TEMPERATURE = "delta_degC"  # canonical unit of a temperature difference

PASSTHROUGH = frozenset({"", "1", "count", "dimensionless", "-", "n/a"})

# (dimensionality as a pint UnitsContainer string) -> canonical unit
_CANONICAL_UNITS: tuple[str, ...] = (
    "degC",
    "kPa",
    "mm",
    "m/min",
    "kN",
    "kW",
    "kWh",
    "kg",
    "kg/h",
    "m**3/h",
    "dtex",
    "cN/dtex",
    "kg/m**3",
    "1/min",
    "s",
    "A",
    "V",
    "dL/g",
    "percent",
)


class UnitError(ValueError):
    """A unit that cannot be normalized; raised when a converter is compiled (config time)."""


@dataclass(frozen=True, slots=True)
class Converter:
    """``canonical = value * factor + offset``; identity converters have ``identity`` set so the
    hot path can skip arithmetic (and keep ints as ints)."""

    source: str
    canonical: str
    factor: float = 1.0
    offset: float = 0.0

    @property
    def identity(self) -> bool:
        return self.factor == 1.0 and self.offset == 0.0

    def __call__(self, value: float) -> float:
        return value * self.factor + self.offset

    def delta(self, value: float) -> float:
        """Convert a difference (e.g. a rate-of-change limit): scale only, no offset."""
        return value * self.factor


def _dims(unit: pint.Unit) -> str:
    return str(_UREG.Quantity(1.0, unit).dimensionality)


@functools.cache
def _canonical_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for u in _CANONICAL_UNITS:
        table.setdefault(_dims(_UREG.Unit(u)), u)
    return table


def canonical_table() -> dict[str, str]:
    """Dimensionality -> canonical unit symbol (for docs and the tag registry)."""
    return dict(_canonical_table())


def parse_unit(symbol: str) -> pint.Unit:
    """Parse a unit symbol (after aliases); UnitError on anything pint cannot read."""
    text = ALIASES.get(symbol.strip(), symbol.strip())
    try:
        return _UREG.Unit(text)
    except (
        pint.errors.UndefinedUnitError,
        pint.errors.DefinitionSyntaxError,
        ValueError,
        AttributeError,
        TypeError,
        AssertionError,
    ) as exc:
        raise UnitError(f"unknown unit {symbol!r}: {exc}") from None
    except Exception as exc:  # pint's tokenizer raises assorted errors on garbage input
        raise UnitError(f"unknown unit {symbol!r}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def compile_converter(symbol: str) -> Converter:
    """The converter from ``symbol`` to its canonical unit (memoized: compiled once per string).

    Raises UnitError for unknown units or quantities that have no canonical unit.
    """
    if symbol.strip() in PASSTHROUGH:
        return Converter(symbol, symbol)
    unit = parse_unit(symbol)
    if str(unit).startswith("delta_"):
        # Same dimensionality as a temperature, so the table cannot tell them apart.
        return _linear(symbol, unit, DELTA_TEMPERATURE)
    dims = _dims(unit)
    if dims == "dimensionless" and _UREG.Quantity(1.0, unit).to("").magnitude == 1.0:
        return Converter(symbol, symbol)  # a pure count, not a scaled ratio
    canonical = _canonical_table().get(dims)
    if canonical is None:
        raise UnitError(
            f"unit {symbol!r} ({dims}) has no canonical unit; known quantities: "
            f"{', '.join(sorted(set(_canonical_table().values())))}"
        )
    return _linear(symbol, unit, canonical)


def convert_to(value: float, symbol: str, target: str) -> float:
    """Convert one value between two arbitrary compatible units (slow path: lab results, limits)."""
    src, dst = parse_unit(symbol), parse_unit(target)
    try:
        return float(_UREG.Quantity(value, src).to(dst).magnitude)
    except pint.errors.DimensionalityError as exc:
        raise UnitError(f"cannot convert {symbol!r} to {target!r}: {exc}") from None


def _linear(symbol: str, unit: pint.Unit, canonical: str) -> Converter:
    # Every supported conversion is affine; two points recover factor and offset exactly enough
    # (relative error ~1e-16) and the per-reading cost becomes one multiply-add.
    at0 = float(_UREG.Quantity(0.0, unit).to(canonical).magnitude)
    at1k = float(_UREG.Quantity(1000.0, unit).to(canonical).magnitude)
    # Rounding to 15 significant digits removes pint's float noise (1e-4 not 9.999999999999999e-05).
    factor = float(f"{(at1k - at0) / 1000.0:.15g}")
    at0 = float(f"{at0:.15g}")
    if not (math.isfinite(factor) and math.isfinite(at0)) or factor == 0:
        raise UnitError(f"unit {symbol!r} does not convert linearly to {canonical!r}")
    return Converter(symbol, canonical, factor, at0)
