"""The fast publish decoder equals asyncua's: notifications generated with every scalar type the
connector carries (and some it does not), encoded by asyncua's own encoder, decoded by both paths;
the rows, the samples the source makes of them, its dead letters and its failing nodes are equal.
A second property mutates the encoded bytes: the fast decoder either refuses them (asyncua then
decides) or reads exactly what asyncua reads."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from plantstream.edge.config import OpcuaSource
from plantstream.edge.opcua import source as source_mod
from plantstream.edge.opcua.fastpath import (
    FastDataChange,
    Row,
    Unsupported,
    decode_data_change,
    decode_publish_response,
    ticks_to_us,
)
from plantstream.edge.opcua.source import OpcuaSourceRunner, to_us
from plantstream.edge.source import Delivery, Inbox

VT = ua.VariantType
NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
NOW_US = (NOW - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
HANDLES = [1001, 1002, 1003, 1004]
SUB_ID = 7

_INT_RANGES = {
    VT.SByte: (-(2**7), 2**7 - 1),
    VT.Byte: (0, 2**8 - 1),
    VT.Int16: (-(2**15), 2**15 - 1),
    VT.UInt16: (0, 2**16 - 1),
    VT.Int32: (-(2**31), 2**31 - 1),
    VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1),
    VT.UInt64: (0, 2**64 - 1),
}
# Text asyncua can encode: no surrogates except the surrogateescape ones it decodes bytes into.
_text = st.text(
    st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)])),  # type: ignore[arg-type]  # asyncua/hypothesis stubs: ints, datetimes, category names
    max_size=40,
)
_times = st.one_of(
    st.sampled_from(
        [
            datetime(1601, 1, 1, tzinfo=UTC),  # OPC UA's "no time"
            datetime(1601, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            datetime(1970, 1, 1, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # asyncua's max FILETIME
            NOW,
        ]
    ),
    st.datetimes(datetime(1601, 1, 1), datetime(9999, 12, 31, 23, 59), timezones=st.just(UTC)),
    # mostly inside the agent's timestamp window, so good samples dominate
    st.integers(-7 * 86400 * 10**6, 600 * 10**6).map(lambda us: NOW + timedelta(microseconds=us)),
)
_codes = st.one_of(
    st.sampled_from([0, 0x00A80000, 0x40000000, 0x408F0000, 0x80000000, 0x80310000, 0x80340000, 0x803E0000]),
    st.integers(0, 2**32 - 1),
)


def _variant() -> st.SearchStrategy[ua.Variant | None]:
    ints = [st.integers(lo, hi).map(lambda v, t=t: ua.Variant(v, t)) for t, (lo, hi) in _INT_RANGES.items()]  # type: ignore[misc]  # asyncua/hypothesis stubs: ints, datetimes, category names
    supported = [
        st.booleans().map(lambda v: ua.Variant(v, VT.Boolean)),
        *ints,
        st.floats(width=32).map(lambda v: ua.Variant(v, VT.Float)),
        st.floats().map(lambda v: ua.Variant(v, VT.Double)),
        st.one_of(st.none(), _text).map(lambda v: ua.Variant(v, VT.String)),
        st.just(ua.Variant(None, VT.Null)),
        st.just(None),  # no Value in the DataValue at all
    ]
    # Types the source does not carry (the fast path leaves them to asyncua; the source fails the node).
    others = [
        _times.map(lambda v: ua.Variant(v, VT.DateTime)),
        st.binary(max_size=8).map(lambda v: ua.Variant(v, VT.ByteString)),
        st.lists(st.integers(-5, 5), max_size=3).map(lambda v: ua.Variant(v, VT.Int32, is_array=True)),
        st.lists(st.floats(-1, 1), min_size=4, max_size=4).map(lambda v: ua.Variant(v, VT.Double, [2, 2])),  # type: ignore[list-item]  # asyncua/hypothesis stubs: ints, datetimes, category names
        st.uuids().map(lambda v: ua.Variant(v, VT.Guid)),
        st.just(ua.Variant(ua.LocalizedText("x"), VT.LocalizedText)),
    ]
    return st.one_of(st.one_of(*supported), st.one_of(*others))


@st.composite
def _datavalue(draw: st.DrawFn) -> ua.DataValue:
    dv = ua.DataValue(
        draw(_variant()),
        draw(st.one_of(st.none(), _codes.map(ua.StatusCode))),  # type: ignore[arg-type]  # asyncua/hypothesis stubs: ints, datetimes, category names
        SourceTimestamp=draw(st.one_of(st.none(), _times)),  # type: ignore[arg-type]  # asyncua/hypothesis stubs: ints, datetimes, category names
        ServerTimestamp=draw(st.one_of(st.none(), _times)),  # type: ignore[arg-type]  # asyncua/hypothesis stubs: ints, datetimes, category names
        SourcePicoseconds=draw(st.one_of(st.none(), st.integers(0, 65535))),  # type: ignore[arg-type]  # asyncua/hypothesis stubs: ints, datetimes, category names
        ServerPicoseconds=draw(st.one_of(st.none(), st.integers(0, 65535))),  # type: ignore[arg-type]  # asyncua/hypothesis stubs: ints, datetimes, category names
    )
    if dv.Value is not None and dv.Value.VariantType == VT.Null and draw(st.booleans()):
        object.__setattr__(dv, "Value", None)  # Value bit unset in the encoding mask
    return dv


_items = st.lists(
    st.builds(
        ua.MonitoredItemNotification,
        ClientHandle=st.one_of(st.sampled_from(HANDLES), st.integers(0, 2**32 - 1)),
        Value=_datavalue(),
    ),
    max_size=12,
)


def _row(mi: ua.MonitoredItemNotification) -> Row:
    """What source._convert reads out of asyncua's decoding."""
    dv = mi.Value
    raw = dv.Value.Value if dv.Value is not None else None
    code = dv.StatusCode.value if dv.StatusCode is not None else 0
    return (mi.ClientHandle, raw, code, to_us(dv.SourceTimestamp), to_us(dv.ServerTimestamp))


