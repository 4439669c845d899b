"""OPC-UA connector (asyncua Client): subscriptions or polling, reconnect that rebuilds everything.

Contracts:

* Every connection attempt builds a NEW session and NEW subscription + monitored items; nothing
  is assumed to survive a server restart (the most common peer bug is a silent subscription that
  never comes back).
* Monitored items use a DataChangeFilter with trigger StatusValueTimestamp, so a repeated value
  with a new source timestamp is still delivered; items are created in batches of
  ``monitored_item_batch``.
* Status code -> Quality.from_opcua_status with the raw code kept; a bad sample is delivered
  flagged (its value NaN when the server sent none), never replaced by the last good value.
* Source timestamp preferred, server timestamp as fallback; both recorded when they differ.
* A node that cannot be monitored/read or carries an unsupported type is logged once, counted,
  listed in ``status.failing``, and never stops the others.
* Notifications are consumed from asyncua's (unbounded) iterator queue and handed to the agent
  inbox without awaiting anything slow.
* A lost session loses the changes until the next one is up. Where the server keeps history of a
  node (AccessLevel HistoryRead, read at each subscription), the next session reads the gap back
  with HistoryRead (raw values after the last one delivered) and delivers them with their own
  timestamps; every other tag, and a node whose history read fails, gets a gap marker (bad, NaN,
  BadNoCommunication, a reason) at the moment of the loss. TransferSubscriptions is not used: a
  new session is built after every loss (see above), and the servers we meet drop the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from plantstream.config import Settings
from plantstream.contract import Origin, Quality, Value
from plantstream.edge.batcher import Sample
from plantstream.edge.config import OpcuaSource, OpcuaTag
from plantstream.edge.opcua.fastpath import FastDataChange, FastPublish
from plantstream.edge.opcua.secure import secure
from plantstream.edge.registry import SourceContext
from plantstream.edge.source import DeadLetter, Delivery, Inbox, Reconnect, Source, now_us
from plantstream.edge.vet import DEFAULT_LIMITS, Limits, Uncarriable, vet

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_OPCUA_NULL = datetime(1601, 1, 1, tzinfo=UTC)
_BAD_NO_COMMUNICATION = 0x80310000  # the StatusCode a gap marker carries
# The most raw values one history read of a gap takes per tag (memory bound); a longer gap keeps
# a gap marker after the last value read.
HISTORY_MAX_VALUES = 100_000
_GAP_REASON = "gap: OPC-UA session lost; values until the reconnect are unknown"
# Read/monitor results that mean "this node is misconfigured", not "this sample is bad".
_NODE_ERRORS = {
    StatusCodes.BadNodeIdUnknown,
    StatusCodes.BadNodeIdInvalid,
    StatusCodes.BadAttributeIdInvalid,
    StatusCodes.BadNotReadable,
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadMonitoredItemFilterUnsupported,
    StatusCodes.BadFilterNotAllowed,
    StatusCodes.BadDeadbandFilterInvalid,
}


def to_us(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if dt <= _OPCUA_NULL:
        return None  # DateTime 0 (1601-01-01): "no timestamp"
    # Before 1970 stays negative: the decoder dead-letters it rather than take another clock.
    return (dt - _EPOCH) // _US


def status_name(code: int) -> str:
    try:
        return str(ua.StatusCode(ua.UInt32(code)).name)
    except Exception:
        return f"0x{code:08X}"


@dataclass(slots=True)
class _Item:
    cfg: OpcuaTag
    nodeid: ua.NodeId


class OpcuaSourceRunner(Source):  # type: ignore[misc]  # Source is Any to mypy: editable-install namespace
    origin = Origin.OPCUA

    def __init__(
        self, cfg: OpcuaSource, inbox: Inbox, state_dir: Path | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        super().__init__(cfg.id, "opcua", cfg.endpoint, inbox)
        self.cfg = cfg
        self.limits = limits
        self.state_dir = state_dir if state_dir is not None else Settings.from_env().state_dir
        self._items: list[_Item] = []
        for t in cfg.tags:
            try:
                self._items.append(_Item(t, ua.NodeId.from_string(t.node_id)))
            except Exception as exc:
                self.mark_failing(t.tag, f"invalid node id {t.node_id!r}: {exc}")
                log.error(
                    "opcua: invalid node id; tag skipped",
                    extra={"kv": {"source": self.id, "tag": t.tag, "node_id": t.node_id}},
                )
        self._lost = asyncio.Event()
        self.unsupported = 0
        # Gap recovery by HistoryRead: the newest source time delivered per tag, the tags whose
        # node keeps history, and the gaps to read back in the next session (tag -> (after, loss)).
        self._last_ts: dict[str, int] = {}
        self._historized: set[str] = set()
        self._gaps: dict[str, tuple[int, int]] = {}

    # --- connection loop -------------------------------------------------------------------------

    async def run(self) -> None:
        await Reconnect(
            self,
            "opcua",
            self.cfg.reconnect,
            open=self._client,
            connect=self._connect,
            session=self._session,
            close=self._close,
            on_lost=self._mark_gap,
        ).run()

    def _client(self) -> Client:
        self._lost = asyncio.Event()
        client = Client(
            self.cfg.endpoint, timeout=self.cfg.request_timeout_s, watchdog_intervall=self.cfg.watchdog_interval_s
        )

        async def lost(exc: Exception, ev: asyncio.Event = self._lost) -> None:
            ev.set()

        client.connection_lost_callback = lost
        return client

    async def _connect(self, client: Client) -> None:
        await asyncio.wait_for(self._secure(client), self.cfg.request_timeout_s * 2)
        await asyncio.wait_for(client.connect(), self.cfg.request_timeout_s * 2)

    async def _session(self, client: Client) -> None:
        if self.cfg.mode == "subscription":
            await self._run_subscription(client)
        else:
            await self._run_poll(client)

    async def _close(self, client: Client) -> None:
        # A failed or interrupted disconnect of a dead session must not end the loop.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(client.disconnect(), 2)

    def _mark_gap(self) -> None:
        """A lost session loses the values that changed until the next one is up (a new session
        gets only current values). Say so in the data: one bad sample per tag at the moment of the
        loss, so datasets and charts show a hole instead of carrying or interpolating across it;
        tags whose node keeps history wait for the next session to read the gap back instead."""
        ts = now_us()
        live = [item for item in self._items if item.cfg.tag not in self.status.failing]
        for item in live:
            if item.cfg.tag in self._historized and item.cfg.tag not in self._gaps:
                # A gap not yet read back (a second loss before it was) keeps its first start.
                self._gaps[item.cfg.tag] = (self._last_ts.get(item.cfg.tag, ts), ts)
        self._gap_markers([item for item in live if item.cfg.tag not in self._historized], ts, _GAP_REASON)

    def _gap_markers(self, items: list[_Item], ts: int, reason: str) -> None:
        samples: list[Sample] = [
            (
                item.cfg.equipment,
                item.cfg.tag,
                ts,
                math.nan,
                item.cfg.unit if item.cfg.unit is not None else self.cfg.defaults.unit,
                int(Quality.BAD),
                _BAD_NO_COMMUNICATION,
                None,
                reason,
            )
            for item in items
        ]
        if samples:
            self.status.events["gap_markers"] = self.status.events.get("gap_markers", 0) + len(samples)
            self.inbox.put_nowait_in_loop(Delivery(self.id, Origin.OPCUA, samples))

    async def _read_history_flags(self, client: Client) -> None:
        """Which nodes the server keeps history of (AccessLevel's HistoryRead bit), read per
        session: a server may start or stop historizing a node between sessions."""
        batch = self.cfg.monitored_item_batch
        historized: set[str] = set()
        for i in range(0, len(self._items), batch):
            chunk = self._items[i : i + batch]
            params = ua.ReadParameters()
            for item in chunk:
                rv = ua.ReadValueId()
                rv.NodeId = item.nodeid
                rv.AttributeId = AttributeIds.AccessLevel
                params.NodesToRead.append(rv)
            try:
                results = await client.uaclient.read(params)
            except Exception as exc:  # a server without AccessLevel reads: nothing historized
                log.info("opcua: access levels unreadable; no history recovery", extra={"kv": {"error": str(exc)}})
                return
            for item, dv in zip(chunk, results, strict=True):
                level = dv.Value.Value if dv.Value is not None else None
                if isinstance(level, int) and level & ua.AccessLevel.HistoryRead.mask:
                    historized.add(item.cfg.tag)
        self._historized = historized

    async def _recover_gaps(self, client: Client) -> None:
        """Read each pending gap back from the server's history and deliver it; a tag whose
        history cannot be read gets its gap marker (at the moment of the loss) instead."""
        if not self._gaps:
            return
        by_tag = {item.cfg.tag: item for item in self._items}
        recovered = 0
        for tag, (after_us, loss_us) in list(self._gaps.items()):
            item = by_tag.get(tag)
            if item is None:
                del self._gaps[tag]
                continue
            try:
                # No end time: everything after the last value delivered (a server clock ahead of
                # ours would hide values from an end of "now"); the count bounds it.
                values = await client.get_node(item.nodeid).read_raw_history(
                    _EPOCH + timedelta(microseconds=after_us + 1), None, HISTORY_MAX_VALUES, return_bounds=False
                )
            except Exception as exc:
                if self._lost.is_set():
                    return  # lost again: the gap stays pending for the next session
                del self._gaps[tag]
                self._gap_markers([item], loss_us, f"{_GAP_REASON} (history read failed: {exc})")
                continue
            del self._gaps[tag]
            samples = [s for dv in values if (s := self._sample(item, dv)) is not None]
            for s in samples:
                self._last_ts[tag] = max(self._last_ts.get(tag, s[2]), s[2])
            if samples:
                recovered += len(samples)
                self.inbox.put_nowait_in_loop(Delivery(self.id, Origin.OPCUA, samples))
            if len(values) >= HISTORY_MAX_VALUES:
                last = max((s[2] for s in samples), default=loss_us)
                self._gap_markers([item], last + 1, f"{_GAP_REASON} (history read stopped at {HISTORY_MAX_VALUES})")
        self.status.events["history_recovered"] = self.status.events.get("history_recovered", 0) + recovered
        log.info(
            "opcua: gap read back from the server's history", extra={"kv": {"source": self.id, "values": recovered}}
        )

    async def _secure(self, client: Client) -> None:
        """Identity and secure channel for a new client (before connect; see secure.py).
        Certificate problems raise, so the connect loop reports them and retries with backoff."""
        choice = await secure(
            client,
            self.cfg.security,
            self.cfg.username,
            self.cfg.password.get_secret_value() if self.cfg.password else None,
            self.state_dir,
            self.id,
        )
        self.status.security = str(choice)

    # --- subscription mode ------------------------------------------------------------------------

    def _filter(self, t: OpcuaTag) -> ua.DataChangeFilter:
        f = ua.DataChangeFilter()
        f.Trigger = ua.DataChangeTrigger.StatusValueTimestamp
        if t.deadband_abs is not None and t.deadband_abs > 0:
            f.DeadbandType = ua.DeadbandType.Absolute
            f.DeadbandValue = t.deadband_abs
        elif t.deadband_percent is not None and t.deadband_percent > 0:
            f.DeadbandType = ua.DeadbandType.Percent
            f.DeadbandValue = t.deadband_percent
        return f

    def _request(self, item: _Item, handle: int) -> ua.MonitoredItemCreateRequest:
        rv = ua.ReadValueId()
        rv.NodeId = item.nodeid
        rv.AttributeId = AttributeIds.Value
        p = ua.MonitoringParameters()
        p.ClientHandle = handle
        t = item.cfg
        p.SamplingInterval = (
            t.sampling_interval_ms if t.sampling_interval_ms is not None else self.cfg.sampling_interval_ms
        )
        p.QueueSize = self.cfg.queue_size
        p.DiscardOldest = True
        p.Filter = self._filter(t)
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = rv
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = p
        return req

    async def _run_subscription(self, client: Client) -> None:
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self.cfg.publishing_interval_ms
        params.RequestedLifetimeCount = 10_000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(self.cfg.publishing_interval_ms)
        params.MaxNotificationsPerPublish = 0  # no limit
        params.PublishingEnabled = True
        params.Priority = 0
        # queue_maxsize=0: unbounded, so asyncua never drops a notification when we are busy.
        await self._read_history_flags(client)
        # The fast decoder is on the session before the publish loop starts (create_subscription).
        fast = FastPublish(client.uaclient.session) if self.cfg.fast_decode else None
        sub = await client.create_subscription(params, None, queue_maxsize=0)
        by_handle: dict[int, _Item] = {}
        if fast is not None:
            # No monitored item exists yet, so no data change can have taken asyncua's path.
            fast.attach(sub, lambda n: self._data_change(n, by_handle))
        batch = self.cfg.monitored_item_batch
        handle = 1000
        ok = 0
        for i in range(0, len(self._items), batch):
            chunk = self._items[i : i + batch]
            reqs = []
            for item in chunk:
                handle += 1
                by_handle[handle] = item
                reqs.append(self._request(item, handle))
            try:
                results = await sub.create_monitored_items(reqs)
            except UaStatusCodeError as exc:
                # A whole-request failure (rare): try item by item so one bad node can't sink the chunk.
                log.warning(
                    "opcua: batch monitored-item creation failed; retrying one by one",
                    extra={"kv": {"source": self.id, "error": str(exc), "items": len(reqs)}},
                )
                results = []
                for r in reqs:
                    try:
                        results += await sub.create_monitored_items([r])
                    except UaStatusCodeError as one:
                        results.append(ua.StatusCode(ua.UInt32(one.code)))
            for item, res in zip(chunk, results, strict=True):
                if isinstance(res, ua.StatusCode):
                    self._node_failed(item, f"cannot monitor: {status_name(res.value)}")
                else:
                    ok += 1
                    self.clear_failing(item.cfg.tag)
        self.status.connected = True
        log.info(
            "opcua: subscribed",
            extra={
                "kv": {
                    "source": self.id,
                    "endpoint": self.cfg.endpoint,
                    "monitored": ok,
                    "failing": len(self.status.failing),
                }
            },
        )
        consumer = asyncio.create_task(self._consume(sub, by_handle))
        # The gap is read back beside the new subscription's own values (same tag and time twice
        # is one row downstream).
        recovery = asyncio.create_task(self._recover_gaps(client))
        waiters = [asyncio.create_task(self._lost.wait()), asyncio.create_task(self._stop.wait()), consumer]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in (*waiters, recovery):
                w.cancel()
            await asyncio.gather(*waiters, recovery, return_exceptions=True)
        if consumer.done() and not consumer.cancelled() and consumer.exception() is not None:
            raise consumer.exception()  # type: ignore[misc]
        if self._lost.is_set():
            raise ConnectionError("connection to the server lost")

    def _data_change(self, n: FastDataChange | ua.DataChangeNotification, by_handle: dict[int, _Item]) -> None:
        """One DataChangeNotification of the fast path's sink, as one delivery (publish order)."""
        samples: list[Sample] = []
        append = samples.append
        received = now_us()
        if isinstance(n, FastDataChange):
            convert = self._convert_raw
            for k, (handle, raw, code, src, srv) in enumerate(n.rows):
                item = by_handle.get(handle)
                if item is None:
                    continue
                try:
                    s = convert(item, raw, code, src, srv, received, n, k)
                except Exception as exc:
                    self._internal_error(item, n.datavalue(k), exc)
                    continue
                if s is not None:
                    append(s)
        else:  # a body the fast decoder left to asyncua
            self.status.events["decode_fallbacks"] = self.status.events.get("decode_fallbacks", 0) + 1
            for mi in n.MonitoredItems:
                item = by_handle.get(mi.ClientHandle)
                if item is not None and (s := self._sample(item, mi.Value)) is not None:
                    append(s)
        if not samples:
            return
        if self._historized:
            for s in samples:
                if s[1] in self._historized:
                    self._last_ts[s[1]] = s[2]
        self.inbox.put_nowait_in_loop(Delivery(self.id, Origin.OPCUA, samples))

    async def _consume(self, sub: Subscription, by_handle: dict[int, _Item]) -> None:
        put = self.inbox.put_nowait_in_loop
        async for ev in sub:
            if isinstance(ev, DataChangeEvent):
                handle = ev.data.subscription_data.client_handle
                item = by_handle.get(handle) if handle is not None else None
                if item is None:
                    continue
                sample = self._sample(item, ev.data.monitored_item.Value)
                if sample is not None:
                    if item.cfg.tag in self._historized:
                        self._last_ts[item.cfg.tag] = sample[2]
                    put(Delivery(self.id, Origin.OPCUA, [sample]))
            elif isinstance(ev, StatusChangeEvent):
                code = ev.notification.Status.value if ev.notification.Status else 0
                if Quality.from_opcua_status(code) is not Quality.GOOD:
                    # BadTimeout / BadShutdown: the server dropped our subscription; rebuild it.
                    self.status.last_error = f"subscription status {status_name(code)}"
                    self._lost.set()
                    return

    # --- polling mode ---------------------------------------------------------------------------

    async def _run_poll(self, client: Client) -> None:
        self.status.connected = True
        last: dict[int, tuple[Any, int, int | None]] = {}
        interval = self.cfg.poll_interval_ms / 1000
        loop = asyncio.get_running_loop()
        while not self._stop.is_set() and not self._lost.is_set():
            started = loop.time()
            batch = self.cfg.monitored_item_batch
            samples: list[Sample] = []
            for i in range(0, len(self._items), batch):
                chunk = self._items[i : i + batch]
                params = ua.ReadParameters()
                params.TimestampsToReturn = ua.TimestampsToReturn.Both
                for item in chunk:
                    rv = ua.ReadValueId()
                    rv.NodeId = item.nodeid
                    rv.AttributeId = AttributeIds.Value
                    params.NodesToRead.append(rv)
                results = await client.uaclient.read(params)
                for j, (item, dv) in enumerate(zip(chunk, results, strict=True)):
                    code = dv.StatusCode.value if dv.StatusCode is not None else 0
                    if code in _NODE_ERRORS:
                        self._node_failed(item, f"cannot read: {status_name(code)}")
                        continue
                    raw = dv.Value.Value if dv.Value is not None else None
                    key = (raw, code, to_us(dv.SourceTimestamp))
                    if last.get(i + j) == key:
                        continue  # unchanged since the last poll: not a new sample
                    last[i + j] = key
                    s = self._sample(item, dv)
                    if s is not None:
                        samples.append(s)
            if samples:
                self.inbox.put_nowait_in_loop(Delivery(self.id, Origin.OPCUA, samples))
            if await self.sleep(max(0.0, interval - (loop.time() - started))):
                return
        if self._lost.is_set():
            raise ConnectionError("connection to the server lost")

    # --- sample conversion ----------------------------------------------------------------------

    def _node_failed(self, item: _Item, why: str) -> None:
        if self.mark_failing(item.cfg.tag, why):
            log.error(
                "opcua: node not delivering; the others continue",
                extra={"kv": {"source": self.id, "tag": item.cfg.tag, "node_id": item.cfg.node_id, "why": why}},
            )

    def _sample(self, item: _Item, dv: ua.DataValue) -> Sample | None:
        """The vetted sample of ``dv``; None when there is none (dead-lettered or node failing)."""
        try:
            return self._convert(item, dv)
        except Exception as exc:
            self._internal_error(item, dv, exc)
            return None

    def _internal_error(self, item: _Item, dv: ua.DataValue, exc: Exception) -> None:
        # A value this code cannot convert must not end the subscription: the server would
        # send the same value again after the reconnect, and the source would crash-loop.
        log.exception("opcua: value could not be converted; dead-lettered", extra={"kv": {"tag": item.cfg.tag}})
        payload = repr(dv).encode("utf-8", "backslashreplace")[:65536]
        dl = DeadLetter(payload, f"tag {item.cfg.tag!r}: internal error: {exc!r}", f"{self.id}:{item.cfg.node_id}")
        self.inbox.put_nowait_in_loop(Delivery(self.id, Origin.OPCUA, None, dl))

    def _convert(self, item: _Item, dv: ua.DataValue) -> Sample | None:
        code = dv.StatusCode.value if dv.StatusCode is not None else 0
        raw = dv.Value.Value if dv.Value is not None else None
        return self._convert_raw(item, raw, code, to_us(dv.SourceTimestamp), to_us(dv.ServerTimestamp), now_us(), dv)

    def _convert_raw(
        self,
        item: _Item,
        raw: Any,
        code: int,
        src: int | None,
        srv: int | None,
        received: int,
        dv: ua.DataValue | FastDataChange,
        k: int = 0,
    ) -> Sample | None:
        """The sample of what a DataValue carried (both decoders end here, so they cannot differ
        downstream); ``dv`` (or row ``k`` of a FastDataChange) only for a dead letter's payload."""
        quality = Quality.from_opcua_status(code)
        value: Value
        if raw is None:
            if quality is Quality.GOOD:
                self._node_failed(item, "good status without a value")
                return None
            value = math.nan  # bad sample without a value: flagged, never the last good value
        elif isinstance(raw, bool | str | float):
            value = raw
        elif isinstance(raw, int):
            value = int(raw)  # IntEnum and numpy-like ints become plain ints
        else:
            self.unsupported += 1
            self._node_failed(item, f"unsupported value type {type(raw).__name__}")
            return None
        ts = src if src is not None else srv if srv is not None else received
        t = item.cfg
        sample: Sample = (
            t.equipment,
            t.tag,
            ts,
            value,
            t.unit if t.unit is not None else self.cfg.defaults.unit,
            int(quality),
            code if code else None,
            srv if srv is not None and srv != ts else None,
            None,
        )
        try:
            return vet(sample, received, self.limits)
        except Uncarriable as exc:
            # This one value alone: dead-lettered (with what the server sent), the node keeps going.
            if isinstance(dv, FastDataChange):
                dv = dv.datavalue(k)
            payload = repr(dv).encode("utf-8", "backslashreplace")[:65536]
            dl = DeadLetter(payload, f"tag {t.tag!r}: {exc.reason}", f"{self.id}:{t.node_id}")
            self.inbox.put_nowait_in_loop(Delivery(self.id, Origin.OPCUA, None, dl))
            return None


def build(cfg: OpcuaSource, ctx: SourceContext) -> OpcuaSourceRunner:
    """The registry's factory (edge/opcua/connector.py)."""
    return OpcuaSourceRunner(cfg, ctx.inbox, ctx.settings.state_dir, ctx.limits)
