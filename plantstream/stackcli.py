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
