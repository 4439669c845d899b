"""``plantstream monitor``: the live monitoring page and API for process engineers."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from plantstream.config import Settings
from plantstream.monitor.auth import load_config

log = logging.getLogger(__name__)


@click.command("monitor")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8765, show_default=True, type=int)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML with tokens and tuning (see monitor.example.yaml); tokens also from PLANTSTREAM_MONITOR_TOKENS",
)
def monitor(host: str, port: int, config_path: Path | None) -> None:
    """Serve the live page, the JSON API (/openapi.json), server-sent events and /metrics.

    Reads PLANTSTREAM_DB_DSN, PLANTSTREAM_KAFKA_BOOTSTRAP and PLANTSTREAM_TOPIC_PREFIX. Starts
    without the database or the broker and catches up when they come (retrying with backoff).
    """
    from aiohttp import web

    from plantstream.monitor.web import K_METRICS, make_app

    settings = Settings.from_env()
    cfg = load_config(config_path)
    app = make_app(settings, cfg)
    if settings.metrics_port:
        # The stack-wide contract: every long-running process serves /metrics on this port too.
        from prometheus_client import start_http_server

        start_http_server(
            settings.metrics_port,
            addr="0.0.0.0" if host == "0.0.0.0" else "127.0.0.1",
            registry=app[K_METRICS].registry,
        )
    log.info(
        "monitor starting",
        extra={"kv": {"url": f"http://{host}:{port}/", "tokens": len(cfg.tokens), **settings.describe()}},
    )
    # access_log=None: query strings may carry tokens, and per-request lines would drown the log.
    web.run_app(app, host=host, port=port, access_log=None, print=None, shutdown_timeout=5.0)
