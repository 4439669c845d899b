"""``plantstream edge check|run|status --config FILE``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from plantstream.config import ConfigError
from plantstream.edge.config import EdgeConfig, load_config

_config_opt = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="agent YAML"
)


def _load(path: Path) -> EdgeConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"plantstream: configuration error:\n{exc}", err=True)
        sys.exit(ConfigError.exit_code)


@click.group()
def edge() -> None:
    """Edge agent: OPC-UA and MQTT sources -> durable buffer -> Kafka."""


@edge.command()
@_config_opt
def check(config_path: Path) -> None:
    """Validate a config without connecting to anything (exit 2 on error, naming file:line and key)."""
    cfg = _load(config_path)
    tags = sum(len(s.tags) for s in cfg.sources)
    kinds = ", ".join(f"{s.id} ({s.type})" for s in cfg.sources)
    click.echo(f"{config_path}: ok - agent {cfg.agent_id}, plant {cfg.plant}, sources: {kinds}; {tags} configured tags")


@edge.command()
@_config_opt
def run(config_path: Path) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    cfg = _load(config_path)
    from plantstream.edge.agent import run_agent

    run_agent(cfg)


def _age(us: int | None) -> str:
    if not us:
        return "-"
    s = max(0.0, time.time() - us / 1e6)
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}min" if s < 7200 else f"{s / 3600:.1f}h"


@edge.command()
@_config_opt
@click.option("--json", "as_json", is_flag=True, help="machine-readable")
def status(config_path: Path, as_json: bool) -> None:
    """What the agent is doing, read from its buffer and status file (works while it runs)."""
    cfg = _load(config_path)
    from plantstream.edge.agent import read_status

    st = read_status(cfg)
    if st is None:
        click.echo(f"agent {cfg.agent_id}: no buffer or status file yet (never started?)")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(st, indent=1, default=str))
        return
    state = "running" if st.get("running") else "stopped"
    click.echo(
        f"agent {st.get('agent_id')} (plant {st.get('plant')}): {state}, status updated {_age(st.get('updated_us'))} ago"
    )
    b = st.get("buffer", {})
    click.echo(
        f"  buffer: {b.get('readings', 0)} readings in {b.get('entries', 0)} messages, {b.get('bytes', 0)} bytes, "
        f"oldest {_age(b.get('oldest_created_us'))}; dropped {b.get('dropped') or 0}"
    )
    k = st.get("kafka")
    if k:
        click.echo(
            f"  kafka {k.get('bootstrap')}: {'ok' if k.get('healthy') else 'FAILING'}, delivered "
            f"{k.get('delivered_readings')} readings, in flight {k.get('inflight')}"
            + (f", last error: {k['last_error']}" if k.get("last_error") else "")
        )
    for s in st.get("sources", []):
        click.echo(
            f"  source {s['id']} ({s['kind']} {s['endpoint']}): {'connected' if s.get('connected') else 'DISCONNECTED'}, "
            f"in {s.get('readings_in', 0)}, out {s.get('readings_out', 0)}, bad quality {s.get('bad_quality', 0)}, "
            f"dead letters {s.get('deadletters', 0)}, reconnects {s.get('reconnects', 0)}, "
            f"last reading {_age(s.get('last_reading_us'))} ago"
        )
        if s.get("last_error"):
            click.echo(f"    last error: {s['last_error']}")
        for what, why in sorted(s.get("failing", {}).items()):
            click.echo(f"    failing: {what}: {why}")
