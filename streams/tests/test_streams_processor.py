from __future__ import annotations

import pytest

from plantstream.contract import ContextEvent, ContextKind, Origin, Quality, Reading, TagMeta
from plantstream.domain.materials import MaterialSpec, PropertyLimit
from plantstream.producers.codec import encode_readings, encode_tag_meta
from plantstream.streams.logic.processor import LATE_REASON, Processor, ProcessorConfig, SharedContext
from plantstream.streams.logic.specs import MaterialsRegistry

CASTER = "acme/duisburg/steelmaking/caster1"
T0 = 1_700_000_040_000_000 - 1_700_000_040_000_000 % 60_000_000
SPEC = MaterialSpec(
    "TEST:S355",
    "EN 10025-2",
    "S355J2",
    "1",
    "2004-01-01",
    "steel",
    "t",
    (PropertyLimit("casting_speed", "m/min", min=0.8, max=2.0, basis="process"),),
)


def reading(
    tag: str, ts: int, value: float | str, seq: int, unit: str = "degF", eq: str = CASTER + "/mould"
) -> Reading:
    return Reading("steel", eq, tag, ts, value, unit, Quality.GOOD, Origin.OPCUA, "edge1", seq)


def make() -> Processor:
    shared = SharedContext(registry=MaterialsRegistry({"TEST:S355": SPEC}))
    assert shared.register_tag(TagMeta("steel", "temp", CASTER + "/mould", "degF", lo=32.0, hi=3000.0)) is None
    assert (
        shared.register_tag(TagMeta("steel", "speed", CASTER + "/mould", "m/s", spec_property="casting_speed")) is None
    )
    shared.apply_context(ContextEvent(ContextKind.LOT_START, "steel", CASTER, T0, "H1", material="TEST:S355"))
    return Processor(shared, ProcessorConfig(allowed_lateness_s=0.5), partition=0)


def test_streams_processor_normalizes_stamps_and_aggregates() -> None:
    p = make()
    batch = [reading("temp", T0 + i * 100_000, 212.0 + i * 9.0, i + 1) for i in range(20)]
    out = p.process_raw(encode_readings(batch), "raw/0/0", 0, 0)
    assert out.readings_in == 20 and not out.deadletters
    clean = out.clean[0]
    assert clean.unit == ["degC"] * 20
    assert clean.value[0] == pytest.approx(100.0) and clean.value[1] == pytest.approx(105.0)
    assert clean.lot == ["H1"] * 20
    assert [a.start_us for a in out.aggregates if a.window == "1s"] == [T0]  # [T0+1s, T0+2s) still open
    agg = out.aggregates[0]
    assert agg.count == 10 and agg.lot == "H1" and agg.unit == "degC"
    assert agg.mean == pytest.approx(sum(100.0 + 5.0 * i for i in range(10)) / 10)


def test_streams_processor_drops_replayed_duplicates() -> None:
    p = make()
    batch = [reading("temp", T0 + i * 1000, 100.0, i + 1) for i in range(10)]
    p.process_raw(encode_readings(batch), "raw/0/0", 0, 0)
    out = p.process_raw(encode_readings([*batch[5:], reading("temp", T0 + 20000, 100.0, 11)]), "raw/0/1", 1, 0)
    assert out.duplicates == 5 and len(out.clean[0]) == 1 and out.clean[0].seq == [11]


def test_streams_processor_undecodable_and_bad_meta_become_dead_letters() -> None:
    p = make()
    out = p.process_raw(b"garbage", "t.raw/2/7", 7, 0, key=b"k")
    assert len(out.deadletters) == 1
    dl = out.deadletters[0]
    assert dl.value == b"garbage" and "magic" in dl.reason and dl.origin == "t.raw/2/7"
    assert p.safe_offset() == 8
    bad = encode_tag_meta(TagMeta("steel", "weird", CASTER, "blorps"))
    dls = p.shared.tag_record(bad, "t.tags/0/0")
    assert len(dls) == 1 and "blorps" in dls[0].reason
    out = p.process_batch(
        __import__("plantstream.producers.codec", fromlist=["ReadingBatch"]).ReadingBatch.of(
            [reading("weird", T0, 1.0, 1, unit="blorps")]
        ),
        9,
        0,
    )
    assert out.clean[0].quality == [int(Quality.UNCERTAIN)] and "unit" in (out.clean[0].reason[0] or "")


def test_streams_processor_wrong_type_is_bad_and_counted_in_aggregate() -> None:
    p = make()
    batch = [
        reading("temp", T0, "oops", 1),
        reading("temp", T0 + 1, 212.0, 2),
        reading("temp", T0 + 2_000_000, 212.0, 3),
    ]
    out = p.process_raw(encode_readings(batch), "raw/0/0", 0, 0)
    assert out.clean[0].quality[0] == int(Quality.BAD)
    agg = next(a for a in out.aggregates if a.window == "1s")
    assert (agg.count, agg.bad_count) == (1, 1)


def test_streams_processor_late_readings_kept_in_clean_and_reported() -> None:
    p = make()
    p.process_raw(encode_readings([reading("temp", T0 + 3_000_000, 212.0, 1)]), "raw/0/0", 0, 0)
    out = p.process_raw(encode_readings([reading("temp", T0 + 100, 212.0, 2)]), "raw/0/1", 1, 0)
    assert out.late == 1 and out.clean[0].reason == [LATE_REASON]
    late = [d for d in out.deviations if d.kind == "late_data"]
    assert len(late) == 1 and late[0].details["count"] == 1 and late[0].details["window_start_us"] == T0


def test_streams_processor_spec_excursion_from_process_tag() -> None:
    p = make()
    # m/s on the wire, m/min canonical: 0.04 m/s = 2.4 m/min > 2.0
    rows = [reading("speed", T0 + i * 1_000_000, v, i + 1, unit="m/s") for i, v in enumerate([0.02, 0.04, 0.05, 0.02])]
    out = p.process_raw(encode_readings(rows), "raw/0/0", 0, 0)
    devs = [d for d in out.deviations if d.kind == "process"]
    assert [d.status for d in devs] == ["open", "closed"]
    assert devs[0].id == devs[1].id and devs[1].peak == pytest.approx(3.0)
    assert devs[1].details["duration_s"] == pytest.approx(2.0) and devs[1].lot == "H1"


def test_streams_processor_lab_result_only_when_asked() -> None:
    p = make()
    spec = MaterialSpec("TEST:S355", "x", "y", "1", "2004", "steel", "t", (PropertyLimit("C", "percent", max=0.2),))
    p.specs.registry = MaterialsRegistry({"TEST:S355": spec})
    ev = ContextEvent(ContextKind.LAB_RESULT, "steel", CASTER, T0, "H1", results={"C": (0.3, "percent")})
    assert p.process_context(ev, emit_lab=False).deviations == []
    assert len(p.process_context(ev, emit_lab=True).deviations) == 1


def test_streams_processor_passes_an_origin_it_does_not_know() -> None:
    """A connector newer than this worker (origin id 200 on the wire) is processed, not dead-lettered."""
    import dataclasses

    from plantstream.producers.codec import decode_readings

    p = make()
    batch = [dataclasses.replace(reading("temp", T0 + i * 1000, 212.0, i + 1), origin=Origin(200)) for i in range(5)]
    out = p.process_raw(encode_readings(batch), "raw/0/0", 0, 0)
    assert out.readings_in == 5 and not out.deadletters
    again = decode_readings(encode_readings(out.clean[0]))
    assert int(again.origin) == 200 and again.origin.label == "origin_200"
    assert again.value[0] == pytest.approx(100.0)
