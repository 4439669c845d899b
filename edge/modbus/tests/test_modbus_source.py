"""Modbus TCP connector against pymodbus's own server (127.0.0.1, a free port): decoding of every
data type and word/byte order, scale and offset, range checks, exception responses, a server
stopped mid-run (gap markers, then recovery after its restart), config errors naming the field."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

from plantstream.config import ConfigError
from plantstream.contract import Quality
from plantstream.edge.config import EdgeConfig, load_config
from plantstream.edge.modbus.config import ModbusSource
from plantstream.edge.modbus.source import BAD_NO_COMMUNICATION, ModbusTcpSource, decode, plan
from plantstream.testing.plugin import free_port
from plantstream.testing.sources import SourceRun, run_source

HERE = Path(__file__).resolve().parent.parent
EQ = "acme/site/area/line/unit1"


def words(fmt: str, value: float | int, word_order: str = "big", byte_order: str = "big") -> list[int]:
    """The registers a server holds for ``value`` packed as struct ``fmt`` in the given orders."""
    raw = struct.pack(fmt, value)
    ws = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if word_order == "little":
        ws.reverse()
    if byte_order == "little":
        ws = [int.from_bytes(w.to_bytes(2, "big"), "little") for w in ws]
    return ws


def run(coro: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    """The test body on a fresh loop, bounded in time."""
    asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"modbus test server not listening on {port}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def server(
    port: int, hr: list[int], ir: list[int] | None = None, co: list[bool] | None = None
) -> AsyncIterator[ModbusTcpServer]:
    """pymodbus's TCP server with holding registers ``hr``, input registers ``ir`` and coils ``co``
    from protocol address 0 (the data blocks start at 1: pymodbus maps address 0 to block index 1)."""
    dev = ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, hr),  # type: ignore[no-untyped-call]
        ir=ModbusSequentialDataBlock(1, ir or [0] * 8),  # type: ignore[no-untyped-call]
        co=ModbusSequentialDataBlock(1, co or [False] * 8),  # type: ignore[no-untyped-call]
        di=ModbusSequentialDataBlock(1, [False] * 8),  # type: ignore[no-untyped-call]
    )
    srv = ModbusTcpServer(ModbusServerContext(devices=dev, single=True), address=("127.0.0.1", port))
    task = asyncio.create_task(srv.serve_forever())
    try:
        await wait_port(port)
        yield srv
    finally:
        await srv.shutdown()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


async def write_registers(port: int, address: int, values: list[int]) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0, timeout=2)
    try:
        assert await client.connect()
        rr = await client.write_registers(address, values, device_id=1)
        assert not rr.isError(), rr
    finally:
        client.close()


def source(port: int, tags: list[dict[str, Any]], **kw: Any) -> ModbusSource:
    return ModbusSource.model_validate(
        {
            "type": "modbus",
            "id": "mb1",
            "host": "127.0.0.1",
            "port": port,
            "poll_interval_ms": 50,
            "timeout_s": 1.0,
            "reconnect": {"min_s": 0.05, "max_s": 0.2},
            "tags": [{"equipment": EQ, **t} for t in tags],
            **kw,
        }
    )


def values(r: SourceRun, tag: str) -> list[Any]:
    return [s[3] for s in r.samples(tag)]


# --- pure decoding -------------------------------------------------------------------------------

CASES = [
    ("int16", ">h", -1234),
    ("uint16", ">H", 54321),
    ("int32", ">i", -123456789),
    ("uint32", ">I", 4_000_000_000),
    ("float32", ">f", struct.unpack(">f", struct.pack(">f", 3.14159))[0]),
    ("float64", ">d", -2.718281828459045),
]


@pytest.mark.parametrize(("data_type", "fmt", "value"), CASES)
@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("byte_order", ["big", "little"])
def test_decode_every_type_and_order(data_type: str, fmt: str, value: float, word_order: str, byte_order: str) -> None:
    regs = words(fmt, value, word_order, byte_order)
    assert decode(regs, data_type, word_order, byte_order) == value
    if len(regs) > 1 and regs != regs[::-1]:
        # the other word order reads a different number: the option really is applied
        other = "little" if word_order == "big" else "big"
        assert decode(regs, data_type, other, byte_order) != value


def test_plan_joins_adjacent_tags_and_splits_tables() -> None:
    cfg = source(
        502,
        [
            {"tag": "a", "address": 0, "data_type": "float32"},
            {"tag": "b", "address": 2},
            {"tag": "c", "address": 40},  # beyond max_gap: its own request
            {"tag": "d", "address": 0, "table": "coil"},
        ],
    )
    blocks = sorted((b.table, b.start, b.count, [t.tag for t in b.tags]) for b in plan(cfg))
    assert blocks == [("coil", 0, 1, ["d"]), ("holding", 0, 3, ["a", "b"]), ("holding", 40, 1, ["c"])]


# --- against the server --------------------------------------------------------------------------


def test_values_decoded_for_each_type_and_word_order() -> None:
    port = free_port()
    hr: list[int] = []
    tags: list[dict[str, Any]] = []
    expected: dict[str, Any] = {}
    for data_type, fmt, value in CASES:
        for wo in ("big", "little"):
            name = f"{data_type}_{wo}"
            tags.append({"tag": name, "address": len(hr), "data_type": data_type, "word_order": wo})
            hr += words(fmt, value, wo)
            expected[name] = value
    # a byte-swapped float (a "CDAB"/"BADC" device) and a bool on a register
    tags.append({"tag": "f_bytes", "address": len(hr), "data_type": "float32", "byte_order": "little"})
    hr += words(">f", 1.5, "big", "little")
    expected["f_bytes"] = 1.5
    tags.append({"tag": "flag", "address": len(hr), "data_type": "bool"})
    hr += [7]
    expected["flag"] = True

    async def body() -> None:
        async with server(port, hr), run_source(source(port, tags)) as r:
            await r.wait_for(lambda r: all(r.samples(t) for t in expected))
            for name, want in expected.items():
                s = r.samples(name)[0]
                assert s[3] == want and type(s[3]) is type(want), (name, s)
                assert s[5] == Quality.GOOD and s[0] == EQ
            assert r.source.status.connected

    run(body())


def test_scale_offset_range_coils_and_input_registers() -> None:
    port = free_port()
    tags: list[dict[str, Any]] = [
        {"tag": "temp", "address": 0, "scale": 0.1, "offset": -10, "unit": "degC"},
        {"tag": "press", "address": 1, "data_type": "int16", "valid_min": 0, "valid_max": 100},
        {"tag": "level", "table": "input", "address": 2, "data_type": "uint16", "scale": 0.5},
        {"tag": "run", "table": "coil", "address": 1},
    ]

    async def body() -> None:
        async with server(port, [1234, 250], ir=[0, 0, 30], co=[False, True]), run_source(source(port, tags)) as r:
            await r.wait_for(lambda r: all(r.samples(t["tag"]) for t in tags))
            temp = r.samples("temp")[0]
            assert temp[3] == pytest.approx(113.4) and temp[4] == "degC" and temp[5] == Quality.GOOD
            press = r.samples("press")[0]
            assert press[3] == 250 and press[5] == Quality.BAD and "above valid_max 100" in (press[8] or "")
            assert r.samples("level")[0][3] == 15.0
            assert r.samples("run")[0][3] is True
            # a later write arrives scaled on a later poll
            await write_registers(port, 0, [2000])
            await r.wait_for(lambda r: 190.0 in values(r, "temp"))

    run(body())


def test_exception_response_marks_only_its_tags_bad() -> None:
    port = free_port()
    tags = [{"tag": "ok", "address": 0}, {"tag": "missing", "address": 500}]

    async def body() -> None:
        async with server(port, [42] * 4), run_source(source(port, tags)) as r:
            await r.wait_for(lambda r: len(r.samples("ok")) >= 3 and bool(r.samples("missing")))
            bad = r.samples("missing")
            assert len(bad) == 1  # once, not every poll
            assert (
                bad[0][5] == Quality.BAD
                and math.isnan(float(bad[0][3]))
                and "illegal data address" in (bad[0][8] or "")
            )
            assert "missing" in r.source.status.failing and "ok" not in r.source.status.failing
            assert all(v == 42 for v in values(r, "ok"))
            assert r.source.status.connected

    run(body())


def test_server_stopped_mid_run_gives_gap_markers_then_recovers() -> None:
    port = free_port()
    tags = [{"tag": "a", "address": 0}, {"tag": "b", "address": 1, "data_type": "int16"}]

    async def body() -> None:
        async with run_source(source(port, tags)) as r:
            async with server(port, [11, 22]):
                await r.wait_for(lambda r: 11 in values(r, "a") and 22 in values(r, "b"))
            # server gone: one gap marker per tag, not connected, nothing raised
            await r.wait_for(lambda r: all(any(s[6] == BAD_NO_COMMUNICATION for s in r.samples(t)) for t in "ab"))
            for t in "ab":
                gap = [s for s in r.samples(t) if s[6] == BAD_NO_COMMUNICATION]
                assert len(gap) == 1 and gap[0][5] == Quality.BAD and math.isnan(float(gap[0][3]))
                assert (gap[0][8] or "").startswith("gap: Modbus connection lost")
            await r.wait_for(lambda r: not r.source.status.connected and bool(r.source.status.last_error))
            n_before = len(r.samples())
            async with server(port, [33, 44]):
                await r.wait_for(lambda r: 33 in values(r, "a") and 44 in values(r, "b"), timeout=15)
            after = r.samples()[n_before:]
            assert after and all(s[5] == Quality.GOOD for s in after if s[3] in (33, 44))
            assert r.source.status.reconnects >= 1
            # order within each tag: good values, then the gap, then the new values
            a = values(r, "a")
            gap_at = next(i for i, s in enumerate(r.samples("a")) if s[6] == BAD_NO_COMMUNICATION)
            assert set(a[:gap_at]) == {11} and 33 in a[gap_at + 1 :]

    run(body())


def test_unreachable_server_never_raises_and_retries() -> None:
    port = free_port()  # nothing listens

    async def body() -> None:
        async with run_source(source(port, [{"tag": "a", "address": 0}])) as r:
            deadline = time.monotonic() + 10
            while "cannot connect" not in r.source.status.last_error and "Connection" not in r.source.status.last_error:
                assert time.monotonic() < deadline, r.source.status
                await asyncio.sleep(0.02)
            assert not r.samples()  # never connected: no gap to mark
            assert not r.source.status.connected

    run(body())


# --- config ---------------------------------------------------------------------------------------

BASE = """\
agent_id: a1
plant: steel
sources:
  - type: modbus
    id: mb1
    host: 127.0.0.1
{extra}    tags:
      - tag: x
        equipment: acme/site/area
{tag}"""


@pytest.mark.parametrize(
    ("extra", "tag", "key", "msg"),
    [
        ("", "        address: 70000\n", "sources.0.tags.0.address", "less than or equal to 65535"),
        ("", "        address: 0\n        data_type: float16\n", "sources.0.tags.0.data_type", "int16"),
        ("", "        address: 0\n        table: coil\n        data_type: float32\n", "sources.0.tags.0", "use bool"),
        ("    word_order: middle\n", "        address: 0\n", "sources.0.word_order", "'big' or 'little'"),
        ("    port: 0\n", "        address: 0\n", "sources.0.port", "greater than or equal to 1"),
        ("", "        address: 65535\n        data_type: float32\n", "sources.0.tags.0", "pass 65535"),
        ("", "        address: 0\n        scale: 0\n", "sources.0.tags.0", "scale must not be 0"),
        ("", "        address: 0\n        registr: 3\n", "sources.0.tags.0.registr", "Extra inputs"),
    ],
)
def test_bad_config_rejected_with_the_field_named(tmp_path: Path, extra: str, tag: str, key: str, msg: str) -> None:
    p = tmp_path / "edge.yaml"
    p.write_text(BASE.format(extra=extra, tag=tag))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    text = str(ei.value)
    assert f"key '{key}'" in text and msg in text, text


def test_unknown_source_type_lists_modbus(tmp_path: Path) -> None:
    p = tmp_path / "edge.yaml"
    p.write_text(BASE.format(extra="", tag="        address: 0\n").replace("type: modbus", "type: modbuz"))
    with pytest.raises(ConfigError, match="'modbus'"):
        load_config(p)


def test_example_config_is_valid_and_builds() -> None:
    cfg = load_config(HERE / "example.yaml")
    src = cfg.sources[0]
    assert isinstance(src, ModbusSource) and src.type == "modbus"
    metas = {m.tag: m for m in cfg.tag_metas()}
    assert metas and all(m.source_address.startswith(f"modbus:{src.id}:") for m in metas.values())
    assert {m.datatype for m in metas.values()} >= {"float", "bool"}
    from plantstream.edge.agent import build_source
    from plantstream.edge.source import Inbox

    assert isinstance(build_source(src, cfg.agent_id, Inbox()), ModbusTcpSource)
    assert isinstance(EdgeConfig.model_validate(cfg.model_dump()).sources[0], ModbusSource)
