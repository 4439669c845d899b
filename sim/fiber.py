"""Fiber plant: PET POY melt spinning and a PAN-based carbon-fiber line.

POY (288 dtex / 288 f): extruder -> spin pack -> quench -> spin finish -> godet -> winder; a doff
every 15 min sim time (lab: tenacity, elongation, linear density). The winder's speed and
tension publish MQTT JSON. Carbon fiber (T700 12K): staged oxidation ovens (220/240/270 degC),
low- and high-temperature furnaces, tension between them; a spool every 30 min, four spools per
precursor creel lot (genealogy ``transform``).
"""

from __future__ import annotations

from typing import Unpack

from plantstream.sim.engine import (
    Analog,
    LotStream,
    PlantModel,
    Signal,
    SimTagOptions,
    TagModel,
    lot_count,
    lot_prefix,
    lot_signal,
    running,
    sim_tag,
    stable_key,
)

PLANT = "fiber"
POY_MATERIAL = "PET:POY-288-288"
CF_MATERIAL = "CF:T700-12K"
DOFF_S = 900.0
SPOOL_S = 1800.0
SPOOLS_PER_CREEL = 4

SITE = "acme/nantong"
POY = f"{SITE}/spinning/poy1"
CF = f"{SITE}/carbonfiber/cf1"

LAB_TYPICAL = {"strain": (1.95, 2.2)}


# Standard property per tag (shared vocabulary, docs/vocabulary.md): what lines up across plants.
STD_PROPERTIES: dict[str, str] = {
    "poy1.melt_temperature": "ps:temperature.melt",
    "poy1.extruder_pressure": "ps:pressure.gauge",
    "poy1.screw_speed": "ps:rotational-speed",
    "poy1.pack_pressure": "ps:pressure.gauge",
    "poy1.metering_pump_speed": "ps:rotational-speed",
    "poy1.quench_air_temperature": "ps:temperature.air",
    "poy1.quench_air_velocity": "ps:linear-speed.air",
    "poy1.quench_humidity": "ps:fraction.relative-humidity",
    "poy1.spin_finish_level": "ps:fraction.mass",
    "poy1.godet1_speed": "ps:linear-speed.material",
    "poy1.winding_speed": "ps:linear-speed.material",
    "poy1.yarn_tension": "ps:force.tension",
    "poy1.yarn_count": "ps:linear-density",
    "poy1.winder_running": "ps:running",
    "poy1.current_doff": "ps:lot-id",
    "poy1.doff_count": "ps:lot-count",
    **{f"cf1.oxidation_zone{n}_temperature": "ps:temperature.furnace" for n in range(1, 4)},
    "cf1.oxidation_exhaust_fan_running": "ps:running",
    "cf1.lt_furnace_temperature": "ps:temperature.furnace",
    "cf1.ht_furnace_temperature": "ps:temperature.furnace",
    "cf1.ht_furnace_n2_flow": "ps:volume-flow.gas",
    "cf1.tension_ox": "ps:force.tension",
    "cf1.tension_lt": "ps:force.tension",
    "cf1.tension_ht": "ps:force.tension",
    "cf1.line_speed": "ps:linear-speed.material",
    "cf1.current_spool": "ps:lot-id",
    "cf1.current_precursor": "ps:lot-id",
    "cf1.spool_count": "ps:lot-count",
}


