"""What a running pipeline has done: readings written, aggregates, deviations, consumer lag."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException, TopicPartition

from plantstream.producers.kafka import make_consumer


def consumer_lag(bootstrap: str, group: str, topics: Iterable[str], timeout: float = 5.0) -> int | None:
    """Messages not yet committed by ``group`` across ``topics``; None if the broker can't say."""
    c = make_consumer(bootstrap, {"group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=timeout)
        parts = [TopicPartition(t, p) for t in topics if t in md.topics for p in md.topics[t].partitions]
        if not parts:
            return 0
        committed = c.committed(parts, timeout=timeout)
        lag = 0
        for tp in committed:
            _, high = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout)
            done = tp.offset if tp.offset >= 0 else 0
            lag += max(0, high - done)
        return lag
    except KafkaException:
        return None
    finally:
        c.close()


def db_counts(dsn: str) -> dict[str, int]:
    """Row counts of the tables a demo watches (estimates would be faster; exact is fine at demo sizes)."""
    import psycopg

    out: dict[str, int] = {}
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        for table in ("readings", "aggregates_1m", "deviations", "lots"):
            try:
                row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                out[table] = int(row[0]) if row else 0
            except psycopg.Error:
                conn.rollback()
    return out


def ledger_lines(paths: Iterable[object]) -> int:
    n = 0
    for p in paths:
        try:
            with open(str(p), "rb") as f:
                n += sum(1 for line in f if line.startswith(b'{"plant"'))
        except OSError:
            pass
    return n
