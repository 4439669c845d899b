"""``plantstream demo``: the local stack, three simulated plants, their edge agents, a streams
worker, the sink and the live page, with progress, stopping everything it started by itself."""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

import click

from plantstream.config import Settings
from plantstream.pipeline import Pipeline
from plantstream.producers.topics import Topics
from plantstream.progress import consumer_lag, db_counts, ledger_lines
from plantstream.stack import Stack, StackError

# Excursions on spec-checked tags, so deviations show up on the live page while the demo runs.
# Wall seconds after start; at --speed 20 the first slab reaches the caster after 120 s, the
# first coil the mill after 270 s. Spec checks need a lot on the line, so faults come after that.
DEMO_FAULTS = {
    "steel": ["caster1.casting_speed:spike:20@150", "hsm1.finishing_exit_temperature:spike:15@285"],
    "chemical": ["reactor.temperature:spike:15@40", "reactor.pressure:drift:30@200"],
    "fiber": ["poy1.melt_temperature:spike:20@50", "cf1.oxidation_zone2_temperature:spike:20@100"],
}


@click.command()
@click.option(
    "--duration", type=float, default=300.0, show_default=True, help="Seconds to run before stopping everything."
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--speed",
    type=float,
    default=20.0,
    show_default=True,
    help="Plant seconds per wall-clock second (a heat takes 40 plant minutes).",
)
@click.option("--rate", type=float, default=4.0, show_default=True, help="Samples per second per tag.")
@click.option("--monitor-port", type=int, default=8765, show_default=True)
@click.option("--plants", default="steel,chemical,fiber", show_default=True)
def demo(duration: float, seed: int, speed: float, rate: float | None, monitor_port: int, plants: str) -> None:
    """Run the whole pipeline locally and show progress; Ctrl-C stops early."""
    stack = Stack()
    try:
        stack.up()
    except StackError as exc:
        click.echo(f"demo: the local stack did not start: {exc}", err=True)
        sys.exit(1)
    env = stack.env()
    settings = Settings.from_env({**env, "PLANTSTREAM_TOPIC_PREFIX": "plantstream"})
    run_dir = stack.state / "demo" / time.strftime("%Y%m%d-%H%M%S")
    pipe = Pipeline(
        settings, run_dir, plants=tuple(plants.split(",")), seed=seed, speed=speed, rate=rate, faults=DEMO_FAULTS
    )

    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    from plantstream.cli import LazyGroup

    with_monitor = LazyGroup._load("monitor") is not None
    click.echo(f"demo: logs and ledgers in {run_dir}")
    try:
        pipe.start_all(monitor_port=monitor_port if with_monitor else None)
        if with_monitor:
            click.echo(f"demo: live page at http://127.0.0.1:{monitor_port}/")
        click.echo(
            f"demo: database {settings.describe()['db']}  (psql \"$(plantstream stack env | sed -n 's/.*DSN=//p')\")"
        )
        topics = Topics(settings.topic_prefix, settings.partitions)
        t0 = time.monotonic()
        last_rows, last_t = 0, t0
        while not stopping and time.monotonic() - t0 < duration:
            time.sleep(min(5.0, max(0.1, duration - (time.monotonic() - t0))))
            pipe.check_alive()
            counts = db_counts(settings.dsn)
            lag = consumer_lag(settings.kafka_bootstrap, f"{settings.topic_prefix}-sink", [topics.clean])
            now = time.monotonic()
            rows = counts.get("readings", 0)
            rate_now = (rows - last_rows) / max(1e-9, now - last_t)
            last_rows, last_t = rows, now
            emitted = ledger_lines(pipe.ledger(p) for p in pipe.plants)
            click.echo(
                f"[{now - t0:6.0f}s] emitted {emitted:>9,}  rows {rows:>9,} ({rate_now:8,.0f}/s)  "
                f"1m-aggs {counts.get('aggregates_1m', 0):>7,}  lots {counts.get('lots', 0):>4}  "
                f"deviations {counts.get('deviations', 0):>4}  sink lag {lag if lag is not None else '?'}"
            )
    except (RuntimeError, ConnectionError) as exc:
        click.echo(f"demo: {exc}", err=True)
        pipe.stop()
        sys.exit(1)
    click.echo("demo: stopping")
    pipe.stop()
    click.echo("demo: done; data stays in the database; stop services with `plantstream stack down`")
