"""Steel plant: ladle furnace -> slab caster -> hot strip mill, S355J2.

Lots: a heat (ladle furnace, 40 min) is cast into four slabs on the caster in the next 40 min
(genealogy ``split``); each slab is rolled into one coil after reheating (``transform``). Heats
get the ladle analysis, coils the tensile and impact tests (yield limit by coil thickness).
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
    gauss,
    lot_count,
    lot_phase,
    lot_prefix,
    lot_signal,
    running,
    sim_tag,
    stable_key,
    uniform,
)

PLANT = "steel"
MATERIAL = "EN10025-2:S355J2"
HEAT_S = 2400.0
SLABS_PER_HEAT = 4
LIQUIDUS_C = 1512.0  # S355 liquidus, for tundish superheat

SITE = "acme/duisburg"
LF = f"{SITE}/steelmaking/lf1"
CASTER = f"{SITE}/steelmaking/caster1"
HSM = f"{SITE}/hotrolling/hsm1"
COIL_THICKNESS_MM = (2.5, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 25.0)

LAB_TYPICAL = {
    "C": (0.14, 0.18),
    "Si": (0.20, 0.45),
    "Mn": (1.30, 1.52),
    "P": (0.008, 0.020),
    "S": (0.003, 0.012),
    "Cu": (0.05, 0.30),
    "Rm": (500.0, 590.0),
    "KV": (60.0, 160.0),
}


# Standard property per tag (shared vocabulary, docs/vocabulary.md): what lines up across plants.
# Temperature differences (tundish superheat, mould cooling-water delta T) are in ΔK: a bare K is
# an absolute temperature and would be normalized to -243.15 degC for 30 K.
STD_PROPERTIES: dict[str, str] = {
    "lf1.bath_temperature": "ps:temperature.melt",
    "caster1.tundish_superheat": "ps:temperature-difference.superheat",
    "caster1.mould_cw_delta_t": "ps:temperature-difference.coolant",
    "lf1.arc_power": "ps:power.electric",
    "lf1.arc_on": "ps:running",
    "lf1.argon_flow": "ps:volume-flow.gas",
    "lf1.alloy_added": "ps:mass",
    "lf1.current_heat": "ps:lot-id",
    "lf1.heat_count": "ps:lot-count",
    "caster1.mould_level": "ps:length.level",
    "caster1.casting_speed": "ps:linear-speed.material",
    "caster1.mould_cw_flow": "ps:volume-flow.coolant",
    "caster1.tundish_temperature": "ps:temperature.melt",
    "caster1.tundish_weight": "ps:mass",
    **{f"caster1.segment{n}_temperature": "ps:temperature.surface" for n in range(1, 5)},
    "caster1.cooling_water_pressure": "ps:pressure.gauge",
    "caster1.current_heat": "ps:lot-id",
    "caster1.current_slab": "ps:lot-id",
    "caster1.slab_count": "ps:lot-count",
    "caster1.strand_running": "ps:running",
    **{f"hsm1.roll_force_f{n}": "ps:force.rolling" for n in range(1, 7)},
    "hsm1.finishing_exit_temperature": "ps:temperature.surface",
    "hsm1.strip_thickness": "ps:length.thickness",
    "hsm1.strip_speed": "ps:linear-speed.material",
    "hsm1.coiling_temperature": "ps:temperature.surface",
    "hsm1.current_coil": "ps:lot-id",
    "hsm1.coil_count": "ps:lot-count",
}


def build(seed: int, step_us: int = 1_000_000, run: str = "") -> PlantModel:
    lp = lot_prefix(seed, run)  # the run in every lot id: ids are never reused across runs

    def key(name: str) -> int:
        return int(stable_key(seed, PLANT, name))

    def heat_id(i: int) -> str:
        return f"H{lp}-{i + 1:05d}"

    def slab_id(i: int) -> str:
        return f"{heat_id(i // SLABS_PER_HEAT)}-S{i % SLABS_PER_HEAT + 1}"

    def coil_thickness(i: int) -> float:
        return COIL_THICKNESS_MM[int(uniform(key("coil-thickness"), i) * len(COIL_THICKNESS_MM))]

    slab_s = HEAT_S / SLABS_PER_HEAT
    heat = LotStream(
        "heat", LF, "heat", MATERIAL, HEAT_S, heat_id, lab=("C", "Si", "Mn", "P", "S", "Cu"), lab_delay_s=60
    )
    slab = LotStream(
        "slab", CASTER, "slab", MATERIAL, slab_s, slab_id, offset_s=HEAT_S,
        parents=lambda i: (heat_id(i // SLABS_PER_HEAT),), relation="split",
        attrs=lambda i: {"thickness_mm": 220.0, "width_mm": 1600.0},
    )  # fmt: skip
    coil = LotStream(
        "coil", HSM, "coil", MATERIAL, slab_s, lambda i: f"C{lp}-{i + 1:06d}", offset_s=2 * HEAT_S + slab_s,
        parents=lambda i: (slab_id(i),), relation="transform",
        attrs=lambda i: {"thickness_mm": coil_thickness(i), "width_mm": 1600.0},
        lab=("ReH", "Rm", "KV"), lab_delay_s=600,
    )  # fmt: skip

    def bath_temperature(k: int, t: float) -> float:
        # Spot readings (immersion probe): four per heat, rising as the arc heats the bath.
        i = heat.index_at(t) or 0
        r = min(3, int(lot_phase(heat, t) * 4))
        return round(1565.0 + 20.0 * r + float(gauss(key("bath"), i * 4 + r)) * 4.0, 1)

    arc = Analog(key("arc"), 18.0, noise=0.6, wander=1.5, wander_s=120, decimals=2)

    def arc_power(k: int, t: float) -> float:
        return arc(k, t) if lot_phase(heat, t) < 0.7 else 0.0

    def arc_on(k: int, t: float) -> bool:
        return bool(lot_phase(heat, t) < 0.7)

    def alloy_added(k: int, t: float) -> int:
        i, ph = heat.index_at(t) or 0, lot_phase(heat, t)
        kg = 0
        for at, base, extra in ((0.1, 550, 120), (0.3, 180, 90), (0.5, 60, 40)):
            if ph >= at:
                kg += base + int(extra * uniform(key("alloy"), i * 8 + int(at * 10)))
        return kg

    def cast_phase(t: float) -> float:
        # The heat on the caster is one period behind the ladle furnace.
        return float(lot_phase(slab, t)) / SLABS_PER_HEAT + ((slab.index_at(t) or 0) % SLABS_PER_HEAT) / SLABS_PER_HEAT

    tundish = Analog(key("tundish"), lambda t: 1548.0 - 10.0 * cast_phase(t), noise=0.7, wander=1.5, decimals=1)

    def superheat(k: int, t: float) -> float:
        return round(float(tundish(k, t)) - LIQUIDUS_C, 1)

    def caster_heat(k: int, t: float) -> str:
        i = slab.index_at(t)
        return "" if i is None else heat_id(i // SLABS_PER_HEAT)

    def strip_thickness(k: int, t: float) -> float:
        i = coil.index_at(t)
        return 0.0 if i is None else round(coil_thickness(i) + 0.01 * gauss(key("thk"), k), 3)

    def T(
        tag: str, equipment: str, unit: str, lo: float, hi: float, signal: Signal, **kw: Unpack[SimTagOptions]
    ) -> TagModel:
        if kw.get("spec_property"):
            kw["material"] = MATERIAL
        kw.setdefault("std_property", STD_PROPERTIES.get(tag, ""))
        return TagModel(sim_tag(PLANT, tag, equipment, unit, lo, hi, **kw), signal)

    furnace, mould, tund, strand = f"{LF}/furnace", f"{CASTER}/mould", f"{CASTER}/tundish", f"{CASTER}/strand"
    finishing, coiler = f"{HSM}/finishing", f"{HSM}/coiler"
    tags = [
        T("lf1.bath_temperature", furnace, "degC", 1500, 1700, bath_temperature, grade="core",
          description="bath temperature, immersion-probe spot reading"),
        T("lf1.arc_power", furnace, "MW", 0, 40, arc_power, grade="important"),
        T("lf1.arc_on", furnace, "", 0, 1, arc_on, datatype="bool"),
        T("lf1.argon_flow", furnace, "L/min", 0, 600, Analog(key("argon"), 300.0, noise=8, wander=40, decimals=1)),
        T("lf1.alloy_added", furnace, "kg", 0, 2000, alloy_added, datatype="int",
          description="alloy additions to the current heat (FeSiMn, FeMn, Al)"),
        T("lf1.current_heat", LF, "", 0, 0, lot_signal(heat), datatype="str", grade="important"),
        T("lf1.heat_count", LF, "", 0, 1e9, lot_count(heat), datatype="int"),
        T("caster1.mould_level", mould, "mm", 0, 200,
          Analog(key("mould"), 100.0, noise=0.8, wander=2.0, wander_s=60, wave=1.0, wave_s=40, decimals=2),
          grade="core", spec_property="mould_level"),
        T("caster1.casting_speed", mould, "m/min", 0, 2.5,
          Analog(key("speed"), 1.2, noise=0.005, wander=0.08, wander_s=900, wave=0.03, decimals=3),
          grade="core", spec_property="casting_speed"),
        T("caster1.mould_cw_flow", mould, "m**3/h", 0, 600, Analog(key("mcw"), 380.0, noise=2, wander=6, decimals=1)),
        T("caster1.mould_cw_delta_t", mould, "ΔK", 0, 20, Analog(key("mdt"), 8.5, noise=0.15, wander=0.6, decimals=2)),
        T("caster1.tundish_temperature", tund, "degC", 1450, 1650, tundish, grade="important"),
        T("caster1.tundish_superheat", tund, "ΔK", 0, 100, superheat, grade="important", spec_property="tundish_superheat"),
        T("caster1.tundish_weight", tund, "t", 0, 80, Analog(key("tw"), 58.0, noise=0.2, wander=3, decimals=2)),
        *(
            T(f"caster1.segment{n}_temperature", strand, "degC", 600, 1300,
              Analog(key(f"seg{n}"), base, noise=3, wander=12, decimals=1))
            for n, base in ((1, 1060.0), (2, 985.0), (3, 925.0), (4, 870.0))
        ),
        T("caster1.cooling_water_pressure", strand, "psi", 0, 250,
          Analog(key("cwp"), 145.0, noise=0.8, wander=3, decimals=1), description="legacy gauge, psi"),
        T("caster1.current_heat", CASTER, "", 0, 0, caster_heat, datatype="str", grade="important",
          description="heat being cast"),
        T("caster1.current_slab", CASTER, "", 0, 0, lot_signal(slab), datatype="str"),
        T("caster1.slab_count", CASTER, "", 0, 1e9, lot_count(slab), datatype="int"),
        T("caster1.strand_running", strand, "", 0, 1, running(key("strand")), datatype="bool"),
        *(
            T(f"hsm1.roll_force_f{n}", finishing, "kN", 0, 40000,
              Analog(key(f"rf{n}"), base, noise=120, wander=600, wander_s=300, decimals=1),
              grade="important" if n == 1 else "general")
            for n, base in enumerate((24000.0, 21000.0, 17500.0, 14000.0, 11000.0, 8500.0), start=1)
        ),
        T("hsm1.finishing_exit_temperature", finishing, "degC", 700, 1100,
          Analog(key("fet"), 900.0, noise=1.5, wander=12, wander_s=300, wave=6, decimals=1),
          grade="core", spec_property="finishing_exit_temperature"),
        T("hsm1.strip_thickness", finishing, "mm", 0, 30, strip_thickness),
        T("hsm1.strip_speed", finishing, "m/s", 0, 25, Analog(key("ss"), 11.0, noise=0.05, wander=0.8, decimals=3)),
        T("hsm1.coiling_temperature", coiler, "degC", 400, 800,
          Analog(key("ct"), 600.0, noise=2, wander=10, wander_s=300, wave=5, decimals=1),
          grade="important", spec_property="coiling_temperature"),
        T("hsm1.current_coil", HSM, "", 0, 0, lot_signal(coil), datatype="str", grade="important"),
        T("hsm1.coil_count", HSM, "", 0, 1e9, lot_count(coil), datatype="int"),
    ]  # fmt: skip
    return PlantModel(PLANT, seed, tags, [heat, slab, coil], step_us=step_us, lab_typical=LAB_TYPICAL)
