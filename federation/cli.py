"""``plantstream platform``: the platform of the "1+N" materials data program (serve, harvest, search, usage)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from datetime import date
from pathlib import Path
from typing import Any

import click

from plantstream.config import ConfigError, layered, mask_url

from .config import PlatformConfig, check_listen, load_config

log = logging.getLogger(__name__)
DSN_ENV = "PLANTSTREAM_PLATFORM_DSN"

config_option = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="platform YAML (see federation/platform.example.yaml)",
)
dsn_option = click.option(
    "--dsn",
    envvar=DSN_ENV,
    default=None,
    help=f"the platform database (over {DSN_ENV} over the config's database.dsn)",
)


def _dsn(cfg: PlatformConfig, cli_dsn: str | None) -> str:
    value = layered(cli=cli_dsn, file=cfg.database.dsn.get_secret_value())
    assert value is not None
    return value


def _connect(dsn: str) -> Any:
    import psycopg

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot connect to the platform database {mask_url(dsn)}: {exc}") from None


def _tls(cfg: PlatformConfig) -> ssl.SSLContext | None:
    if not cfg.listen.tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cfg.listen.tls_cert), str(cfg.listen.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load listen.tls_cert {cfg.listen.tls_cert} with listen.tls_key: {exc}") from None
    return ctx


@click.group("platform")
def platform() -> None:
    """The platform: harvests node catalogs, one search over all nodes, brokers members' downloads
    to the owning node with quotas, metering and a hash-chained audit (its own database)."""


@platform.command("serve")
@config_option
@dsn_option
@click.option("--host", default=None, help="over listen.host of the config")
@click.option("--port", type=int, default=None, help="over listen.port of the config")
@click.option(
    "--metrics-port", type=int, default=None, help="/metrics on this port too (over PLANTSTREAM_METRICS_PORT)"
)
@click.option("--create-database", is_flag=True, help="create the platform database first if it is missing")
def serve(
    config_path: Path,
    dsn: str | None,
    host: str | None,
    port: int | None,
    metrics_port: int | None,
    create_database: bool,
) -> None:
    """Serve the platform API (/api/search, /api/products/...), /metrics and /healthz, and harvest
    the nodes every harvest_interval_s. Refuses (exit 2) a non-loopback address without TLS."""
    import os

    from aiohttp import web

    from . import store
    from .web import K_METRICS, make_app

    cfg = load_config(config_path)
    h = host or cfg.listen.host
    p = port if port is not None else cfg.listen.port
    check_listen(cfg, config_path, h)
    ctx = _tls(cfg)
    url = _dsn(cfg, dsn)
    if create_database:
        store.ensure_database(url)
    app = make_app(cfg, url)
    env_port = os.environ.get("PLANTSTREAM_METRICS_PORT")
    metrics_at = layered(cli=metrics_port, env=int(env_port) if env_port else None, file=cfg.metrics_port)
    if metrics_at is not None:
        from prometheus_client import start_http_server

        start_http_server(
            metrics_at, addr="0.0.0.0" if h == "0.0.0.0" else "127.0.0.1", registry=app[K_METRICS].registry
        )
    log.info("platform starting", extra={"kv": {**cfg.describe(), "db": mask_url(url), "listen": f"{h}:{p}"}})
    web.run_app(app, host=h, port=p, access_log=None, print=None, shutdown_timeout=5.0, ssl_context=ctx)


@platform.command("harvest")
@config_option
@dsn_option
@click.option("--node", "node_id", default=None, help="only this node")
@click.option("--json", "as_json", is_flag=True, help="results as JSON")
def harvest(config_path: Path, dsn: str | None, node_id: str | None, as_json: bool) -> None:
    """Harvest the nodes' catalogs now. Exits 1 when a node could not be harvested."""
    from . import store
    from .db import Db
    from .harvest import harvest_all

    cfg = load_config(config_path)
    if node_id is not None and cfg.node(node_id) is None:
        raise click.BadParameter(
            f"{node_id!r} is not a configured node ({', '.join(n.id for n in cfg.nodes)})", param_hint="--node"
        )
    db = Db(_dsn(cfg, dsn), 2)
    try:
        db.open(timeout=15)
    except Exception as exc:
        raise click.ClickException(f"cannot connect to the platform database: {type(exc).__name__}") from None
    try:
        db.call(store.migrate)
        db.call(store.sync_config, cfg)
        results = asyncio.run(harvest_all(cfg, db, node_id))
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([_res(r) for r in results]))
    else:
        for r in results:
            click.echo(
                f"{r.node}: {'ok, ' + str(r.entries) + ' entries' if r.ok else 'FAILED: ' + str(r.error)}  (audit {r.audit_ref[:20]})"
            )
    if not all(r.ok for r in results):
        raise SystemExit(1)


def _res(r: Any) -> dict[str, Any]:
    return {"node": r.node, "ok": r.ok, "entries": r.entries, "error": r.error, "audit": r.audit_ref}


