"""``plantstream sink ...`` (run the PostgreSQL/TimescaleDB sink) and ``plantstream db ...`` (schema)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click
import psycopg

from plantstream.config import ConfigError, Settings, layered, load_yaml, mask_url
from plantstream.contract import Grade

log = logging.getLogger(__name__)


@click.group()
def sink() -> None:
    """Kafka -> PostgreSQL/TimescaleDB sink."""


@sink.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="sink YAML config")
@click.option("--no-migrate", is_flag=True, help="refuse to start if migrations are pending (instead of applying them)")
@click.option("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on 127.0.0.1:PORT")
@click.option("--static-assignment", is_flag=True, help="assign all partitions without a consumer group join")
def run(config_path: Path | None, no_migrate: bool, metrics_port: int | None, static_assignment: bool) -> None:
    """Consume clean readings, aggregates, context, tags and deviations into the database."""
    from plantstream.sinks.runner import SinkConfig, SinkRunner
    from plantstream.sinks.timescaledb.migrate import MigrationError, migrate, require_current

    settings = Settings.from_env()
    cfg = load_yaml(config_path, SinkConfig) if config_path else SinkConfig()
    updates: dict[str, object] = {}
    if no_migrate:
        updates["migrate"] = False
    if static_assignment:
        updates["static_assignment"] = True
    port = layered(cli=metrics_port, env=settings.metrics_port, file=cfg.metrics_port)
    if port is not None:
        updates["metrics_port"] = port
    cfg = cfg.model_copy(update=updates)
    runner = SinkRunner(settings, cfg)
    runner.install_signal_handlers()
    # Wait for the database (a sink usually starts with its stack); schema problems are fatal.
    delay = 0.5
    while True:
        try:
            if cfg.migrate:
                applied = migrate(settings.dsn)
                if applied:
                    log.info("migrations applied", extra={"kv": {"versions": [m.version for m in applied]}})
            else:
                with psycopg.connect(settings.dsn, connect_timeout=5) as conn:
                    require_current(conn)
            break
        except MigrationError as exc:
            raise ConfigError(f"database {mask_url(settings.dsn)}: {exc}") from None
        except psycopg.OperationalError as exc:
            log.warning(
                "database unreachable, retrying", extra={"kv": {"error": str(exc).splitlines()[0], "retry_in_s": delay}}
            )
            time.sleep(delay)
            delay = min(delay * 2, 15)
    runner.run()


@click.group()
def db() -> None:
    """Database schema: migrations and status."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (in order, each in a transaction) and seed material specs."""
    from plantstream.sinks.timescaledb.migrate import MigrationError, migrate

    settings = Settings.from_env()
    try:
        applied = migrate(settings.dsn)
    except MigrationError as exc:
        raise ConfigError(str(exc)) from None
    except psycopg.OperationalError as exc:
        click.echo(f"plantstream: database {mask_url(settings.dsn)} unreachable: {exc}", err=True)
        sys.exit(1)
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("up to date")


@db.command("status")
def db_status() -> None:
    """Storage path, applied and pending migrations; exit 1 if not up to date."""
    from plantstream.sinks.timescaledb.migrate import MigrationError, status

    settings = Settings.from_env()
    try:
        with psycopg.connect(settings.dsn, connect_timeout=5) as conn:
            st = status(conn)
    except MigrationError as exc:
        raise ConfigError(str(exc)) from None
    except psycopg.OperationalError as exc:
        click.echo(f"plantstream: database {mask_url(settings.dsn)} unreachable: {exc}", err=True)
        sys.exit(1)
    click.echo(f"storage: {st.flavor or 'not migrated'} (available here: {st.available_flavor})")
    for a in st.applied:
        mark = "CHANGED" if a.version in st.changed else "applied"
        click.echo(f"{a.version:04d}_{a.name:<24} {mark:<8} {a.applied_at}  sha256:{a.checksum[:12]}")
    for m in st.pending:
        click.echo(f"{m.version:04d}_{m.name:<24} pending")
    if not st.up_to_date:
        sys.exit(1)


@db.command("tag-grade")
@click.argument("plant")
@click.argument("tag")
@click.argument("grade", type=click.Choice([g.value for g in Grade]))
@click.option("--by", "by", required=True, help="The owner making the change (recorded; never a token).")
@click.option("--reason", default="", help="Why (recorded with the change).")
def db_tag_grade(plant: str, tag: str, grade: str, by: str, reason: str) -> None:
    """Set a tag's data grade as its owner. The tags topic may raise a grade but never lower it;
    lowering is done here, and every change is recorded in tag_grade_changes."""
    from plantstream.sinks.timescaledb.grades import GradeError, set_tag_grade
    from plantstream.sinks.timescaledb.migrate import MigrationError, require_current

    settings = Settings.from_env()
    try:
        with psycopg.connect(settings.dsn, connect_timeout=5) as conn:
            require_current(conn)
            change = set_tag_grade(conn, plant, tag, Grade(grade), by, reason)
    except (GradeError, MigrationError) as exc:
        raise ConfigError(str(exc)) from None
    except psycopg.OperationalError as exc:
        click.echo(f"plantstream: database {mask_url(settings.dsn)} unreachable: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{plant}/{tag}: {change.old.value} -> {change.new.value} (by {change.by})")


@db.command("maintain")
def db_maintain() -> None:
    """Create partitions ahead, hand finished days back to autovacuum and apply retention (plain path;
    TimescaleDB's jobs do this there)."""
    from plantstream.sinks.timescaledb.sink import PostgresSink

    s = PostgresSink(Settings.from_env().dsn)
    s.connect()
    s.maintain()
    s.close()
    click.echo("done")
