"""Ceilings of this machine, measured with the same clients the stages use.

* PostgreSQL: psycopg 3 binary COPY of pre-built tuples into a plain table (no index) and into the
  ``readings`` table (partitioned, primary key, BRIN) of a freshly migrated database.
* Kafka: confluent-kafka produce (the project's idempotent lz4 producer) and consume of encoded
  500-reading batches.
* MQTT: paho 2.x publisher process -> Mosquitto -> paho subscriber here, QoS 0 and QoS 1.
* OPC-UA: asyncua server process writing as fast as it can -> asyncua subscription here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from plantstream.bench import copyload, workers
from plantstream.bench.infra import reading_batches
from plantstream.bench.procs import Worker, python_module, spawn
from plantstream.pipeline import wait_for
from plantstream.producers.kafka import ensure_topics, librdkafka_conf, make_producer

READINGS_TYPES = list(copyload.TYPES.values())
READINGS_COLUMNS = ", ".join(copyload.COLUMNS)


def _rows(n: int, tags: int = 200) -> list[tuple[Any, ...]]:
    t0 = datetime.now(UTC) - timedelta(microseconds=n * 100)
    step = timedelta(microseconds=100)
    row = copyload.row
    return [row(time=t0 + i * step, tag_id=1_000_000 + i % tags, v_float=1500.0 + i * 0.5, quality=0, seq=i)
            for i in range(n)]  # fmt: skip


def _copy(conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]], per_tx: int) -> float:
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for start in range(0, len(rows), per_tx):
            with cur.copy(f"COPY {table} ({READINGS_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(READINGS_TYPES)
                for row in rows[start : start + per_tx]:
                    cp.write_row(row)
            conn.commit()
    return len(rows) / (time.perf_counter() - t0)


def pg_copy(dsn: str, rows: int, per_tx: int = 50_000, plain: bool = True) -> dict[str, float]:
    """Rows/s of binary COPY into ``readings`` and (with ``plain``) into a plain table first
    (``dsn`` must be migrated)."""
    data = _rows(rows)
    out: dict[str, float] = {"rows": rows}
    with psycopg.connect(dsn) as conn:
        if plain:
            conn.execute(
                "CREATE TABLE bench_plain (time timestamptz, tag_id integer, v_float double precision, v_int bigint, "
                "v_bool boolean, v_text text, quality smallint, status_code bigint, lot_id integer, "
                "server_time timestamptz, seq bigint)"
            )
        # The sink creates partitions ahead of its data; do the same so rows skip the default partition.
        conn.execute("SELECT ps_ensure_partitions('readings', now() - interval '1 day', now() + interval '1 day')")
        conn.commit()
        if plain:
            out["plain_rows_per_s"] = _copy(conn, "bench_plain", data, per_tx)
            conn.execute("DROP TABLE bench_plain")
        out["readings_rows_per_s"] = _copy(conn, "readings", data, per_tx)
        conn.execute("DELETE FROM readings WHERE tag_id >= 1000000")
        conn.commit()
    return out


def kafka(bootstrap: str, prefix: str, batches: int, per_batch: int = 500, partitions: int = 3) -> dict[str, float]:
    """Produce then consume ``batches`` encoded reading batches; messages/s and readings/s each way."""
    topic = f"{prefix}.limit.readings"
    ensure_topics(bootstrap, [topic], partitions)
    msgs = reading_batches(batches, per_batch)
    size = sum(len(m) for m in msgs) / len(msgs)
    producer = make_producer(bootstrap, client_id="plantstream-bench")
    keys = [f"bench/u{i % 10}" for i in range(len(msgs))]
    t0 = time.perf_counter()
    for m, k in zip(msgs, keys, strict=True):
        while True:
            try:
                producer.produce(topic, m, k)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    left = producer.flush(60)
    produce_s = time.perf_counter() - t0
    if left:
        raise RuntimeError(f"kafka limit: {left} messages not delivered within 60 s")
    c = Consumer(
        {
            **librdkafka_conf(bootstrap),
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
        }
    )
    got = 0
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        t1 = time.perf_counter()
        deadline = time.monotonic() + 60
        while got < len(msgs) and time.monotonic() < deadline:
            for msg in c.consume(1000, timeout=0.2):
                err = msg.error()
                if err is None:
                    got += 1
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(err.str())
        consume_s = time.perf_counter() - t1
    finally:
        c.close()
    if got < len(msgs):
        raise RuntimeError(f"kafka limit: consumed {got} of {len(msgs)} messages")
    n = len(msgs)
    return {
        "produce_msgs_per_s": n / produce_s,
        "consume_msgs_per_s": n / consume_s,
        "produce_readings_per_s": n * per_batch / produce_s,
        "consume_readings_per_s": n * per_batch / consume_s,
        "message_bytes": size,
        "messages": n,
    }


def mqtt(host: str, port: int, qos: int, count: int, logdir: Path, publishers: int = 1) -> dict[str, float]:
    """``publishers`` processes send ``count`` readings in all; this process's subscriber receives them."""
    import paho.mqtt.client as mqtt_client
    from paho.mqtt.enums import CallbackAPIVersion

    root = f"psbench{uuid.uuid4().hex[:8]}"
    lock = threading.Lock()
    got = [0, 0.0, 0.0]  # count, first, last
    subscribed = threading.Event()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        now = time.monotonic()
        with lock:
            if got[0] == 0:
                got[1] = now
            got[0] += 1
            got[2] = now

    sub = mqtt_client.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{root}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe(f"{root}/#", qos=qos)
    sub.connect(host, port, keepalive=30)
    sub.loop_start()
    each = count // publishers
    count = each * publishers
    pubs = []
    try:
        wait_for(subscribed.is_set, 10, "mqtt subscription")
        for i in range(publishers):
            argv = python_module("plantstream.bench.workers", "mqtt-pub", "--host", host, "--port", str(port),
                                 "--root", f"{root}/p{i}", "--qos", str(qos), "--count", str(each))  # fmt: skip
            pubs.append(spawn(f"mqtt-pub-qos{qos}-{i}", argv, logdir))
        try:
            wait_for(lambda: got[0] >= count or all(p.popen.poll() is not None for p in pubs), 120, "mqtt publishers")
            # The publishers are done; QoS 0 may have lost some, so wait briefly for stragglers only.
            if got[0] < count:
                wait_for(lambda: got[0] >= count, 2, "last messages")
        except TimeoutError:
            pass
    finally:
        for p in pubs:
            p.stop()
        sub.disconnect()
        sub.loop_stop()
    n, first, last = got
    if n < 2 or last <= first:
        raise RuntimeError(f"mqtt qos {qos}: received {int(n)} of {count} messages")
    return {"msgs_per_s": (n - 1) / (last - first), "received": n, "sent": count, "lost": count - n,
            "publishers": publishers}  # fmt: skip


