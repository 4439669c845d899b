"""``plantstream streams ...``: the stream-processing worker."""

from __future__ import annotations

from pathlib import Path

import click

from plantstream.config import Settings, layered


@click.group()
def streams() -> None:
    """Validate, normalize, deduplicate, lot-stamp and aggregate readings (raw -> clean/aggregates)."""


@streams.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML (see streams/streams.example.yaml); defaults apply without it",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Prometheus /metrics port (over PLANTSTREAM_METRICS_PORT over the config file)",
)
@click.option("--web-port", type=int, default=None, help="enable faust's web server on this port")
def worker(config_path: Path | None, metrics_port: int | None, web_port: int | None) -> None:
    """Run a worker until SIGINT/SIGTERM (reads PLANTSTREAM_* from the environment)."""
    from plantstream.streams.app import run_worker
    from plantstream.streams.config import load

    settings = Settings.from_env()
    cfg = load(config_path)
    port = layered(cli=metrics_port, env=settings.metrics_port, file=cfg.metrics_port)
    updates = {k: v for k, v in {"metrics_port": port, "web_port": web_port}.items() if v is not None}
    if updates:
        cfg = cfg.model_copy(update=updates)
    run_worker(settings, cfg)
