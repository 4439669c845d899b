"""Material specifications the simulated lots reference (real standards; figures from public
specs). The simulators draw lab results against these; the database seeds them (sinks)."""

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


# Filled by the simulators' authors: every material a simulated lot references.
MATERIALS: dict[str, MaterialSpec] = {}