async def _opcua_client(endpoints: list[str], tags: int, seconds: float, warmup: float) -> dict[str, float]:
    from asyncua import ua
    from asyncua.client.client import Client
    from asyncua.common.subscription import DataChangeEvent
    from asyncua.ua.attribute_ids import AttributeIds

    state = {"n": 0}
    clients = []
    tasks = []
    try:
        for ep in endpoints:
            client = Client(ep, timeout=10)
            await client.connect()
            clients.append(client)
            params = ua.CreateSubscriptionParameters()
            params.RequestedPublishingInterval = 100
            params.RequestedLifetimeCount = 10_000
            params.RequestedMaxKeepAliveCount = 10
            params.MaxNotificationsPerPublish = 0
            params.PublishingEnabled = True
            params.Priority = 0
            sub = await client.create_subscription(params, None, queue_maxsize=0)
            reqs = []
            for i in range(tags):
                rv = ua.ReadValueId()
                rv.NodeId = ua.NodeId.from_string(workers.opcua_node(i))
                rv.AttributeId = AttributeIds.Value
                p = ua.MonitoringParameters()
                p.ClientHandle = 1000 + i
                p.SamplingInterval = 0
                p.QueueSize = 10_000
                p.DiscardOldest = True
                r = ua.MonitoredItemCreateRequest()
                r.ItemToMonitor = rv
                r.MonitoringMode = ua.MonitoringMode.Reporting
                r.RequestedParameters = p
                reqs.append(r)
            await sub.create_monitored_items(reqs)

            async def consume(sub: Any = sub) -> None:
                async for ev in sub:
                    if isinstance(ev, DataChangeEvent):
                        state["n"] += 1

            tasks.append(asyncio.create_task(consume()))
        await asyncio.sleep(warmup)
        c0, t0 = state["n"], time.monotonic()
        await asyncio.sleep(seconds)
        c1, t1 = state["n"], time.monotonic()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            with contextlib.suppress(Exception):
                await client.disconnect()
    return {"notifications_per_s": (c1 - c0) / (t1 - t0), "notifications": c1}


def start_opcua_servers(ports: list[int], tags: int, logdir: Path, name: str) -> list[Worker]:
    """Bench OPC-UA server processes, ready to serve (stopped again if any fails to start)."""
    servers = [spawn(f"{name}-{i}", python_module("plantstream.bench.workers", "opcua-server", "--port", str(port),
                     "--tags", str(tags)), logdir) for i, port in enumerate(ports)]  # fmt: skip

    def ready(srv: Worker) -> bool:
        return any(x.get("ready") for x in srv.lines())

    try:
        for srv in servers:
            wait_for(functools.partial(ready, srv), 60, "bench OPC-UA server", srv.check)
    except BaseException:
        for srv in servers:
            srv.stop()
        raise
    return servers


def writes_rate(servers: list[Worker], t0: float, t1: float, key: str = "writes") -> float | None:
    """Sum over load processes of their progress counter's rate between wall times t0 and t1."""
    total = 0.0
    for w in servers:
        pts = [(x["t"], x[key]) for x in w.lines() if key in x and t0 - 1.5 <= x["t"] <= t1 + 1.5]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return None
        total += (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    return total


def opcua(ports: list[int], tags: int, seconds: float, logdir: Path, warmup: float = 1.0) -> dict[str, float]:
    """Server processes writing as fast as they can; one asyncua client here counts notifications/s."""
    servers = start_opcua_servers(ports, tags, logdir, "opcua-limit-server")
    try:
        t0 = time.time()
        res = asyncio.run(_opcua_client([workers.opcua_endpoint(p) for p in ports], tags, seconds, warmup))
        w = writes_rate(servers, t0 + warmup, time.time())
        if w is not None:
            res["server_writes_per_s"] = w
        res["servers"] = len(ports)
        return res
    finally:
        for srv in servers:
            srv.stop()
            if srv.peak_mb:
                _PEAKS["opcua bench server"] = max(_PEAKS.get("opcua bench server", 0.0), srv.peak_mb)


# Peak RSS of the load generators, by role (read by the runner's memory report).
_PEAKS: dict[str, float] = {}


def peaks() -> dict[str, float]:
    return dict(_PEAKS)
