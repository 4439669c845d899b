"""Plant registry: build a simulated plant by name."""

from __future__ import annotations

from plantstream.sim import chemical, fiber, steel
from plantstream.sim.catalog import PLANTS
from plantstream.sim.engine import PlantModel

DEFAULT_PORTS = {"steel": 4841, "chemical": 4842, "fiber": 4843}


def build(plant: str, seed: int = 0, step_us: int = 1_000_000, run: str = "") -> PlantModel:
    """A fresh model of ``plant`` (ValueError for an unknown plant); ``step_us`` is sim time per sample,
    ``run`` goes into every lot id (see ``engine.run_id``)."""
    builders = {"steel": steel.build, "chemical": chemical.build, "fiber": fiber.build}
    if plant not in builders:
        raise ValueError(f"unknown plant {plant!r}; one of {', '.join(PLANTS)}")
    return builders[plant](seed, step_us, run)
