"""Chemical plant: a reactor train laid out like the Tennessee Eastman process, making PTA.

Measurements follow the TE base case (reactor 2705 kPa / 120.4 degC, separator, stripper,
recycle compressor; valves in % open). The online analyzers (TE's composition measurements,
sampled every 6 min) publish MQTT JSON instead of OPC-UA. Lots are 30 min product batches; every
four batches are merged into a silo lot (genealogy ``merge``); batches get the sales-spec lab test.
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

PLANT = "chemical"
MATERIAL = "PTA:SALES"
BATCH_S = 1800.0
BATCHES_PER_SILO = 4
ANALYZER_S = 360.0  # TE composition analyzers sample every 0.1 h

SITE = "acme/antwerp"
TRAIN = f"{SITE}/pta/train1"

LAB_TYPICAL = {
    "4-CBA": (4.0, 12.0),
    "p_toluic_acid": (60.0, 130.0),
    "ash": (0.5, 3.0),
    "water": (0.03, 0.15),
    "b_star": (0.4, 1.0),
    "total_metals": (0.05, 0.4),
    "Fe": (0.02, 0.15),
    "T400": (97.5, 99.2),
}


# Standard property per tag (shared vocabulary, docs/vocabulary.md): what lines up across plants.
_VALVES = (
    "feed.d_feed_valve", "feed.e_feed_valve", "feed.a_feed_valve", "compressor.recycle_valve", "separator.purge_valve",
    "separator.liquid_valve", "stripper.liquid_valve", "reactor.cw_valve",
)  # fmt: skip
STD_PROPERTIES: dict[str, str] = {
    "feed.a_flow": "ps:volume-flow.gas",
    "feed.d_flow": "ps:mass-flow",
    "feed.e_flow": "ps:mass-flow",
    "feed.ac_flow": "ps:volume-flow.gas",
    "reactor.pressure": "ps:pressure.gauge",
    "reactor.temperature": "ps:temperature.process",
    "reactor.level": "ps:fraction.level",
    "reactor.feed_rate": "ps:volume-flow.gas",
    "reactor.cw_outlet_temperature": "ps:temperature.coolant",
    "reactor.agitator_running": "ps:running",
    "separator.temperature": "ps:temperature.process",
    "separator.level": "ps:fraction.level",
    "separator.pressure": "ps:pressure.gauge",
    "separator.underflow": "ps:volume-flow",
    "condenser.cw_outlet_temperature": "ps:temperature.coolant",
    "stripper.level": "ps:fraction.level",
    "stripper.pressure": "ps:pressure.gauge",
    "stripper.underflow": "ps:volume-flow",
    "stripper.temperature": "ps:temperature.process",
    "stripper.steam_flow": "ps:mass-flow",
    "compressor.work": "ps:power",
    "compressor.running": "ps:running",
    **{tag: "ps:fraction.valve-position" for tag in _VALVES},
    **{
        f"analyzer.{c}": "ps:fraction.mole"
        for c in ("feed_a", "feed_b", "feed_c", "feed_d", "feed_e", "feed_f", "product_g", "product_h")
    },
    "product.current_batch": "ps:lot-id",
    "product.batch_count": "ps:lot-count",
}


def build(seed: int, step_us: int = 1_000_000, run: str = "") -> PlantModel:
    lp = lot_prefix(seed, run)  # the run in every lot id: ids are never reused across runs

    def key(name: str) -> int:
        return int(stable_key(seed, PLANT, name))

    def batch_id(i: int) -> str:
        return f"PTA{lp}-B{i + 1:05d}"

    batch = LotStream(
        "batch", TRAIN, "batch", MATERIAL, BATCH_S, batch_id,
        lab=("4-CBA", "p_toluic_acid", "ash", "water", "b_star", "acid_value", "total_metals", "Fe", "T400", "D50"),
        lab_delay_s=900,
    )  # fmt: skip
    silo = LotStream(
        "silo", f"{SITE}/pta/silos", "silo", MATERIAL, BATCH_S * BATCHES_PER_SILO,
        lambda i: f"PTA{lp}-S{i + 1:04d}", offset_s=BATCH_S * BATCHES_PER_SILO,
        parents=lambda i: tuple(batch_id(i * BATCHES_PER_SILO + j) for j in range(BATCHES_PER_SILO)),
        relation="merge",
    )  # fmt: skip

    def T(tag: str, unit_: str, eu: str, lo: float, hi: float, signal: Signal, **kw: Unpack[SimTagOptions]) -> TagModel:
        if kw.get("spec_property"):
            kw["material"] = MATERIAL
        kw.setdefault("std_property", STD_PROPERTIES.get(tag, ""))
        return TagModel(sim_tag(PLANT, tag, f"{TRAIN}/{unit_}", eu, lo, hi, **kw), signal)

    def A(name: str, base: float, noise: float, wander: float, decimals: int = 2, **kw: float) -> Analog:
        return Analog(key(name), base, noise=noise, wander=wander, decimals=decimals, **kw)

    def analyzer(tag: str, base: float, noise: float) -> TagModel:
        sig = Analog(key(tag), base, noise=noise, wander=noise * 2, wander_s=3600, hold_s=ANALYZER_S, decimals=3)
        return T(tag, "analyzer", "percent", 0, 100, sig, transport="mqtt", description="mol %, online GC")

    tags = [
        # Feeds (TE xmeas 1-4)
        T("feed.a_flow", "feed", "m**3/h", 0, 1000, A("fa", 250.5, 2.0, 6.0)),
        T("feed.d_flow", "feed", "kg/h", 0, 6000, A("fd", 3664.0, 15.0, 40.0, 1)),
        T("feed.e_flow", "feed", "kg/h", 0, 8000, A("fe", 4509.0, 18.0, 50.0, 1)),
        T("feed.ac_flow", "feed", "m**3/h", 0, 15000, A("fac", 9350.0, 30.0, 90.0, 1)),
        # Reactor (xmeas 6-9, 21)
        T("reactor.pressure", "reactor", "kPa", 2000, 3200, A("rp", 2705.0, 2.5, 25.0, 1, wave=10.0),
          grade="core", spec_property="reactor_pressure"),
        T("reactor.temperature", "reactor", "degC", 80, 160, A("rt", 120.4, 0.05, 0.8, 3, wave=0.3),
          grade="core", spec_property="reactor_temperature"),
        T("reactor.level", "reactor", "percent", 0, 100, A("rl", 75.0, 0.3, 2.0)),
        T("reactor.feed_rate", "reactor", "m**3/h", 0, 80000, A("rf", 47400.0, 80.0, 400.0, 1)),
        T("reactor.cw_outlet_temperature", "reactor", "degC", 50, 130, A("rcw", 94.6, 0.1, 0.8)),
        T("reactor.agitator_running", "reactor", "", 0, 1, running(key("agit"), off_share=0.01), datatype="bool",
          grade="important"),
        # Separator (xmeas 11-14, 22)
        T("separator.temperature", "separator", "degC", 40, 120, A("st", 80.1, 0.08, 0.6)),
        T("separator.level", "separator", "percent", 0, 100, A("sl", 50.0, 0.4, 3.0)),
        T("separator.pressure", "separator", "kPa", 2000, 3200, A("sp", 2634.0, 2.5, 22.0, 1)),
        T("separator.underflow", "separator", "m**3/h", 0, 60, A("su", 25.16, 0.15, 0.8, 3)),
        T("condenser.cw_outlet_temperature", "condenser", "degF", 100, 250, A("ccw", 171.1, 0.2, 1.5),
          description="legacy transmitter in degF"),
        # Stripper (xmeas 15-19)
        T("stripper.level", "stripper", "percent", 0, 100, A("stl", 50.0, 0.4, 3.0)),
        T("stripper.pressure", "stripper", "kPa", 2500, 3800, A("stp", 3102.0, 3.0, 20.0, 1)),
        T("stripper.underflow", "stripper", "m**3/h", 0, 60, A("stu", 22.95, 0.12, 0.7, 3)),
        T("stripper.temperature", "stripper", "degC", 30, 110, A("stt", 65.7, 0.1, 0.7)),
        T("stripper.steam_flow", "stripper", "kg/h", 0, 500, A("sts", 230.3, 1.5, 8.0)),
        # Recycle compressor (xmeas 20)
        T("compressor.work", "compressor", "kW", 0, 600, A("cw", 341.4, 1.2, 6.0), grade="important"),
        T("compressor.running", "compressor", "", 0, 1, running(key("comp"), off_share=0.01), datatype="bool",
          grade="important"),
        # Manipulated variables (xmv 1-11), % open
        *(
            T(f"{u}.{name}", u, "percent", 0, 100, A(f"xmv-{name}", base, 0.15, 1.5))
            for u, name, base in (
                ("feed", "d_feed_valve", 63.05), ("feed", "e_feed_valve", 53.98), ("feed", "a_feed_valve", 24.64),
                ("compressor", "recycle_valve", 22.21), ("separator", "purge_valve", 40.06),
                ("separator", "liquid_valve", 38.10), ("stripper", "liquid_valve", 46.53),
                ("reactor", "cw_valve", 41.11),
            )
        ),
        # Online analyzers (xmeas 23-28, 40-41): MQTT JSON
        analyzer("analyzer.feed_a", 32.19, 0.08),
        analyzer("analyzer.feed_b", 8.89, 0.03),
        analyzer("analyzer.feed_c", 26.38, 0.07),
        analyzer("analyzer.feed_d", 6.88, 0.02),
        analyzer("analyzer.feed_e", 18.78, 0.05),
        analyzer("analyzer.feed_f", 1.66, 0.01),
        analyzer("analyzer.product_g", 53.72, 0.12),
        analyzer("analyzer.product_h", 43.83, 0.10),
        T("product.current_batch", "product", "", 0, 0, lot_signal(batch), datatype="str", grade="important"),
        T("product.batch_count", "product", "", 0, 1e9, lot_count(batch), datatype="int"),
    ]  # fmt: skip
    return PlantModel(PLANT, seed, tags, [batch, silo], step_us=step_us, lab_typical=LAB_TYPICAL)
