"""``plantstream bench [--quick] [--out DIR]``: measure this machine's limits, every stage and the whole pipeline.

``plantstream bench --soak [--soak-minutes 10]``: the edge agent's memory soak alone (see soak.py).

``plantstream bench --fuzz [--fuzz-inputs 1000000]``: hostile inputs into every outward decoder (fuzz.py);
exit 1 when any crashed."""

from __future__ import annotations

import dataclasses
import shutil
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
@click.option(
    "--mqtt-per-message",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="readings per MQTT message (JSON array) in the MQTT edge stage; 1 per message is measured as well",
)
@click.option("--soak", is_flag=True, help="run only the edge memory soak (Kafka up, then down; bounded buffer)")
@click.option("--soak-minutes", type=click.FloatRange(1.0, 24 * 60), default=10.0, show_default=True)
@click.option("--fuzz", "fuzz_only", is_flag=True, help="run only the decoder fuzzing (no services needed)")
@click.option("--fuzz-inputs", type=click.IntRange(1000, 100_000_000), default=1_000_000, show_default=True)
@click.option("--chaos", "chaos_only", is_flag=True, help="run only the chaos run (faults, then the ledger check)")
@click.option("--chaos-minutes", type=click.FloatRange(1.0, 24 * 60), default=10.0, show_default=True)
@click.option("--chaos-seed", type=int, default=15, show_default=True, help="seed of the fault schedule")
def bench(
    quick: bool,
    out: Path | None,
    mqtt_per_message: int,
    soak: bool,
    soak_minutes: float,
    fuzz_only: bool,
    fuzz_inputs: int,
    chaos_only: bool,
    chaos_minutes: float,
    chaos_seed: int,
) -> None:
    """Benchmark: machine limits (PostgreSQL COPY, Kafka, MQTT, OPC-UA), each stage alone, end to end at
    stepped rates until lag grows without bound, and peak memory per process.

    Writes bench.json, bench.md and PNG plots. Targets are reported (pass/miss with the bounding
    stage), never enforced: the exit status is 0 unless the bench itself could not run.
    Uses PLANTSTREAM_* connection settings; creates and drops its own databases and topic prefixes.

    With --soak, only the memory soak runs: one edge agent process under steady OPC-UA + MQTT load,
    first half with Kafka reachable, second half unreachable so the buffer fills to its cap and drops
    oldest; writes soak.md, soak.json and soak.png (exit 0 whatever the verdict).

    With --chaos, only the chaos run: simulators and data loggers through the whole pipeline while a
    seeded schedule kills edges, the streams worker, the sink and the monitor, cuts Kafka, restarts
    PostgreSQL and sends hostile MQTT payloads; then the database is compared with the ledgers
    (chaos.md, chaos.json; exit 1 when readings were lost or duplicated, an aggregate disagrees with
    its readings or a hostile payload was not dead-lettered).
    """
    out = out or RESULTS / datetime.now().strftime("%Y%m%d-%H%M%S")
    if fuzz_only:
        from plantstream.bench import fuzz as fuzz_mod

        report = fuzz_mod.run_and_report(out, fuzz_inputs, progress=lambda line: click.echo(line, err=True))
        click.echo((out / "fuzz.md").read_text())
        click.echo(f"results in {out}")
        sys.exit(1 if report.crashes else 0)
    settings = Settings.from_env()
    if chaos_only:
        from plantstream.bench import chaos as chaos_mod

        cfg = chaos_mod.ChaosConfig(minutes=chaos_minutes, seed=chaos_seed)
        chaos_res = chaos_mod.run_and_report(settings, out, cfg, progress=lambda line: click.echo(line, err=True))
        click.echo((out / "chaos.md").read_text())
        click.echo(f"results in {out}")
        sys.exit(0 if chaos_res.ok else 1)
    if soak:
        from plantstream.bench import soak as soak_mod

        res = soak_mod.run_and_report(settings, out, soak_mod.SoakConfig(minutes=soak_minutes))
        click.echo((out / "soak.md").read_text())
        click.echo(f"results in {out}")
        if out.resolve().is_relative_to(RESULTS):
            shutil.copyfile(out / "soak.md", RESULTS / "latest-soak.md")
        if not res.samples:
            click.echo("soak took no samples", err=True)
            sys.exit(1)
        return
    from plantstream.bench.runner import FULL, QUICK, run

    sizes = dataclasses.replace(QUICK if quick else FULL, mqtt_per_message=mqtt_per_message)
    r = run(settings, out, quick, sizes)
    click.echo((out / "bench.md").read_text())
    click.echo(f"results in {out}")
    failed = [m.name for m in r.metrics if m.status == "failed"]
    if failed:
        click.echo(f"failed measurements: {', '.join(failed)}", err=True)
        sys.exit(1)