def build(seed: int, step_us: int = 1_000_000, run: str = "") -> PlantModel:
    lp = lot_prefix(seed, run)  # the run in every lot id: ids are never reused across runs

    def key(name: str) -> int:
        return int(stable_key(seed, PLANT, name))

    def precursor_id(i: int) -> str:
        return f"PAN{lp}-{i + 1:04d}"

    doff = LotStream(
        "doff", POY, "doff", POY_MATERIAL, DOFF_S, lambda i: f"D{lp}-{i + 1:06d}",
        attrs=lambda i: {"positions": 16.0}, lab=("tenacity", "elongation", "linear_density"), lab_delay_s=300,
    )  # fmt: skip
    creel = LotStream("precursor", f"{CF}/creel", "precursor", "", SPOOL_S * SPOOLS_PER_CREEL, precursor_id)
    spool = LotStream(
        "spool", CF, "spool", CF_MATERIAL, SPOOL_S, lambda i: f"CF{lp}-{i + 1:05d}",
        parents=lambda i: (precursor_id(i // SPOOLS_PER_CREEL),), relation="transform",
        lab=("tensile_strength", "tensile_modulus", "strain", "linear_density", "density"), lab_delay_s=1200,
    )  # fmt: skip

    def T(
        tag: str, equipment: str, unit: str, lo: float, hi: float, signal: Signal, **kw: Unpack[SimTagOptions]
    ) -> TagModel:
        if kw.get("spec_property"):
            kw["material"] = CF_MATERIAL if equipment.startswith(CF) else POY_MATERIAL
        kw.setdefault("std_property", STD_PROPERTIES.get(tag, ""))
        return TagModel(sim_tag(PLANT, tag, equipment, unit, lo, hi, **kw), signal)

    def A(name: str, base: float, noise: float, wander: float, decimals: int = 2, **kw: float) -> Analog:
        return Analog(key(name), base, noise=noise, wander=wander, decimals=decimals, **kw)

    tags = [
        T("poy1.melt_temperature", f"{POY}/extruder", "degC", 250, 320, A("melt", 292.5, 0.15, 0.8, wave=0.3),
          grade="core", spec_property="melt_temperature"),
        T("poy1.extruder_pressure", f"{POY}/extruder", "MPa", 0, 30, A("exp", 12.0, 0.05, 0.4)),
        T("poy1.screw_speed", f"{POY}/extruder", "rpm", 0, 150, A("screw", 62.0, 0.2, 1.0)),
        T("poy1.pack_pressure", f"{POY}/spinpack", "MPa", 0, 40, A("pack", 17.0, 0.08, 0.8, wander_s=1800),
          grade="core", spec_property="spin_pack_pressure"),
        T("poy1.metering_pump_speed", f"{POY}/spinpack", "rpm", 0, 60, A("pump", 24.5, 0.02, 0.1, 3),
          grade="important"),
        T("poy1.quench_air_temperature", f"{POY}/quench", "degC", 10, 30, A("qt", 20.0, 0.08, 0.5),
          grade="important", spec_property="quench_air_temperature"),
        T("poy1.quench_air_velocity", f"{POY}/quench", "m/s", 0, 1.5, A("qv", 0.5, 0.005, 0.02, 3)),
        T("poy1.quench_humidity", f"{POY}/quench", "percent", 0, 100, A("qh", 70.0, 0.3, 2.0)),
        T("poy1.spin_finish_level", f"{POY}/finish", "percent", 0, 2, A("fin", 0.55, 0.005, 0.05, 3)),
        T("poy1.godet1_speed", f"{POY}/godet", "m/min", 0, 5000, A("godet", 3150.0, 0.5, 3.0, 1)),
        T("poy1.winding_speed", f"{POY}/winder", "m/min", 0, 5000, A("wind", 3200.0, 0.5, 3.0, 1),
          transport="mqtt", grade="core", spec_property="winding_speed"),
        T("poy1.yarn_tension", f"{POY}/winder", "cN", 0, 50, A("ten", 12.0, 0.15, 0.8), transport="mqtt"),
        T("poy1.yarn_count", f"{POY}/winder", "denier", 200, 320, A("den", 259.2, 0.3, 1.0),
          description="online titer, legacy gauge in denier (288 dtex)"),
        T("poy1.winder_running", f"{POY}/winder", "", 0, 1, running(key("winder")), datatype="bool",
          grade="important"),
        T("poy1.current_doff", POY, "", 0, 0, lot_signal(doff), datatype="str", grade="important"),
        T("poy1.doff_count", POY, "", 0, 1e9, lot_count(doff), datatype="int"),
        *(
            T(f"cf1.oxidation_zone{n}_temperature", f"{CF}/oxidation", "degC", 150, 350,
              A(f"ox{n}", base, 0.1, 0.6, wave=0.3), grade="core", spec_property=f"oxidation_zone{n}_temperature")
            for n, base in ((1, 220.0), (2, 240.0), (3, 270.0))
        ),
        T("cf1.oxidation_exhaust_fan_running", f"{CF}/oxidation", "", 0, 1, running(key("fan"), off_share=0.01),
          datatype="bool"),
        T("cf1.lt_furnace_temperature", f"{CF}/lt_furnace", "degC", 0, 1000, A("lt", 650.0, 0.5, 4.0, 1),
          grade="important", spec_property="lt_furnace_temperature"),
        T("cf1.ht_furnace_temperature", f"{CF}/ht_furnace", "degC", 0, 1800, A("ht", 1350.0, 1.0, 8.0, 1, wave=3.0),
          grade="core", spec_property="ht_furnace_temperature"),
        T("cf1.ht_furnace_n2_flow", f"{CF}/ht_furnace", "m**3/h", 0, 200, A("n2", 40.0, 0.3, 1.5)),
        T("cf1.tension_ox", f"{CF}/oxidation", "N", 0, 500, A("tox", 120.0, 0.8, 4.0)),
        T("cf1.tension_lt", f"{CF}/lt_furnace", "N", 0, 500, A("tlt", 150.0, 0.8, 4.0)),
        T("cf1.tension_ht", f"{CF}/ht_furnace", "N", 0, 500, A("tht", 180.0, 0.8, 4.0)),
        T("cf1.line_speed", f"{CF}/winder", "m/min", 0, 30, A("ls", 10.0, 0.01, 0.1, 3)),
        T("cf1.current_spool", CF, "", 0, 0, lot_signal(spool), datatype="str", grade="important"),
        T("cf1.current_precursor", CF, "", 0, 0, lot_signal(creel), datatype="str"),
        T("cf1.spool_count", CF, "", 0, 1e9, lot_count(spool), datatype="int"),
    ]  # fmt: skip
    return PlantModel(PLANT, seed, tags, [doff, creel, spool], step_us=step_us, lab_typical=LAB_TYPICAL)
