"""The wire codec: round trips keep values exact, versions are checked, bad input is named."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from plantstream.contract import Aggregate, ContextEvent, ContextKind, Grade, Origin, Quality, Reading, TagMeta
from plantstream.producers import codec
from plantstream.producers.codec import (
    CodecError,
    ReadingBatch,
    decode_aggregates,
    decode_context,
    decode_readings,
    decode_tag_meta,
    encode_aggregates,
    encode_context,
    encode_readings,
    encode_tag_meta,
)

values = st.one_of(
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(max_size=40),
)


def reading(i: int, value: object = 1.0, **kw: object) -> Reading:
    base: dict[str, object] = dict(
        plant="steel",
        equipment="acme/duisburg/steelmaking/caster1/mould",
        tag=f"caster1.t{i % 3}",
        ts_us=1_700_000_000_000_000 + i,
        value=value,
        unit="mm",
        quality=Quality.GOOD,
        origin=Origin.OPCUA,
        source="opc-caster",
        seq=i,
    )
    base.update(kw)
    return Reading(**base)  # type: ignore[arg-type]


@given(st.lists(values, min_size=1, max_size=50))
def test_round_trip_keeps_every_value_and_its_type(vals: list[object]) -> None:
    rs = [reading(i, v) for i, v in enumerate(vals)]
    out = list(decode_readings(encode_readings(rs)).readings())
    assert out == rs
    assert [type(r.value) for r in out] == [type(v) for v in vals]


def test_optional_columns_round_trip() -> None:
    rs = [
        reading(0, 3.5, status_code=0x80000000, quality=Quality.BAD, server_ts_us=123),
        reading(1, 7, lot="H260001", reason="above range"),
    ]
    assert list(decode_readings(encode_readings(rs)).readings()) == rs


def test_batch_refuses_mixed_equipment() -> None:
    with pytest.raises(ValueError, match="one batch holds one plant/equipment/source"):
        ReadingBatch.of([reading(0), reading(1, equipment="acme/other")])


def test_dictionary_encoding_makes_batches_compact() -> None:
    rs = [reading(i, float(i)) for i in range(500)]
    data = encode_readings(rs)
    # 500 readings of 3 tags: tag names and units are sent once, so well under 30 bytes a reading.
    assert len(data) < 500 * 30


def test_version_is_checked_before_the_body() -> None:
    data = bytearray(encode_readings([reading(0)]))
    data[2] = 99
    with pytest.raises(CodecError, match="unsupported schema version 99"):
        decode_readings(bytes(data))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "bad magic"),
        (b"{}", "bad magic"),
        (b"PS\x01\x01\xc1", "corrupt body"),
        (codec.MAGIC + bytes((1, 2)) + msgpack.packb([]), r"kind 2 where 1 \(READINGS\)"),
        (codec.MAGIC + bytes((1, 1)) + msgpack.packb([1, 2]), "16-element array"),
    ],
)
def test_bad_input_names_the_problem(payload: bytes, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        decode_readings(payload)


def test_wrong_types_inside_a_batch_are_named() -> None:
    body = msgpack.unpackb(encode_readings([reading(0)])[4:])
    body[8] = [1.5]  # ts_us must be integers
    with pytest.raises(CodecError, match="ts_us must be integers"):
        decode_readings(codec.MAGIC + bytes((1, 1)) + msgpack.packb(body))
    body = msgpack.unpackb(encode_readings([reading(0)])[4:])
    body[9] = [[1, 2]]  # a list is not a reading value
    with pytest.raises(CodecError, match=r"value of row 0 \('caster1.t0'\) is list"):
        decode_readings(codec.MAGIC + bytes((1, 1)) + msgpack.packb(body))
    body = msgpack.unpackb(encode_readings([reading(0)])[4:])
    body[12] = [1, 2]  # seq column longer than the batch
    with pytest.raises(CodecError, match="column 'seq' has 2 rows, expected 1"):
        decode_readings(codec.MAGIC + bytes((1, 1)) + msgpack.packb(body))


def test_aggregates_context_and_tag_meta_round_trip() -> None:
    agg = Aggregate("steel", "a/b", "t", "1m", 60_000_000, 10, 1, 0.5, 2.5, 1.5, 2.0, 0.3, 1.4, "degC", "H1")
    assert decode_aggregates(encode_aggregates([agg, agg])) == [agg, agg]
    ev = ContextEvent(
        ContextKind.LAB_RESULT, "steel", "a/b", 5, "H1", "heat", "EN10025-2:S355J2", results={"C": (0.18, "percent")}
    )
    assert decode_context(encode_context(ev)) == ev
    meta = TagMeta("steel", "t", "a/b", "degC", lo=0.0, hi=1600.0, grade=Grade.CORE, spec_property="x")
    assert decode_tag_meta(encode_tag_meta(meta)) == meta


def test_kinds_are_not_interchangeable() -> None:
    with pytest.raises(CodecError, match="where 1 \\(READINGS\\)"):
        decode_readings(encode_aggregates([]))
    assert codec.peek_kind(encode_tag_meta(TagMeta("p", "t", "e", "m"))) is codec.Kind.TAG_META


def test_context_fields_of_the_wrong_type_are_a_codec_error() -> None:
    """Found by the fuzzer: a context message whose ``results`` was not a map raised
    AttributeError out of the decoder; wrong-typed names passed through to later stages."""
    from plantstream.contract import ContextEvent, ContextKind
    from plantstream.producers.codec import CodecError, context_to_dict, decode_context

    good = context_to_dict(
        ContextEvent(ContextKind.LAB_RESULT, "steel", "acme/site/lab", 1, "H1", results={"C": (0.1, "%")})
    )
    assert decode_context(codec._pack(codec.Kind.CONTEXT, good)).results == {"C": (0.1, "%")}
    changes: list[dict[str, object]] = [
        {"results": 5},
        {"results": ["C"]},
        {"plant": 7},
        {"parents": "H0"},
        {"parents": [1]},
        {"attrs": []},
    ]
    for change in changes:
        with pytest.raises(CodecError, match="bad context event"):
            decode_context(codec._pack(codec.Kind.CONTEXT, {**good, **change}))


def test_an_unknown_origin_id_decodes_and_a_bad_one_is_refused() -> None:
    r = Reading("p", "a", "t", 1, 1.0, "", Quality.GOOD, Origin.MQTT, "s", 1)
    body = msgpack.unpackb(codec.encode_readings([r])[4:])
    for origin, ok in ((4, True), (200, True), (255, True), (0, False), (256, False), ("mqtt", False)):
        body[2] = origin
        data = codec.encode_readings([r])[:4] + msgpack.packb(body)
        if ok:
            assert int(codec.decode_readings(data).origin) == origin
        else:
            with pytest.raises(codec.CodecError, match="origin"):
                codec.decode_readings(data)


def test_tag_meta_std_property_round_trips_and_is_optional_on_the_wire() -> None:
    """Issue 18: ``std_property`` is an optional map key: present only when set, absent decodes to
    "", and a reader that knows only the older keys still reads the message."""
    with_prop = TagMeta("fiber", "poy1.melt_temperature", "a/b", "degC", std_property="ps:temperature.melt")
    without = TagMeta("fiber", "poy1.melt_temperature", "a/b", "degC")
    assert decode_tag_meta(encode_tag_meta(with_prop)) == with_prop
    assert decode_tag_meta(encode_tag_meta(without)) == without
    assert decode_tag_meta(encode_tag_meta(without)).std_property == ""
    body_with = msgpack.unpackb(encode_tag_meta(with_prop)[4:])
    body_without = msgpack.unpackb(encode_tag_meta(without)[4:])
    assert body_with["std_property"] == "ps:temperature.melt" and "std_property" not in body_without
    # An older consumer takes the keys it knows and ignores the rest: the message still reads.
    old_keys = [k for k in body_with if k != "std_property"]
    assert TagMeta(**{**{k: body_with[k] for k in old_keys}, "grade": Grade(body_with["grade"])}) == without
    # A newer producer's unknown key does not break this reader either.
    future = codec.MAGIC + bytes((1, 5)) + msgpack.packb({**body_with, "later_key": [1, 2]})
    assert decode_tag_meta(future) == with_prop


def test_tag_meta_std_property_of_the_wrong_type_is_a_codec_error() -> None:
    body = msgpack.unpackb(encode_tag_meta(TagMeta("p", "t", "e", "degC"))[4:])
    with pytest.raises(CodecError, match="std_property must be a string"):
        decode_tag_meta(codec.MAGIC + bytes((1, 5)) + msgpack.packb({**body, "std_property": 7}))