@platform.command("search")
@config_option
@dsn_option
@click.option("--material-field", default=None)
@click.option("--spec", default=None)
@click.option("--grade", default=None)
@click.option("--property", "prop", default=None, help="standard property id")
@click.option("--start", default=None, help="ISO time: products overlapping [start, end]")
@click.option("--end", default=None)
@click.option("--access", default=None, help="free, member or paid")
@click.option("--text", "q", default=None, help="in name, title, description, plant, spec")
@click.option("--node", default=None)
@click.option("--json", "as_json", is_flag=True)
def search(config_path: Path, dsn: str | None, as_json: bool, **filters: str | None) -> None:
    """Search the harvested catalogs of every node."""
    from . import logic, store

    cfg = load_config(config_path)
    names = {"material_field": "material_field", "prop": "property", "q": "q"}
    params = {names.get(k, k): v for k, v in filters.items() if v is not None}
    try:
        f = logic.SearchFilter.parse(params)
    except logic.FilterError as exc:
        opt = {"property": "--property", "q": "--text"}.get(exc.param, "--" + exc.param.replace("_", "-"))
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint=opt) from None
    with _connect(_dsn(cfg, dsn)) as conn:
        store.migrate(conn)
        rows = store.products(conn)
    by_key = {(h.node, h.entry.name, h.entry.version): h for h in rows}
    hits = [by_key[(n, e.name, e.version)] for n, e in logic.search(((h.node, h.entry) for h in rows), f)]
    if as_json:
        click.echo(
            json.dumps(
                [{"node": h.node, "stale": h.stale, **h.entry.model_dump(mode="json", exclude={"files"})} for h in hits]
            )
        )
        return
    for h in hits:
        e = h.entry
        click.echo(
            f"{h.node}/{e.name}@{e.version}  {e.material_field.value}  grade={e.grade.value}  access={e.access.value}  "
            f"{e.temporal_start}..{e.temporal_end}  {e.title}{'  (stale)' if h.stale else ''}"
        )
    click.echo(f"{len(hits)} products")


@platform.command("usage")
@config_option
@dsn_option
@click.option("--member", default=None)
@click.option("--day", default=None, help="YYYY-MM-DD (UTC); default: every day")
@click.option("--json", "as_json", is_flag=True)
def usage(config_path: Path, dsn: str | None, member: str | None, day: str | None, as_json: bool) -> None:
    """Usage per member, day and product, free and paid apart, against the member's quotas."""
    from . import store

    cfg = load_config(config_path)
    d: date | None = None
    if day is not None:
        try:
            d = date.fromisoformat(day)
        except ValueError:
            raise click.BadParameter(f"{day!r} is not YYYY-MM-DD", param_hint="--day") from None
    if member is not None and member not in {m.id for m in cfg.members}:
        raise click.BadParameter(f"{member!r} is not a configured member", param_hint="--member")
    with _connect(_dsn(cfg, dsn)) as conn:
        store.migrate(conn)
        rows = store.usage(conn, member, d)
    report = usage_report(cfg, rows)
    if as_json:
        click.echo(json.dumps(report, default=str))
        return
    for m in report:
        for dd in m["days"]:
            q = m["quotas"]
            click.echo(
                f"{m['member']} ({m['level']}) {dd['day']}: products {dd['products']}/{q['products_per_day']}  "
                f"cells {dd['cells']}/{q['cells_per_day']}  bytes {dd['bytes']}/{q['bytes_per_day']}  "
                f"(free {dd['free']['bytes']} B, paid {dd['paid']['bytes']} B)"
            )
            for p in dd["by_product"]:
                click.echo(
                    f"    {p['node']}/{p['product']}@{p['version']}  {p['charge']}  downloads {p['downloads']}  "
                    f"bytes {p['bytes']}  cells {p['cells']}"
                )


def usage_report(cfg: PlatformConfig, rows: list[Any]) -> list[dict[str, Any]]:
    """Per member and day: totals against the level's quotas, free and paid apart, and per product."""
    levels = {m.id: m.level for m in cfg.members}
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        level = levels.get(r.member)
        q = cfg.levels[level].quotas.model_dump() if level in cfg.levels else {}
        m = out.setdefault(r.member, {"member": r.member, "level": level, "quotas": q, "days": {}})
        d = m["days"].setdefault(
            str(r.day),
            {
                "day": str(r.day),
                "products": 0,
                "cells": 0,
                "bytes": 0,
                "free": {"downloads": 0, "bytes": 0, "cells": 0},
                "paid": {"downloads": 0, "bytes": 0, "cells": 0},
                "by_product": [],
                "_seen": set(),
            },
        )
        key = f"{r.node}/{r.product}@{r.version}"
        if key not in d["_seen"]:
            d["_seen"].add(key)
            d["products"] += 1
        d["cells"] += r.cells
        d["bytes"] += r.bytes
        for k in ("downloads", "bytes", "cells"):
            d[r.charge][k] += getattr(r, k)
        d["by_product"].append(
            {
                "node": r.node,
                "product": r.product,
                "version": r.version,
                "charge": r.charge,
                "downloads": r.downloads,
                "bytes": r.bytes,
                "cells": r.cells,
            }
        )
    result = []
    for m in out.values():
        days = []
        for d in m["days"].values():
            d.pop("_seen")
            days.append(d)
        m["days"] = days
        result.append(m)
    return result
