"""Material specifications (real standards; figures from public specs): the catalogue the
database's spec registry is seeded with (sinks), the streams' default registry, and what the
simulated plants draw their lab results against. Core domain: never imports a stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PropertyLimit:
    property: str  # e.g. "C", "ReH", "casting_speed", "melt_temperature"
    unit: str  # pint-parsable: "percent", "MPa", "J", "ppm", "degC", "m/min", "cN/dtex", "g/km"
    min: float | None = None
    max: float | None = None
    target: float | None = None
    basis: str = "lab"  # "lab": lot test result; "process": a live process tag is checked against it
    condition: str = ""  # e.g. "thickness_mm<=16", "test_temperature=-20degC"
    test_method: str = ""  # e.g. "ISO 6892-1", "ISO 148-1", "ASTM D7976"


@dataclass(frozen=True, slots=True)
class MaterialSpec:
    spec_id: str  # e.g. "EN10025-2:S355J2"
    standard: str  # e.g. "EN 10025-2:2004"
    grade: str  # e.g. "S355J2"
    revision: str
    effective_from: str  # ISO date
    material_class: str  # ISA-95 material class, e.g. "structural steel"
    description: str
    limits: tuple[PropertyLimit, ...]


L = PropertyLimit

_S355J2 = MaterialSpec(
    spec_id="EN10025-2:S355J2",
    standard="EN 10025-2:2004",
    grade="S355J2",
    revision="2004",
    effective_from="2005-02-01",
    material_class="structural steel",
    description="Non-alloy structural steel, hot-rolled; J2: Charpy V 27 J at -20 degC (1.0577)",
    limits=(
        # Ladle analysis (heat), max.
        # Listed strictest first: a heat (no thickness yet) is held to 0.20.
        L("C", "percent", max=0.20, condition="thickness_mm<=40", test_method="ladle analysis"),
        L("C", "percent", max=0.22, condition="thickness_mm<=250", test_method="ladle analysis"),
        L("Si", "percent", max=0.55, test_method="ladle analysis"),
        L("Mn", "percent", max=1.60, test_method="ladle analysis"),
        L("P", "percent", max=0.025, test_method="ladle analysis"),
        L("S", "percent", max=0.025, test_method="ladle analysis"),
        L("Cu", "percent", max=0.55, test_method="ladle analysis"),
        # Mechanical (coil): the yield minimum falls with nominal thickness.
        L("ReH", "MPa", min=355, condition="thickness_mm<=16", test_method="ISO 6892-1"),
        L("ReH", "MPa", min=345, condition="thickness_mm<=40", test_method="ISO 6892-1"),
        L("ReH", "MPa", min=335, condition="thickness_mm<=63", test_method="ISO 6892-1"),
        L("ReH", "MPa", min=325, condition="thickness_mm<=80", test_method="ISO 6892-1"),
        L("ReH", "MPa", min=315, condition="thickness_mm<=100", test_method="ISO 6892-1"),
        L("Rm", "MPa", min=470, max=630, condition="thickness_mm<=100", test_method="ISO 6892-1"),
        L("KV", "J", min=27, condition="test_temperature=-20degC", test_method="ISO 148-1"),
        # Process window the plant runs this grade in (live tags are checked against these).
        L("casting_speed", "m/min", min=0.9, max=1.6, target=1.2, basis="process"),
        L("tundish_superheat", "ΔK", min=15, max=45, target=30, basis="process"),
        L("mould_level", "mm", min=90, max=110, target=100, basis="process"),
        L("finishing_exit_temperature", "degC", min=850, max=950, target=900, basis="process"),
        L("coiling_temperature", "degC", min=550, max=650, target=600, basis="process"),
    ),
)

_PTA = MaterialSpec(
    spec_id="PTA:SALES",
    standard="PTA sales specification (ASTM D7976 family test methods)",
    grade="PTA",
    revision="1",
    effective_from="2020-01-01",
    material_class="purified terephthalic acid",
    description="Purified terephthalic acid, polymer grade",
    limits=(
        L("4-CBA", "ppm", max=15, test_method="ASTM D7884"),
        L("p_toluic_acid", "ppm", max=150, test_method="ASTM D7884"),
        L("ash", "ppm", max=4, test_method="ASTM D7976"),
        L("water", "percent", max=0.2, test_method="ASTM E1064"),
        L("b_star", "dimensionless", max=1.2, test_method="ASTM E308 (CIE L*a*b*)"),
        # Acid value is mg KOH per g; the KOH is implied (pint has no KOH unit).
        L("acid_value", "mg/g", min=673, max=677, target=675, test_method="ASTM D7976"),
        L("total_metals", "ppm", max=0.5, condition="Co+Mn+Fe+Ni+Cr", test_method="ICP-OES"),
        L("Fe", "ppm", max=0.2, test_method="ICP-OES"),
        L("T400", "percent", min=97, test_method="transmittance at 400 nm"),
        L("D50", "um", min=80, max=110, target=95, test_method="laser diffraction"),
        L("reactor_temperature", "degC", min=118, max=123, target=120.4, basis="process"),
        L("reactor_pressure", "kPa", min=2650, max=2850, target=2705, basis="process"),
    ),
)

_POY = MaterialSpec(
    spec_id="PET:POY-288-288",
    standard="plant specification",
    grade="POY 288 dtex/288 f",
    revision="A",
    effective_from="2022-06-01",
    material_class="polyester partially oriented yarn",
    description="PET POY 288 dtex / 288 filaments, semi-dull",
    limits=(
        L("tenacity", "cN/dtex", min=2.0, max=2.4, target=2.15, test_method="ISO 2062"),
        L("elongation", "percent", min=120, max=140, target=130.5, test_method="ISO 2062"),
        L("linear_density", "dtex", min=282.2, max=293.8, target=288, test_method="ISO 2060"),
        L("melt_temperature", "degC", min=285, max=295, target=292.5, basis="process"),
        L("winding_speed", "m/min", min=2500, max=3500, target=3000, basis="process"),
        L("quench_air_temperature", "degC", min=18, max=22, target=20, basis="process"),
        L("spin_pack_pressure", "MPa", min=14, max=20, target=17, basis="process"),
    ),
)

_T700 = MaterialSpec(
    spec_id="CF:T700-12K",
    standard="plant specification (T700-class)",
    grade="T700 12K",
    revision="B",
    effective_from="2023-01-01",
    material_class="PAN-based carbon fiber",
    description="High-strength carbon fiber tow, 12K, T700 class",
    limits=(
        L("tensile_strength", "MPa", min=4410, target=4900, test_method="ISO 10618"),
        L("tensile_modulus", "GPa", min=220, max=240, target=230, test_method="ISO 10618"),
        L("strain", "percent", min=1.8, target=2.1, test_method="ISO 10618"),
        L("linear_density", "g/km", min=760, max=840, target=800, test_method="ISO 10120"),
        L("density", "g/cm**3", min=1.78, max=1.82, target=1.80, test_method="ISO 10119"),
        # Oxidation ovens are staged; uniformity is +-2.5 degC per zone.
        L("oxidation_zone1_temperature", "degC", min=217.5, max=222.5, target=220, basis="process"),
        L("oxidation_zone2_temperature", "degC", min=237.5, max=242.5, target=240, basis="process"),
        L("oxidation_zone3_temperature", "degC", min=267.5, max=272.5, target=270, basis="process"),
        L("lt_furnace_temperature", "degC", min=500, max=800, target=650, basis="process"),
        L("ht_furnace_temperature", "degC", min=1200, max=1600, target=1350, basis="process"),
    ),
)

# Every material a simulated lot references.
MATERIALS: dict[str, MaterialSpec] = {m.spec_id: m for m in (_S355J2, _PTA, _POY, _T700)}


def process_limit(spec_id: str, prop: str) -> PropertyLimit | None:
    """The process-basis limit of ``prop`` in ``spec_id``, or None when the spec has none."""
    spec = MATERIALS.get(spec_id)
    if spec is None:
        return None
    for lim in spec.limits:
        if lim.basis == "process" and lim.property == prop:
            return lim
    return None


def condition_applies(condition: str, attrs: dict[str, float]) -> bool | None:
    """Evaluate ``name<=number`` against ``attrs``; None when the condition is a test condition
    (``name=value``) or names an attribute the lot does not have (it then applies unconditionally)."""
    if "<=" not in condition:
        return None
    name, _, bound = condition.partition("<=")
    if name.strip() not in attrs:
        return None
    return attrs[name.strip()] <= float(bound)


def lab_limits(spec_id: str, attrs: dict[str, float] | None = None) -> dict[str, PropertyLimit]:
    """The lab limit that governs each property for a lot with ``attrs`` (e.g. thickness_mm).

    Where several limits of one property carry ``name<=bound`` conditions, the one with the
    smallest bound that the lot satisfies wins (EN 10025 thickness steps). Raises KeyError for
    an unknown spec id.
    """
    attrs = attrs or {}
    chosen: dict[str, tuple[float, PropertyLimit]] = {}
    for lim in MATERIALS[spec_id].limits:
        if lim.basis != "lab":
            continue
        ok = condition_applies(lim.condition, attrs)
        if ok is False:
            continue
        rank = float(lim.condition.partition("<=")[2]) if ok else float("inf")
        if lim.property not in chosen or rank < chosen[lim.property][0]:
            chosen[lim.property] = (rank, lim)
    return {p: lim for p, (_, lim) in chosen.items()}


def violations(spec_id: str, results: dict[str, tuple[float, str]], attrs: dict[str, float] | None = None) -> list[str]:
    """Properties of ``results`` outside their governing lab limit (same unit assumed)."""
    out = []
    for prop, lim in lab_limits(spec_id, attrs).items():
        if prop not in results:
            continue
        value = results[prop][0]
        if (lim.min is not None and value < lim.min) or (lim.max is not None and value > lim.max):
            out.append(prop)
    return out
