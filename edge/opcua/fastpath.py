"""Publish responses decoded straight into (client handle, value, status, source us, server us) rows.

asyncua turns every value change into a MonitoredItemNotification, a DataValue, a Variant, an
enum and two datetimes before the connector reads five numbers out of them; that object churn was
~55 % of the agent's CPU on the bench's OPC-UA stage. Here the PublishResponse is decoded by
asyncua's own deserializers except each DataChangeNotification body of a subscription registered
with :func:`attach`, which is read with ``struct`` into :class:`FastDataChange` rows. asyncua keeps
the session, secure channel, publish loop, acknowledgements and keep-alives; only the bytes ->
objects step of data changes is replaced.

Equality with asyncua is the contract (property-tested in tests/test_opcua_fastpath.py): a row
holds exactly what ``source._convert`` reads from asyncua's DataValue. Anything this decoder does
not know (arrays, matrices, types other than Null, Boolean..Double and String, a DataValue with
both SourcePicoseconds and ServerTimestamp, diagnostic infos, odd lengths) makes it hand the whole
notification body to asyncua's decoder, so correctness never depends on the fast path.

asyncua reads a DataValue's optional fields in its dataclass order (SourceTimestamp,
ServerTimestamp, SourcePicoseconds, ServerPicoseconds) where OPC UA Part 6 5.2.2.17 puts
SourcePicoseconds before ServerTimestamp; the two orders differ only when SourcePicoseconds and
ServerTimestamp are both present, which is why that case is left to asyncua.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.client.ua_session import UaSession
from asyncua.common.subscription import Subscription
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import Primitives, extensionobject_from_binary, nodeid_from_binary, struct_from_binary
from asyncua.ua.uaerrors import UaStructParsingError

log = logging.getLogger(__name__)

# (client_handle, value, status_code, source_ts_us, server_ts_us); value None = no value sent.
Row = tuple[int, Any, int, int | None, int | None]

_DATA_CHANGE = 811  # DataChangeNotification_Encoding_DefaultBinary, ns=0
_TICKS_1970 = 116_444_736_000_000_000  # 100 ns ticks from 1601-01-01 to 1970-01-01
_MAX_TICKS = 2_650_467_743_990_000_000  # asyncua: later FILETIMEs become 9999-12-31 23:59:59
_MAX_US = 253_402_300_799_000_000  # ... which is this many us after 1970

_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_Q = struct.Struct("<q")
_HANDLE_MASK = struct.Struct("<IB")
# Scalar variant types read with one struct: VariantType id -> (format, size).
_FIXED: dict[int, struct.Struct] = {
    1: struct.Struct("<?"),
    2: struct.Struct("<b"),
    3: struct.Struct("<B"),
    4: struct.Struct("<h"),
    5: struct.Struct("<H"),
    6: struct.Struct("<i"),
    7: struct.Struct("<I"),
    8: struct.Struct("<q"),
    9: struct.Struct("<Q"),
    10: struct.Struct("<f"),
    11: struct.Struct("<d"),
}
_STRING = 12
_KNOWN_MASK = 0x3F
_SRC_PICO_AND_SRV_TS = 0x18


class Unsupported(Exception):
    """Something the fast decoder leaves to asyncua (never an error of the data itself)."""


def ticks_to_us(ticks: int) -> int | None:
    """What ``source.to_us(asyncua's win_epoch_to_datetime(ticks))`` gives, without the datetime."""
    if ticks >= _MAX_TICKS:
        return _MAX_US
    if ticks < 10:
        return None  # 1601-01-01 exactly (asyncua clamps negatives there): "no timestamp"
    return ticks // 10 - _TICKS_1970 // 10


def decode_data_change(buf: bytes | memoryview, pos: int, end: int) -> list[Row]:
    """Rows of the DataChangeNotification body ``buf[pos:end]``; :class:`Unsupported` for anything
    that is not plain scalar data changes (then asyncua's decoder takes the body)."""
    unpack_i32 = _I32.unpack_from
    unpack_hm = _HANDLE_MASK.unpack_from
    unpack_u32 = _U32.unpack_from
    unpack_q = _Q.unpack_from
    fixed = _FIXED
    (count,) = unpack_i32(buf, pos)
    pos += 4
    if count < -1 or count * 6 > end - pos:
        raise Unsupported(f"monitored item count {count}")
    rows: list[Row] = []
    append = rows.append
    for _ in range(count):  # -1 (null array): asyncua decodes no items either
        handle, mask = unpack_hm(buf, pos)
        pos += 5
        if mask & ~_KNOWN_MASK or mask & _SRC_PICO_AND_SRV_TS == _SRC_PICO_AND_SRV_TS:
            raise Unsupported(f"DataValue mask 0x{mask:02x}")
        value: Any = None
        if mask & 1:
            vt = buf[pos]
            pos += 1
            st = fixed.get(vt)
            if st is not None:
                (value,) = st.unpack_from(buf, pos)
                pos += st.size
            elif vt == _STRING:
                (n,) = unpack_i32(buf, pos)
                pos += 4
                if n >= 0:
                    if pos + n > end:
                        raise Unsupported("string beyond the body")
                    value = str(buf[pos : pos + n], "utf-8", "surrogateescape")
                    pos += n
                elif n != -1:
                    raise Unsupported(f"string length {n}")
            elif vt != 0:  # 0: Null variant, no value
                raise Unsupported(f"variant encoding 0x{vt:02x}")
        code = 0
        if mask & 2:
            (code,) = unpack_u32(buf, pos)
            pos += 4
        src = srv = None
        if mask & 4:
            (t,) = unpack_q(buf, pos)
            pos += 8
            src = _MAX_US if t >= _MAX_TICKS else None if t < 10 else t // 10 - 11_644_473_600_000_000
        if mask & 8:
            (t,) = unpack_q(buf, pos)
            pos += 8
            srv = _MAX_US if t >= _MAX_TICKS else None if t < 10 else t // 10 - 11_644_473_600_000_000
        if mask & 0x10:
            pos += 2
        if mask & 0x20:
            pos += 2
        append((handle, value, code, src, srv))
    # (pos only grows, so this also catches an item read past the body's end)
    if pos + 4 > end:
        raise Unsupported("body ends before DiagnosticInfos")
    (ndiag,) = unpack_i32(buf, pos)
    if ndiag not in (0, -1):
        raise Unsupported("diagnostic infos")
    return rows


@dataclass(slots=True)
class FastDataChange:
    """One DataChangeNotification as rows, with its body kept for the rare value that needs
    asyncua's DataValue (a dead letter's payload is its repr, as on asyncua's path)."""

    rows: list[Row]
    body: bytes

    def datavalue(self, k: int) -> ua.DataValue:
        dc: ua.DataChangeNotification = struct_from_binary(ua.DataChangeNotification, Buffer(self.body))
        dv: ua.DataValue = dc.MonitoredItems[k].Value
        return dv


# A sink gets, in publish order, every FastDataChange and every DataChangeNotification asyncua
# decoded (the fallback) of its subscription.
Sink = Callable[[FastDataChange | ua.DataChangeNotification], None]


def _count(data: Buffer) -> int:
    (n,) = _I32.unpack(data.read(4))
    if n < -1:
        raise Unsupported(f"array length {n}")  # whatever asyncua makes of it, it decides
    return int(n)


def _read_extension_objects(data: Buffer, fast: bool, stats: dict[str, int]) -> list[Any] | None:
    count = _count(data)
    if count == -1:
        return None  # as asyncua: a null array, not an empty one
    out: list[Any] = []
    for _ in range(count):
        start = data.cur_pos
        if fast and len(data) >= 9:
            raw = data._data  # the message bytes (asyncua's Buffer keeps them whole)
            if raw[start] == 1 and raw[start + 1] == 0 and raw[start + 4] == 1:  # FourByte ns=0 id, body
                ident = raw[start + 2] | raw[start + 3] << 8
                (length,) = _I32.unpack_from(raw, start + 5)
                if ident == _DATA_CHANGE and 0 <= length <= len(data) - 9:
                    b0 = start + 9
                    try:
                        rows = decode_data_change(raw, b0, b0 + length)
                    except (Unsupported, struct.error, IndexError) as exc:
                        stats["fallback"] = stats.get("fallback", 0) + 1
                        log.debug("opcua fast path: left to asyncua", extra={"kv": {"why": str(exc)}})
                    else:
                        data.skip(9 + length)
                        out.append(FastDataChange(rows, bytes(raw[b0 : b0 + length])))
                        stats["fast"] = stats.get("fast", 0) + 1
                        continue
        out.append(extensionobject_from_binary(data))
    return out


def decode_publish_response(data: Buffer, fast_ids: Collection[int], stats: dict[str, int]) -> Any:
    """A ua.PublishResponse like ``struct_from_binary(ua.PublishResponse, data)``, except that
    the DataChangeNotifications of subscriptions in ``fast_ids`` are FastDataChange objects."""
    resp = ua.PublishResponse()
    resp.TypeId = nodeid_from_binary(data)
    resp.ResponseHeader = struct_from_binary(ua.ResponseHeader, data)
    res = ua.PublishResult()
    (res.SubscriptionId,) = _U32.unpack(data.read(4))
    n = _count(data)
    res.AvailableSequenceNumbers = None if n < 0 else list(struct.unpack(f"<{n}I", data.read(4 * n)))  # type: ignore[assignment]
    res.MoreNotifications = data.read(1) != b"\x00"
    msg = ua.NotificationMessage()
    (msg.SequenceNumber,) = _U32.unpack(data.read(4))
    msg.PublishTime = Primitives.DateTime.unpack(data)
    msg.NotificationData = _read_extension_objects(data, res.SubscriptionId in fast_ids, stats)  # type: ignore[assignment]
    res.NotificationMessage = msg
    n = _count(data)
    codes = None if n < 0 else [ua.StatusCode(c) for c in struct.unpack(f"<{n}I", data.read(4 * n))]
    res.Results = codes  # type: ignore[assignment]
    n = _count(data)
    diags = None if n < 0 else [struct_from_binary(ua.DiagnosticInfo, data) for _ in range(n)]
    res.DiagnosticInfos = diags  # type: ignore[assignment]
    resp.Parameters = res
    return resp


class FastPublish:
    """Installs the decoder on one asyncua session: ``session.publish`` is replaced by one that
    sends the same PublishRequest through asyncua and decodes the response here; subscriptions
    registered with :meth:`attach` get their data changes through a sink, in publish order, and
    everything else (status changes, events, other subscriptions) goes on to asyncua's callback."""

    def __init__(self, session: UaSession) -> None:
        self.session = session
        self.sinks: dict[int, Sink] = {}
        self.stats: dict[str, int] = {}
        session.publish = self.publish  # type: ignore[method-assign]  # the one hook; the loop calls self.publish

    async def publish(self, acks: list[ua.SubscriptionAcknowledgement]) -> Any:
        # Same request and error contract as UaSession.publish.
        request = ua.PublishRequest()
        request.Parameters.SubscriptionAcknowledgements = acks if acks else []
        data = await self.session._send_request(request, timeout=0)
        start = data.cur_pos
        try:
            return decode_publish_response(data, self.sinks.keys(), self.stats)
        except Exception:
            data.rewind(start)
        try:
            return struct_from_binary(ua.PublishResponse, data)
        except Exception as ex:
            log.exception("Error parsing notification from server")
            raise UaStructParsingError from ex

    def attach(self, sub: Subscription, sink: Sink) -> None:
        """From now on the data changes of ``sub`` go to ``sink``; the rest to asyncua as before."""
        sid = sub.subscription_id
        assert sid is not None
        callbacks = self.session._subscription_callbacks
        original = callbacks[sid]

        def callback(result: ua.PublishResult) -> Any:
            rest: list[Any] = []
            for n in result.NotificationMessage.NotificationData:
                if type(n) is FastDataChange or isinstance(n, ua.DataChangeNotification):
                    sink(n)
                else:
                    rest.append(n)
            # asyncua's callback still sees every response (last publish time, sequence number,
            # status changes); the publish loop acks from the result it holds, not this copy.
            msg = result.NotificationMessage
            return original(
                ua.PublishResult(
                    SubscriptionId=result.SubscriptionId,
                    AvailableSequenceNumbers=result.AvailableSequenceNumbers,
                    MoreNotifications=result.MoreNotifications,
                    NotificationMessage=ua.NotificationMessage(msg.SequenceNumber, msg.PublishTime, rest),
                    Results=result.Results,
                    DiagnosticInfos=result.DiagnosticInfos,
                )
            )

        callbacks[sid] = callback
        self.sinks[sid] = sink
