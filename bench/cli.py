"""``plantstream bench [--quick] [--out DIR]``: measure this machine's limits, every stage and the whole pipeline."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from plantstream.config import Settings

RESULTS = Path(__file__).resolve().parent / "results"


@click.command()
@click.option("--quick", is_flag=True, help="a minute-long smoke run of every measurement with small sizes")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="output directory (default bench/results/<timestamp>/; then also bench/results/latest.md|json)",
)
def bench(quick: bool, out: Path | None) -> None:
    """Benchmark: machine limits (PostgreSQL COPY, Kafka, MQTT, OPC-UA), each stage alone, end to end at
    stepped rates until lag grows without bound, and peak memory per process.

    Writes bench.json, bench.md and PNG plots. Targets are reported (pass/miss with the bounding
    stage), never enforced: the exit status is 0 unless the bench itself could not run.
    Uses PLANTSTREAM_* connection settings; creates and drops its own databases and topic prefixes.
    """
    from plantstream.bench.runner import run

    settings = Settings.from_env()
    out = out or RESULTS / datetime.now().strftime("%Y%m%d-%H%M%S")
    r = run(settings, out, quick)
    click.echo((out / "bench.md").read_text())
    click.echo(f"results in {out}")
    failed = [m.name for m in r.metrics if m.status == "failed"]
    if failed:
        click.echo(f"failed measurements: {', '.join(failed)}", err=True)
        sys.exit(1)
