"""``plantstream sim``: run a simulated plant, or inject a fault into a running one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from plantstream.config import ConfigError
from plantstream.sim.catalog import PLANTS
from plantstream.sim.engine import MQTT_PREFIX
from plantstream.sim.plants import DEFAULT_PORTS


@click.group()
def sim() -> None:
    """Simulated plants (steel, chemical, fiber) served over OPC-UA, MQTT and Kafka (MES)."""


def _plant_command(plant: str) -> click.Command:
    @click.command(
        name=plant, help=f"Serve the simulated {plant} plant (OPC-UA port {DEFAULT_PORTS[plant]} by default)."
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="same seed, same values and lots")
    @click.option("--speed", type=float, default=1.0, show_default=True,
                  help="sim seconds per wall second while fast-forwarding history (never past now)")  # fmt: skip
    @click.option("--rate", type=float, default=1.0, show_default=True, help="samples per second per tag")
    @click.option("--opcua-port", type=int, default=DEFAULT_PORTS[plant], show_default=True)
    @click.option("--mqtt-url", default=None, help="default: PLANTSTREAM_MQTT_URL; '' disables MQTT tags")
    @click.option("--mqtt-prefix", default=MQTT_PREFIX, show_default=True, help="first topic level")
    @click.option("--ledger", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="JSONL of every value and context event sent")  # fmt: skip
    @click.option("--duration", type=float, default=None, help="stop after this many seconds")
    @click.option("--backfill", type=float, default=None, metavar="SECONDS",
                  help="start the sim clock this many sim seconds before now  [default: (speed - 1) x duration, "
                       "so a fast run ends at the wall clock]")  # fmt: skip
    @click.option("--paused", is_flag=True, help="serve the first sample, then wait for `plantstream sim start`")
    @click.option("--no-mes", is_flag=True, help="do not publish lots, genealogy and lab results to Kafka")
    @click.option("--fault", "faults", multiple=True, metavar="TAG:KIND:SECONDS[@AT]",
                  help="inject a fault (stuck|spike|dropout|drift) AT seconds after start; repeatable")  # fmt: skip
    def run(seed: int, speed: float, rate: float, opcua_port: int, mqtt_url: str | None, mqtt_prefix: str,
            ledger: Path | None, duration: float | None, backfill: float | None, paused: bool, no_mes: bool,
            faults: tuple[str, ...]) -> None:  # fmt: skip
        from plantstream.sim.server import FaultRequest, SimOptions, serve

        try:
            requests = [FaultRequest.parse(f) for f in faults]
        except ValueError as exc:
            raise ConfigError(f"--fault: {exc}") from None
        opts = SimOptions(plant=plant, seed=seed, speed=speed, rate=rate, opcua_port=opcua_port, mqtt_url=mqtt_url,
                          mqtt_prefix=mqtt_prefix, ledger=ledger, duration_s=duration, backfill_s=backfill,
                          mes=not no_mes, paused=paused, faults=requests)  # fmt: skip
        _check_faults(opts)
        asyncio.run(serve(opts))

    return run


def _check_faults(opts: object) -> None:
    """Refuse bad --fault options before anything starts (ConfigError -> exit status 2)."""
    from plantstream.sim.plants import build
    from plantstream.sim.server import SimOptions

    assert isinstance(opts, SimOptions)
    opts.validate()
    model = build(opts.plant)
    for fr in opts.faults:
        try:
            model.add_fault(fr.tag, fr.kind, 0, fr.duration_s)
        except ValueError as exc:
            raise ConfigError(f"--fault {fr.tag}:{fr.kind}:{fr.duration_s}: {exc}") from None


for _p in PLANTS:
    sim.add_command(_plant_command(_p))


@sim.command()
@click.option("--endpoint", required=True, help="e.g. opc.tcp://127.0.0.1:4841/plantstream/steel")
@click.option("--plant", default=None, help="default: last path segment of the endpoint")
@click.option("--tag", required=True)
@click.option("--kind", type=click.Choice(["stuck", "spike", "dropout", "drift"]), required=True)
@click.option("--duration", type=float, default=10.0, show_default=True, help="seconds")
def fault(endpoint: str, plant: str | None, tag: str, kind: str, duration: float) -> None:
    """Inject a fault into a running simulator (calls its OPC-UA method InjectFault)."""
    from asyncua.ua.uaerrors._base import UaStatusCodeError

    from plantstream.sim.server import call_inject_fault

    try:
        result = asyncio.run(call_inject_fault(endpoint, plant, tag, kind, duration))
    except UaStatusCodeError as exc:
        raise click.ClickException(f"InjectFault refused: {exc} (unknown tag or kind?)") from None
    except (OSError, TimeoutError) as exc:
        raise click.ClickException(f"cannot reach {endpoint}: {exc}") from None
    click.echo(result)


@sim.command()
@click.option("--endpoint", required=True, help="e.g. opc.tcp://127.0.0.1:4841/plantstream/steel")
@click.option("--plant", default=None, help="default: last path segment of the endpoint")
def start(endpoint: str, plant: str | None) -> None:
    """Release a simulator started with --paused (calls its OPC-UA method Start)."""
    from plantstream.sim.server import call_start

    try:
        asyncio.run(call_start(endpoint, plant))
    except (OSError, TimeoutError) as exc:
        raise click.ClickException(f"cannot reach {endpoint}: {exc}") from None
    click.echo(f"released {endpoint}")