def _same(a: Any, b: Any) -> bool:
    """Equal including type and float bits (NaN == NaN of the same bits; True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _runner(tmp: Path) -> OpcuaSourceRunner:
    cfg = OpcuaSource.model_validate(
        {
            "type": "opcua",
            "id": "plc",
            "endpoint": "opc.tcp://127.0.0.1:4840/x",
            "tags": [
                {"node_id": f"ns=2;s=t{h}", "tag": f"t{h}", "equipment": "acme/site/line", "unit": "degC"}
                for h in HANDLES
            ],
        }
    )
    return OpcuaSourceRunner(cfg, Inbox(), tmp)


def _deliveries(r: OpcuaSourceRunner) -> list[Delivery]:
    return r.inbox.drain()  # type: ignore[no-any-return]  # asyncua/hypothesis stubs: ints, datetimes, category names


def _check_samples(notification: ua.DataChangeNotification, fast: FastDataChange, tmp: Path) -> None:
    """Both decodings through the source: the same deliveries, dead letters and failing nodes."""
    by_path = []
    for n in (notification, fast):
        r = _runner(tmp)
        by_handle = {h: item for h, item in zip(HANDLES, r._items, strict=True)}
        r._data_change(n, by_handle)
        out = _deliveries(r)
        by_path.append(
            (
                [tuple(d.samples) if d.samples else None for d in out],
                [(d.deadletter.payload, d.deadletter.reason) if d.deadletter else None for d in out],
                dict(r.status.failing),
                r.unsupported,
            )
        )
    (s_a, dl_a, f_a, u_a), (s_b, dl_b, f_b, u_b) = by_path
    assert _same(s_a, s_b), (s_a, s_b)
    assert dl_a == dl_b and f_a == f_b and u_a == u_b


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both paths read the receiving clock; one fixed value makes their samples comparable.
    monkeypatch.setattr(source_mod, "now_us", lambda: NOW_US)


def _publish(items: list[ua.MonitoredItemNotification], status_change: bool, seq: int) -> bytes:
    data: list[Any] = [ua.DataChangeNotification(MonitoredItems=items)]
    if status_change:
        data.append(ua.StatusChangeNotification(Status=ua.StatusCode(0x80290000)))  # type: ignore[arg-type]  # asyncua/hypothesis stubs: ints, datetimes, category names
    msg = ua.NotificationMessage(SequenceNumber=seq, PublishTime=NOW, NotificationData=data)
    res = ua.PublishResult(SubscriptionId=SUB_ID, AvailableSequenceNumbers=[seq], NotificationMessage=msg)
    return struct_to_binary(ua.PublishResponse(Parameters=res))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=_items, status_change=st.booleans(), seq=st.integers(0, 2**32 - 1))
@example(items=[], status_change=False, seq=1)
def test_fast_decoding_equals_asyncua(
    items: list[ua.MonitoredItemNotification], status_change: bool, seq: int, tmp_path: Path
) -> None:
    wire = _publish(items, status_change, seq)
    want = struct_from_binary(ua.PublishResponse, Buffer(wire))
    stats: dict[str, int] = {}
    got = decode_publish_response(Buffer(wire), {SUB_ID}, stats)
    assert got.ResponseHeader == want.ResponseHeader and got.TypeId == want.TypeId
    gp, wp = got.Parameters, want.Parameters
    assert (gp.SubscriptionId, gp.AvailableSequenceNumbers, gp.MoreNotifications, gp.Results, gp.DiagnosticInfos) == (
        wp.SubscriptionId,
        wp.AvailableSequenceNumbers,
        wp.MoreNotifications,
        wp.Results,
        wp.DiagnosticInfos,
    )
    gm, wm = gp.NotificationMessage, wp.NotificationMessage
    assert (gm.SequenceNumber, gm.PublishTime) == (wm.SequenceNumber, wm.PublishTime)
    assert len(gm.NotificationData) == len(wm.NotificationData)
    dc_got, dc_want = gm.NotificationData[0], wm.NotificationData[0]
    assert gm.NotificationData[1:] == wm.NotificationData[1:]  # the status change, decoded by asyncua
    if isinstance(dc_got, FastDataChange):
        assert stats == {"fast": 1}
        assert _same(dc_got.rows, [_row(mi) for mi in dc_want.MonitoredItems])
        for k, mi in enumerate(dc_want.MonitoredItems):
            assert repr(dc_got.datavalue(k)) == repr(mi.Value)  # the dead-letter payload (NaN != NaN, so by repr)
        _check_samples(dc_want, dc_got, tmp_path)
    else:
        # Left to asyncua: only for what the fast decoder does not claim to read.
        assert stats == {"fallback": 1} and repr(dc_got) == repr(dc_want)  # NaN != NaN: by repr
        assert any(
            (mi.Value.Value is not None and (mi.Value.Value.VariantType.value > 12 or mi.Value.Value.is_array))
            or (mi.Value.SourcePicoseconds is not None and mi.Value.ServerTimestamp is not None)
            for mi in dc_want.MonitoredItems
        )


def test_other_subscriptions_and_keepalives_are_asyncuas(tmp_path: Path) -> None:
    item = ua.MonitoredItemNotification(1001, ua.DataValue(ua.Variant(1.5, VT.Double)))
    wire = _publish([item], False, 3)
    other = decode_publish_response(Buffer(wire), {SUB_ID + 1}, {})
    assert other == struct_from_binary(ua.PublishResponse, Buffer(wire))
    msg = ua.NotificationMessage(SequenceNumber=4, PublishTime=NOW, NotificationData=[])
    keepalive = struct_to_binary(
        ua.PublishResponse(Parameters=ua.PublishResult(SubscriptionId=SUB_ID, NotificationMessage=msg))
    )
    assert decode_publish_response(Buffer(keepalive), {SUB_ID}, {}) == struct_from_binary(
        ua.PublishResponse, Buffer(keepalive)
    )


def _body(items: list[ua.MonitoredItemNotification]) -> bytes:
    return struct_to_binary(ua.DataChangeNotification(MonitoredItems=items))


@settings(max_examples=200, deadline=None)
@given(
    items=_items,
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 8),
)
def test_mutated_bytes_refused_or_read_as_asyncua(
    items: list[ua.MonitoredItemNotification], edits: list[tuple[int, int]], cut: int
) -> None:
    body = bytearray(_body(items))
    for pos, byte in edits:
        if body:
            body[pos % len(body)] = byte
    if cut:
        del body[len(body) - min(cut, len(body)) :]
    data = bytes(body)
    try:
        rows = decode_data_change(data, 0, len(data))
    except (Unsupported, struct.error, IndexError):
        return  # asyncua decides (the fallback)
    want = struct_from_binary(ua.DataChangeNotification, Buffer(data))
    assert _same(rows, [_row(mi) for mi in want.MonitoredItems])


@given(st.integers(-(2**63), 2**63 - 1))
@example(0)
@example(9)
@example(10)
@example(2_650_467_743_990_000_000)
@example(2_650_467_743_989_999_999)
def test_ticks_as_asyncua_and_to_us(ticks: int) -> None:
    assert ticks_to_us(ticks) == to_us(ua.win_epoch_to_datetime(ticks))


def test_nan_and_bad_without_value_stay_flagged(tmp_path: Path) -> None:
    # Guards the comparison helper itself: a NaN sample must compare equal to itself only by bits.
    assert _same(math.nan, math.nan) and not _same(True, 1) and not _same(1.0, 1)
