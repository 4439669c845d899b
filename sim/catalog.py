"""What a simulated plant exposes: one ``SimTag`` per signal. The simulators fill ``CATALOGS``;
the demo turns a catalog into an edge-agent config (``plantstream.sim.edgeconfig``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class SimTag:
    tag: str  # unique in the plant, e.g. "caster1.mould_level"
    equipment: str  # ISA-95 path enterprise/site/area/line/unit
    unit: str  # unit symbol as the simulator sends it (pint-parsable)
    lo: float  # engineering range
    hi: float
    datatype: Literal["float", "int", "bool", "str"] = "float"
    transport: Literal["opcua", "mqtt"] = "opcua"
    node_id: str = ""  # OPC-UA NodeId string, e.g. "ns=2;s=caster1.mould_level"
    mqtt_topic: str = ""  # for transport "mqtt"
    grade: Literal["core", "important", "general"] = "general"
    spec_property: str = ""  # material-spec property this tag is checked against (e.g. "casting_speed")
    description: str = ""
    material: str = ""  # material spec id whose process limit ``spec_property`` refers to
    std_property: str = ""  # standard property id of the shared vocabulary (plantstream.domain.vocabulary)


PLANTS = ("steel", "chemical", "fiber")

_catalogs: dict[str, list[SimTag]] = {}


def catalog(plant: str) -> list[SimTag]:
    """The tags of ``plant`` (KeyError for an unknown plant). Static: independent of the seed."""
    if not _catalogs:
        from plantstream.sim.plants import build

        for p in PLANTS:
            _catalogs[p] = [t.meta for t in build(p, seed=0).tags]
    return _catalogs[plant]


def __getattr__(name: str) -> dict[str, list[SimTag]]:
    # CATALOGS is built on first use: the plant modules import this module for SimTag.
    if name == "CATALOGS":
        catalog(PLANTS[0])
        return _catalogs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
