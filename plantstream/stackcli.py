"""``plantstream stack up|down|status|env`` and ``plantstream topics create``."""

from __future__ import annotations

import sys

import click

from plantstream.config import Settings
from plantstream.stack import Stack, StackError, main_env


@click.group()
def stack() -> None:
    """Local services on 127.0.0.1 (PostgreSQL 15, Mosquitto, Kafka-protocol broker) for demos and tests."""


@stack.command()
@click.option("--no-install", is_flag=True, help="Do not apt-get install missing services.")
def up(no_install: bool) -> None:
    """Install what is missing and start every service; reuses what already runs."""
    s = Stack()
    try:
        result = s.up(install=not no_install)
    except StackError as exc:
        click.echo(f"stack up failed: {exc}", err=True)
        sys.exit(1)
    for name, (ok, addr) in s.status().items():
        click.echo(f"{name:10s} {'up' if ok else 'DOWN':4s} {addr}  ({result.get(name, '')})")
    click.echo(f'state: {s.state}\nnext: eval "$(plantstream stack env)"')


@stack.command()
def down() -> None:
    """Stop the services this state directory started."""
    for name, stopped in Stack().down().items():
        click.echo(f"{name:10s} {'stopped' if stopped else 'not running (from here)'}")


@stack.command()
def status() -> None:
    """Each service up/down with its address; exit 1 if any is down."""
    st = Stack().status()
    for name, (ok, addr) in st.items():
        click.echo(f"{name:10s} {'up' if ok else 'down':4s} {addr}")
    sys.exit(0 if all(ok for ok, _ in st.values()) else 1)


@stack.command()
def engine() -> None:
    """Print the running database engine: `timescaledb` or `postgres` (why, when not the one chosen,
    on stderr); exit 1 if PostgreSQL is not answering."""
    s = Stack()
    running = s.running_engine()
    if running is None:
        click.echo(f"postgres is not answering on 127.0.0.1:{s.ports.pg}", err=True)
        sys.exit(1)
    click.echo("timescaledb" if running.startswith("timescaledb") else "postgres")
    click.echo(f"database engine: {running}" + (f" ({s.engine_note()})" if s.engine_note() else ""), err=True)


@stack.command()
def env() -> None:
    """Print export lines for the local stack: eval "$(plantstream stack env)"."""
    click.echo(main_env(Stack()))


@click.group()
def topics() -> None:
    """The Kafka topic contract."""


@topics.command("create")
def topics_create() -> None:
    """Create the contract topics (raw, clean, context, aggregates, deviations, dead letters)."""
    from plantstream.producers.kafka import ensure_contract_topics
    from plantstream.producers.topics import Topics

    s = Settings.from_env()
    t = Topics(s.topic_prefix, s.partitions)
    ensure_contract_topics(s.kafka_bootstrap, t, security=s.kafka)
    for name in t.all():
        click.echo(name)


@topics.command("tail")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="start at the oldest record kept (default: only new records)")
@click.option("--max", "max_records", type=click.IntRange(min=1), default=None, help="stop after this many records")
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1, max=86_400),
    default=None,
    help="stop when no record came for this many seconds (default: follow until Ctrl-C)",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one object per reading/aggregate/event")
def topics_tail(
    topic: str, from_beginning: bool, max_records: int | None, idle_timeout: float | None, as_json: bool
) -> None:
    """Print a topic's records: TOPIC is a contract name (raw, clean, context, tags, aggregates,
    deviations, deadletter) or a full topic name. Every partition is read (no consumer group)."""
    import time

    import orjson
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    from plantstream.producers.jsonview import record_objects
    from plantstream.producers.kafka import make_consumer
    from plantstream.producers.topics import Topics

    s = Settings.from_env()
    t = Topics(s.topic_prefix, s.partitions)
    names = {"raw": t.raw, "clean": t.clean, "context": t.context, "tags": t.tags, "aggregates": t.aggregates}
    names |= {"deviations": t.deviations, "deadletter": t.deadletter}
    name = names.get(topic, topic)
    consumer = make_consumer(
        s.kafka_bootstrap,
        {"group.id": "plantstream-tail", "enable.auto.commit": False, "enable.partition.eof": False},
        security=s.kafka,
    )
    try:
        meta = consumer.list_topics(name, timeout=10).topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            raise click.BadParameter(f"no topic {name!r} on {s.kafka_bootstrap}", param_hint="TOPIC")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(name, p, start) for p in sorted(meta.partitions)])
        seen, last = 0, time.monotonic()
        while max_records is None or seen < max_records:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    break
                continue
            last = time.monotonic()
            seen += 1
            objs = record_objects(
                msg.value(),
                topic=name,
                partition=msg.partition() or 0,
                offset=msg.offset() or 0,
                key=msg.key(),
                headers=msg.headers(),
            )
            for o in objs:
                if as_json:
                    click.echo(orjson.dumps(o).decode())
                else:
                    what = o.get("tag") or o.get("lot") or o.get("error") or ""
                    click.echo(
                        f"{o['partition']}/{o['offset']} {o['key'] or '-'} {o['type']} {what} {o.get('value', '')}"
                    )
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
