"""Load generators the bench runs as separate processes (so they do not share a GIL with what they load).

``python -m plantstream.bench.workers opcua-server --port P --tags N [--seconds S] [--rate W]``
    An asyncua server writing new Double values to N variables as fast as it can (every write is a
    data change), or at about W writes/s in all, printing ``{"t": wall, "writes": n}`` once a second.
``python -m plantstream.bench.workers mqtt-pub --host H --port P --root R --qos Q (--count N | --seconds S)
  [--per-message K] [--rate M]``
    A paho 2.x publisher of simulator-shaped JSON readings on ``R/<equipment path>/<tag>``, as fast
    as the broker acknowledges (or about M messages/s), printing ``{"t": wall, "sent": n, "done": n}``
    (messages) once a second. ``--per-message K`` > 1 sends JSON arrays of K readings, the way data
    loggers batch them (the agent reads them with ``readings_path: $``).

Both exit 0 at the end of their run or on SIGTERM; any failure exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

NAMESPACE = "urn:plantstream:bench"
EQUIPMENT = "acme/bench/area/line"


def opcua_endpoint(port: int) -> str:
    return f"opc.tcp://127.0.0.1:{port}/plantstream/bench"


def opcua_node(i: int) -> str:
    return f"ns=2;s=bench.t{i}"


def _say(**kv: Any) -> None:
    print(json.dumps({"t": time.time(), **kv}), flush=True)


async def opcua_server(port: int, tags: int, seconds: float | None, rate: float | None = None) -> None:
    from asyncua import ua
    from asyncua.server.server import Server
    from asyncua.ua.attribute_ids import AttributeIds
    from asyncua.ua.status_codes import StatusCodes

    server = Server()
    await server.init()
    server.set_endpoint(opcua_endpoint(port))
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(NAMESPACE)
    obj = await server.nodes.objects.add_object(ua.NodeId("bench", idx), ua.QualifiedName("bench", idx))  # type: ignore[arg-type]
    nids = []
    for i in range(tags):
        nid = ua.NodeId(f"bench.t{i}", idx)  # type: ignore[arg-type]
        await obj.add_variable(nid, ua.QualifiedName(f"t{i}", idx), ua.Variant(0.0, ua.VariantType.Double))
        nids.append(nid)
    write = server.iserver.aspace.write_attribute_value
    good = ua.StatusCode(StatusCodes.Good)  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    _say(ready=True, endpoint=opcua_endpoint(port))
    writes = 0
    round_no = 0
    start = time.monotonic()
    next_say = start + 1.0
    try:
        while not stop.is_set() and (seconds is None or time.monotonic() - start < seconds):
            round_no += 1
            now = datetime.now(UTC)
            for i, nid in enumerate(nids):
                dv = ua.DataValue(
                    ua.Variant(round_no + i * 1e-3, ua.VariantType.Double),
                    good,
                    SourceTimestamp=now,  # type: ignore[arg-type]
                    ServerTimestamp=now,  # type: ignore[arg-type]
                )
                await write(nid, AttributeIds.Value, dv)
                writes += 1
                if writes % 256 == 0:
                    # Let the server publish to its subscribers between bursts of writes.
                    await asyncio.sleep(0)
            if rate:
                # Paced: round k is due at k * tags / rate seconds after the start (no drift).
                ahead = start + round_no * len(nids) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if time.monotonic() >= next_say:
                next_say += 1.0
                _say(writes=writes)
    finally:
        _say(writes=writes, done=True)
        await server.stop()


_ONE = b'{"ts_us":%d,"value":%r,"unit":"degC","quality":"good"}'


def mqtt_payload(ts_us: int, value: float, per_message: int = 1) -> bytes:
    """One reading as a JSON object, or ``per_message`` > 1 readings as a JSON array (1 us apart)."""
    if per_message <= 1:
        return _ONE % (ts_us, value)
    return b"[" + b",".join(_ONE % (ts_us + k, value + k) for k in range(per_message)) + b"]"


def mqtt_topics(root: str, tags: int, units: int = 10, first: int = 0) -> list[str]:
    return [f"{root}/{EQUIPMENT}/u{i % units}/t{i}" for i in range(first, first + tags)]


def mqtt_pub(
    host: str,
    port: int,
    root: str,
    qos: int,
    count: int | None,
    seconds: float | None,
    tags: int,
    per_message: int = 1,
    rate: float | None = None,
    first_tag: int = 0,
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{root}-{qos}")
    client.max_inflight_messages_set(1000)
    connected = threading.Event()
    done = [0]
    lock = threading.Lock()

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        connected.set()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any = None) -> None:
        with lock:
            done[0] += 1

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(host, port, keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit(f"mqtt-pub: broker {host}:{port} not reachable")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    topics = mqtt_topics(root, tags, first=first_tag)
    _say(ready=True)
    sent = 0
    start = time.monotonic()
    next_say = start + 1.0
    window = 2000  # messages handed to paho but not yet written/acknowledged
    while not stopped.is_set():
        if count is not None and sent >= count:
            break
        if seconds is not None and time.monotonic() - start >= seconds:
            break
        if sent - done[0] >= window or (rate and sent >= (time.monotonic() - start) * rate):
            time.sleep(0.0005 if not rate else 0.005)
        else:
            ts = time.time_ns() // 1000
            for _ in range(100 if not rate else max(1, min(100, int(rate // 100)))):
                client.publish(topics[sent % tags], mqtt_payload(ts, sent * 0.5, per_message), qos=qos)
                sent += 1
        if time.monotonic() >= next_say:
            next_say += 1.0
            _say(sent=sent, done=done[0])
    deadline = time.monotonic() + 10
    while done[0] < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    _say(sent=sent, done=done[0], finished=True)
    client.disconnect()
    client.loop_stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m plantstream.bench.workers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("opcua-server")
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--tags", type=int, default=200)
    o.add_argument("--seconds", type=float, default=None)
    o.add_argument("--rate", type=float, default=None, help="writes/s in all (default: as fast as possible)")
    m = sub.add_parser("mqtt-pub")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--root", required=True)
    m.add_argument("--qos", type=int, choices=[0, 1], default=1)
    m.add_argument("--count", type=int, default=None)
    m.add_argument("--seconds", type=float, default=None)
    m.add_argument("--tags", type=int, default=200)
    m.add_argument("--per-message", type=int, default=1, help="readings per message (> 1: a JSON array)")
    m.add_argument("--rate", type=float, default=None, help="messages/s (default: as fast as acknowledged)")
    m.add_argument(
        "--first-tag",
        type=int,
        default=0,
        help="tags t<K>..: publishers feeding one agent need disjoint tags (same tag and microsecond = one reading)",
    )
    a = ap.parse_args(argv)
    if a.cmd == "opcua-server":
        asyncio.run(opcua_server(a.port, a.tags, a.seconds, a.rate))
    else:
        mqtt_pub(a.host, a.port, a.root, a.qos, a.count, a.seconds, a.tags, a.per_message, a.rate, a.first_tag)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
