"""Modbus TCP connector (pymodbus's asyncio client): polls registers and coils at an interval.

Contracts (the failure contract of edge/source.py):

* Tags of one table are read in blocks: adjacent addresses (at most ``max_gap`` unused registers
  apart, ``max_block`` registers a request) share one request.
* Values: the registers of a tag in ``word_order`` (32/64-bit types), each register's bytes in
  ``byte_order``, decoded as the tag's ``data_type``, then ``raw * scale + offset`` (an integer
  type with scale 1 and offset 0 stays an integer). Timestamp: when the response arrived (Modbus
  carries none). Outside ``valid_min`` / ``valid_max`` -> delivered flagged bad with the reason.
* A Modbus exception response (illegal address, device failure, ...) for a block: its tags get
  a bad reading (NaN, reason naming the exception) once, are listed in ``status.failing``, and
  are read again every poll; the other blocks carry on. When the block reads again the tags
  leave ``failing``.
* A timeout or a lost / refused connection: every tag gets a gap marker (bad, NaN, status
  BadNoCommunication like OPC-UA's, reason) at the moment of the loss, once per loss; the
  client is closed and a new one connects with backoff (``reconnect``), doubling to ``max_s``
  (the shared loop, ``edge.source.Reconnect``).
  Nothing is raised out of ``run()``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from plantstream.contract import Origin, Quality, Value
from plantstream.edge.batcher import Sample
from plantstream.edge.modbus.config import ModbusSource, ModbusTag
from plantstream.edge.registry import SourceContext
from plantstream.edge.source import DeadLetter, Delivery, Inbox, Reconnect, Source, now_us
from plantstream.edge.vet import DEFAULT_LIMITS, Limits, Uncarriable, vet

log = logging.getLogger(__name__)

BAD_NO_COMMUNICATION = 0x80310000  # OPC-UA's StatusCode for "no communication": what a gap marker carries
GAP_REASON = "gap: Modbus connection lost; values until the reconnect are unknown"
_BITS = ("coil", "discrete_input")
_FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "float64": ">d"}
_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ConnectionLost(Exception):
    """The connection failed, was lost or a request timed out."""


def decode(registers: list[int], data_type: str, word_order: str, byte_order: str) -> int | float | bool:
    """The raw value of ``registers`` (16-bit words as the server sent them, in address order)."""
    if data_type == "bool":
        return any(registers)
    words = registers if word_order == "big" else list(reversed(registers))
    raw = b"".join(w.to_bytes(2, "big") if byte_order == "big" else w.to_bytes(2, "little") for w in words)
    value: int | float = struct.unpack(_FORMATS[data_type], raw)[0]
    return value


def scaled(tag: ModbusTag, raw: int | float | bool) -> Value:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and tag.scale == 1.0 and tag.offset == 0.0:
        return raw
    return float(raw) * tag.scale + tag.offset


@dataclass(slots=True)
class Block:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``, serving ``tags``."""

    table: str
    start: int
    count: int
    tags: list[ModbusTag]


def plan(cfg: ModbusSource) -> list[Block]:
    """Requests covering every tag: adjacent tags of a table joined (gap, size limited)."""
    blocks: list[Block] = []
    limit = {
        t: cfg.max_block if t not in _BITS else min(cfg.max_block * 16, 2000) for t in (*_BITS, "holding", "input")
    }
    by_table: dict[str, list[ModbusTag]] = {}
    for t in cfg.tags:
        by_table.setdefault(t.table, []).append(t)
    for table, tags in by_table.items():
        cur: Block | None = None
        for t in sorted(tags, key=lambda t: t.address):
            end = t.address + t.words
            if cur is not None and t.address <= cur.start + cur.count + cfg.max_gap and end - cur.start <= limit[table]:
                cur.count = max(cur.count, end - cur.start)
                cur.tags.append(t)
            else:
                cur = Block(table, t.address, t.words, [t])
                blocks.append(cur)
    return blocks


