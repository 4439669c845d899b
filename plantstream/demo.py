"""``plantstream demo``: the local stack, three simulated plants, their edge agents, a streams
worker, the sink and the live page, with progress, stopping everything it started by itself."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

import click

from plantstream.config import Settings
from plantstream.contract import now_us
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


def newest_reading_us(dsn: str, plants: Sequence[str]) -> int | None:
    """Source time of the newest reading of ``plants`` in the database (None: none, or no schema yet)."""
    import psycopg

    # Per tag on the (tag_id, time) key: an index probe each, not a scan of every reading.
    sql = """SELECT (extract(epoch FROM max(x.m)) * 1000000)::bigint FROM tags t
             CROSS JOIN LATERAL (SELECT max(r.time) AS m FROM readings r WHERE r.tag_id = t.id) x
             WHERE t.plant = ANY(%s)"""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute(sql, (list(plants),)).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row and row[0] is not None else None


def demo_speed(speed: float, duration_s: float, now: int, newest_us: int | None) -> float:
    """The speed the demo's plants run at: ``speed``, or less if their history, ``(speed - 1) *
    duration`` sim seconds ending when the demo ends, would reach back into the readings an earlier
    run left in the database (those tags' windows are closed, so overlapping readings would all be
    late). Slowing down rather than shortening the backfill keeps every sample on schedule."""
    if newest_us is None or speed <= 1.0:
        return speed
    room_s = (now - newest_us) / 1e6 - 1.0
    return max(1.0, min(speed, 1.0 + room_s / duration_s))


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
    help="Plant seconds per wall-clock second while the plants fast-forward history that ends now "
    "(a heat takes 40 plant minutes).",
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
    names = tuple(plants.split(","))
    wall_us, newest = now_us(), newest_reading_us(settings.dsn, names)
    run_speed = demo_speed(speed, duration, wall_us, newest)
    if newest is not None and newest > wall_us:
        click.echo(
            f"demo: the database holds readings up to {(newest - wall_us) / 60e6:.0f} min in the future (written by "
            "an older simulator); new readings before then count as late"
        )
    elif run_speed < speed:
        click.echo(
            f"demo: an earlier run's readings end {(wall_us - (newest or wall_us)) / 60e6:.1f} min ago; running at "
            f"{run_speed:.3g}x instead of {speed:g}x, so this run's history starts after them"
        )
    if run_speed > 1.0:
        click.echo(
            f"demo: the plants fast-forward {(run_speed - 1.0) * duration / 60:.1f} min of history at {run_speed:.3g}x, "
            "ending now when the demo ends"
        )
    pipe = Pipeline(settings, run_dir, plants=names, seed=seed, speed=run_speed, rate=rate, faults=DEMO_FAULTS)

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
        # The plants' run ends with the demo's: their history then ends at the wall clock.
        pipe.start_all(sim_duration=duration, monitor_port=monitor_port if with_monitor else None)
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
