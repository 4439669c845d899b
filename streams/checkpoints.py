"""Window checkpoints in Kafka, so a partition that moves to another worker (on this host or any
other) resumes with the same per-tag horizons its previous owner had.

One compacted topic ``<prefix>.streams.checkpoints.v1`` with as many partitions as the raw topic;
the checkpoint of raw partition N goes to partition N with key ``<app-id>/p<N>``. A checkpoint is
produced only after every output produced before its snapshot is acknowledged, and raw offsets
are acked (hence committed) only after the checkpoint itself is acknowledged. So for every
committed offset C there is a checkpoint with ``offset >= C`` in the topic.

Choosing a checkpoint on assignment: the newest (in log order) whose ``offset`` is at least the
group's committed offset. Such a checkpoint is safe with that commit: every minute after its
horizons had all its samples at offsets >= its ``offset`` >= C, so re-reading from C rebuilds those
minutes whole, while minutes up to the horizons were already emitted and are skipped. A stale
checkpoint (written by a previous owner that had not yet noticed it lost the partition) either
satisfies the same condition, and is then just as safe, or is ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from plantstream.producers.kafka import aiokafka_kwargs, librdkafka_conf, make_consumer, security_or_env

log = logging.getLogger("plantstream.streams")


def checkpoint_topic(prefix: str) -> str:
    return f"{prefix}.streams.checkpoints.v1"


def checkpoint_key(app_id: str, partition: int) -> str:
    return f"{app_id}/p{partition}"


def ensure_checkpoint_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Create the compacted checkpoint topic if missing (raises ConnectionError if unreachable)."""
    sec = security_or_env(None)
    admin = AdminClient(librdkafka_conf(bootstrap, security=sec))
    try:
        existing = set(admin.list_topics(timeout=min(10.0, timeout)).topics)
    except KafkaException as exc:
        raise ConnectionError(f"Kafka at {bootstrap} is unreachable: {exc}") from None
    if topic in existing:
        return
    config = {"cleanup.policy": "compact"}
    if sec.min_insync_replicas is not None:
        config["min.insync.replicas"] = str(sec.min_insync_replicas)
    new = NewTopic(topic, num_partitions=partitions, replication_factor=sec.replication_factor, config=config)
    for name, fut in admin.create_topics([new]).items():
        try:
            fut.result(timeout=timeout)
            log.info("created topic %s", name, extra={"kv": {"partitions": partitions, "cleanup": "compact"}})
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: set[int]) -> dict[int, int]:
    """The group's committed offsets (partitions without a commit are absent). Blocking."""
    c = make_consumer(bootstrap, {"group.id": group, "enable.auto.commit": False})
    try:
        from confluent_kafka import TopicPartition as CTP

        got = c.committed([CTP(topic, p) for p in sorted(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    finally:
        c.close()


def choose(candidates: list[dict[str, Any]], committed: int | None) -> dict[str, Any] | None:
    """The newest checkpoint (log order) that is safe with the committed offset (see module doc)."""
    for cp in reversed(candidates):
        off = cp.get("offset")
        if isinstance(off, int) and (committed is None or off >= committed):
            found: dict[str, Any] = cp
            return found
    return None


async def read_checkpoints(
    bootstrap: str, topic: str, app_id: str, partitions: set[int], timeout: float = 20.0
) -> dict[int, list[dict[str, Any]]]:
    """Every checkpoint of ``partitions`` in log order (assign + read to the end, no group)."""
    out: dict[int, list[dict[str, Any]]] = {p: [] for p in partitions}
    if not partitions:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50, **aiokafka_kwargs()
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp, end in ends.items() if end > 0}
        deadline = asyncio.get_running_loop().time() + timeout
        while remaining:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"reading checkpoints of {sorted(partitions)} took more than {timeout:.0f} s")
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batches.items():
                want = checkpoint_key(app_id, tp.partition).encode()
                for rec in records:
                    if rec.key != want or rec.value is None:
                        continue
                    try:
                        cp = json.loads(rec.value)
                    except ValueError:
                        log.warning("unreadable checkpoint skipped", extra={"kv": {"partition": tp.partition}})
                        continue
                    if isinstance(cp, dict):
                        out[tp.partition].append(cp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out
