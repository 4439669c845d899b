"""``plantstream monitor``: the live monitoring page and API for process engineers."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import click

from plantstream.config import Settings, is_loopback, layered
from plantstream.monitor.auth import MonitorConfig, load_config

log = logging.getLogger(__name__)


def check_listen(host: str, cfg: MonitorConfig) -> None:
    """Fail closed: without tokens every caller is anonymous, fine on this machine only."""
    if not cfg.tokens and not is_loopback(host):
        raise click.UsageError(
            f"refusing to listen on {host} without tokens: every caller would be anonymous. Configure tokens "
            "(--config tokens: or PLANTSTREAM_MONITOR_TOKENS) or listen on 127.0.0.1",
        )


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """A server TLS context (TLS 1.2+) from a PEM certificate chain and key; None without them."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise click.UsageError("--tls-cert and --tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot load the TLS certificate {cert} with key {key}: {exc}") from None
    return ctx


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
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None, help="PEM certificate (chain): serve HTTPS")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="PEM private key of --tls-cert")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="/metrics on this port too (over PLANTSTREAM_METRICS_PORT over config)",
)
def monitor(
    host: str,
    port: int,
    config_path: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    metrics_port: int | None,
) -> None:
    """Serve the live page, the JSON API (/openapi.json), server-sent events and /metrics.

    Reads PLANTSTREAM_DB_DSN, PLANTSTREAM_KAFKA_BOOTSTRAP and PLANTSTREAM_TOPIC_PREFIX. Starts
    without the database or the broker and catches up when they come (retrying with backoff).
    Refuses (exit 2) a non-loopback --host without tokens. HTTPS with --tls-cert and --tls-key.
    """
    from aiohttp import web

    from plantstream.monitor.web import K_METRICS, make_app

    settings = Settings.from_env()
    cfg = load_config(config_path)
    check_listen(host, cfg)
    ctx = tls_context(tls_cert, tls_key)
    # The console entry point hands over the datasets stage's pull engine (monitor and datasets
    # are sibling stages and never import each other).
    root = click.get_current_context().find_root().obj
    factory = root.get("pull_engine") if isinstance(root, dict) else None
    app = make_app(settings, cfg, engine=factory() if factory is not None else None)
    metrics_at = layered(cli=metrics_port, env=settings.metrics_port, file=cfg.metrics_port)
    if metrics_at is not None:
        # The stack-wide contract: every long-running process serves /metrics on this port too.
        from prometheus_client import start_http_server

        start_http_server(
            metrics_at,
            addr="0.0.0.0" if host == "0.0.0.0" else "127.0.0.1",
            registry=app[K_METRICS].registry,
        )
    log.info(
        "monitor starting",
        extra={
            "kv": {
                "url": f"{'https' if ctx else 'http'}://{host}:{port}/",
                "tokens": len(cfg.tokens),
                **settings.describe(),
            }
        },
    )
    # access_log=None: query strings may carry tokens, and per-request lines would drown the log
    # (the audit logger records every API call without them).
    web.run_app(app, host=host, port=port, access_log=None, print=None, shutdown_timeout=5.0, ssl_context=ctx)