class ModbusTcpSource(Source):  # type: ignore[misc]  # Source is Any to mypy: editable-install namespace
    origin = Origin.MODBUS

    def __init__(self, cfg: ModbusSource, inbox: Inbox, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(cfg.id, "modbus", f"modbus://{cfg.host}:{cfg.port}/{cfg.unit_id}", inbox)
        self.cfg = cfg
        self.limits = limits
        self.blocks = plan(cfg)
        self._last: dict[str, Value] = {}
        self.polls = 0

    # --- connection loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        await Reconnect(
            self,
            "modbus",
            self.cfg.reconnect,
            open=self._client,
            connect=self._connect,
            session=self._session,
            close=self._close,
            on_lost=self._lost,
        ).run()

    def _client(self) -> AsyncModbusTcpClient:
        return AsyncModbusTcpClient(
            self.cfg.host,
            port=self.cfg.port,
            timeout=self.cfg.timeout_s,
            retries=0,
            reconnect_delay=0,  # reconnects are ours (backoff, gap markers), not pymodbus's
        )

    async def _connect(self, client: AsyncModbusTcpClient) -> None:
        if not await asyncio.wait_for(client.connect(), self.cfg.timeout_s * 2):
            raise ConnectionLost(f"cannot connect to {self.cfg.host}:{self.cfg.port}")

    async def _session(self, client: AsyncModbusTcpClient) -> None:
        self.status.connected = True
        self.status.last_error = ""
        await self._poll_loop(client)

    async def _close(self, client: AsyncModbusTcpClient) -> None:
        client.close()

    def _lost(self) -> None:
        self._gap(GAP_REASON + (f" ({self.status.last_error})" if self.status.last_error else ""))

    async def _poll_loop(self, client: AsyncModbusTcpClient) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.poll_interval_ms / 1000
        while not self._stop.is_set():
            started = loop.time()
            samples: list[Sample] = []
            for block in self.blocks:
                samples += await self._read_block(client, block)
            self.polls += 1
            if samples:
                self.inbox.put_nowait_in_loop(Delivery(self.id, Origin.MODBUS, samples))
            if await self.sleep(max(0.0, interval - (loop.time() - started))):
                return

    async def _read_block(self, client: AsyncModbusTcpClient, block: Block) -> list[Sample]:
        unit = self.cfg.unit_id
        call: Any = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete_input": client.read_discrete_inputs,
        }[block.table]
        try:
            rr = await asyncio.wait_for(call(block.start, count=block.count, device_id=unit), self.cfg.timeout_s * 2)
        except (ModbusException, OSError, TimeoutError) as exc:
            raise ConnectionLost(f"{block.table} {block.start}+{block.count}: {type(exc).__name__}: {exc}") from exc
        received = now_us()
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            why = f"modbus exception {code} ({_EXCEPTIONS.get(code, 'unknown')}) reading {block.table} {block.start}"
            return self._failed(block, why, received)
        words: list[int] = list(rr.bits if block.table in _BITS else rr.registers)
        out: list[Sample] = []
        for tag in block.tags:
            first = self.status.failing.pop(tag.tag, None) is not None
            i = tag.address - block.start
            try:
                raw = decode(
                    words[i : i + tag.words], tag.kind, self.cfg.word_order_of(tag), self.cfg.byte_order_of(tag)
                )
                value = scaled(tag, raw)
            except Exception as exc:  # a short response: this tag only
                out += self._failed(Block(block.table, tag.address, tag.words, [tag]), f"undecodable: {exc}", received)
                continue
            if self.cfg.only_changes and not first and self._last.get(tag.tag, _MISSING) == value:
                continue
            self._last[tag.tag] = value
            if (s := self._sample(tag, value, received)) is not None:
                out.append(s)
        return out

    # --- samples ---------------------------------------------------------------------------------

    def _unit(self, tag: ModbusTag) -> str:
        return tag.unit if tag.unit is not None else self.cfg.defaults.unit

    def _sample(self, tag: ModbusTag, value: Value, received: int) -> Sample | None:
        quality, reason = int(Quality.GOOD), None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            if tag.valid_min is not None and value < tag.valid_min:
                quality, reason = int(Quality.BAD), f"value: {value} below valid_min {tag.valid_min}"
            elif tag.valid_max is not None and value > tag.valid_max:
                quality, reason = int(Quality.BAD), f"value: {value} above valid_max {tag.valid_max}"
        if quality != int(Quality.GOOD):
            self.status.bad_quality += 1
        sample: Sample = (tag.equipment, tag.tag, received, value, self._unit(tag), quality, None, None, reason)
        try:
            return vet(sample, received, self.limits)
        except Uncarriable as exc:
            payload = repr(value).encode("utf-8", "backslashreplace")[:65536]
            dl = DeadLetter(payload, f"tag {tag.tag!r}: {exc.reason}", f"{self.id}:{tag.address_text()}")
            self.inbox.put_nowait_in_loop(Delivery(self.id, Origin.MODBUS, None, dl))
            return None

    def _failed(self, block: Block, why: str, ts: int) -> list[Sample]:
        """Bad readings (NaN, reason) for the tags of a block the server refused, once until it reads again."""
        out: list[Sample] = []
        for tag in block.tags:
            if self.mark_failing(tag.tag, why):
                log.error(
                    "modbus: tag not readable; the others continue",
                    extra={"kv": {"source": self.id, "tag": tag.tag, "why": why}},
                )
                out.append((tag.equipment, tag.tag, ts, math.nan, self._unit(tag), int(Quality.BAD), None, None, why))
                self._last.pop(tag.tag, None)
        return out

    def _gap(self, reason: str) -> None:
        ts = now_us()
        samples: list[Sample] = [
            (t.equipment, t.tag, ts, math.nan, self._unit(t), int(Quality.BAD), BAD_NO_COMMUNICATION, None, reason)
            for t in self.cfg.tags
        ]
        self._last.clear()
        self.status.events["gap_markers"] = self.status.events.get("gap_markers", 0) + len(samples)
        self.inbox.put_nowait_in_loop(Delivery(self.id, Origin.MODBUS, samples))


_MISSING = object()


def build(cfg: ModbusSource, ctx: SourceContext) -> ModbusTcpSource:
    """The registry's factory (edge/modbus/connector.py)."""
    return ModbusTcpSource(cfg, ctx.inbox, ctx.limits)
