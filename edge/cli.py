"""``plantstream edge check|run|status --config FILE``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from plantstream.config import ConfigError, Settings, layered
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
@click.option(
    "--metrics-port", type=int, default=None, help="Prometheus /metrics (over PLANTSTREAM_METRICS_PORT over the file)"
)
def run(config_path: Path, metrics_port: int | None) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    cfg = _load(config_path)
    port = layered(cli=metrics_port, env=Settings.from_env().metrics_port, file=cfg.metrics_port)
    if port != cfg.metrics_port:
        cfg = cfg.model_copy(update={"metrics_port": port})
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
    se = b.get("storage_error")
    if se:
        click.echo(
            f"  STORAGE ERROR ({se.get('state')}) since {_age(se.get('since_us'))} ago, failing: "
            f"{', '.join(sorted(se.get('operations', {})))}; "
            + ("sources NOT acknowledged, " if not se.get("acknowledging") else "")
            + f"{b.get('held_readings', 0)} readings held in memory; error: {se.get('error')}"
        )
    k = st.get("kafka")
    if k:
        click.echo(
            f"  kafka {k.get('bootstrap')}: {'ok' if k.get('healthy') else 'FAILING'}, delivered "
            f"{k.get('delivered_readings')} readings, in flight {k.get('inflight')}"
            + (f", REFUSED {k['refused_entries']} entries (kept in the buffer)" if k.get("refused_entries") else "")
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


# --- OPC-UA certificates ---------------------------------------------------------------------------

_pki_opt = click.option(
    "--pki-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="default: $PLANTSTREAM_STATE_DIR/edge/pki (what security.pki_dir defaults to)",
)


def _pki(pki_dir: Path | None) -> Path:
    if pki_dir is not None:
        return pki_dir
    from plantstream.config import Settings
    from plantstream.edge.opcua.pki import default_pki_dir

    return default_pki_dir(Settings.from_env().state_dir)


@edge.group()
def certs() -> None:
    """OPC-UA client certificate and the trust list of server certificates."""


@certs.command("create")
@_pki_opt
@click.option("--uri", default=None, help="application URI (default urn:<host>:plantstream:edge)")
@click.option("--name", "cn", default="plantstream edge", show_default=True, help="certificate common name")
@click.option("--host", "hosts", multiple=True, help="DNS name for the certificate (repeatable; default this host)")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500))
@click.option("--force", is_flag=True, help="replace an existing certificate")
def certs_create(
    pki_dir: Path | None, uri: str | None, cn: str, hosts: tuple[str, ...], days: int, force: bool
) -> None:
    """Generate the agent's self-signed application certificate (RSA 2048, SHA-256)."""
    from plantstream.edge.opcua.pki import create_client_certificate, load_cert, thumbprint

    pki = _pki(pki_dir)
    try:
        cert, key = create_client_certificate(pki, uri, cn, days, list(hosts) or None, force)
    except FileExistsError as exc:
        click.echo(f"plantstream: {exc}", err=True)
        sys.exit(1)
    click.echo(f"certificate {cert}\nprivate key {key} (mode 0600)\nsha256 {thumbprint(load_cert(cert))}")
    click.echo("give the certificate to the OPC-UA server's administrator to trust it")


@certs.command("trust")
@_pki_opt
@click.argument("cert_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def certs_trust(pki_dir: Path | None, cert_file: Path) -> None:
    """Trust a server (or CA) certificate, DER or PEM (e.g. one from <pki>/rejected/)."""
    from plantstream.edge.opcua.pki import load_cert, thumbprint, trust

    try:
        stored = trust(_pki(pki_dir), cert_file)
    except ValueError as exc:
        click.echo(f"plantstream: {exc}", err=True)
        sys.exit(2)
    c = load_cert(stored)
    click.echo(f"trusted {c.subject.rfc4514_string()} sha256 {thumbprint(c)} -> {stored}")


@certs.command("list")
@_pki_opt
def certs_list(pki_dir: Path | None) -> None:
    """Own certificate, trusted and rejected server certificates."""
    from plantstream.edge.opcua.pki import list_certs

    pki = _pki(pki_dir)
    infos = list_certs(pki)
    if not infos:
        click.echo(f"{pki}: no certificates (plantstream edge certs create)")
        return
    for i in infos:
        flag = " EXPIRED" if i.expired else ""
        click.echo(
            f"{i.kind:8} {i.subject}  uri={i.uri or '-'}  until {i.not_after:%Y-%m-%d}{flag}  "
            f"sha256 {i.thumbprint[:16]}…  {i.path}"
        )


# --- OPC-UA browse ----------------------------------------------------------------------------------


@edge.command("browse")
@click.argument("endpoint")
@click.option("--depth", default=6, show_default=True, type=click.IntRange(1, 50), help="levels below Objects")
@click.option(
    "--node-class",
    "node_classes",
    multiple=True,
    type=click.Choice(["Variable"]),
    default=("Variable",),
    show_default=True,
    help="node classes that become tags",
)
@click.option("--name-filter", default=None, help="regular expression on browse names of variables")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="default: stdout")
@click.option("--plant", default="plant", show_default=True)
@click.option("--agent-id", default="edge-1", show_default=True)
@click.option("--source-id", default="opcua-1", show_default=True)
@click.option("--equipment-prefix", default="", help="ISA-95 levels above the server's object tree")
@click.option("--username", default=None)
@click.option("--password-env", default=None, help="environment variable holding the password (never a flag)")
@click.option(
    "--security-policy",
    "policy",
    type=click.Choice(["auto", "None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]),
    default="auto",
    show_default=True,
    help="auto: the strongest endpoint the server offers for this identity",
)
@click.option(
    "--security-mode",
    "sec_mode",
    type=click.Choice(["auto", "None", "Sign", "SignAndEncrypt"]),
    default="auto",
    show_default=True,
)
@click.option("--pki-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="default: the agent's")
@click.option("--trust-all-servers", is_flag=True, help="accept any server certificate (commissioning only)")
@click.option("--timeout", default=10.0, show_default=True, type=float)
def browse_cmd(
    endpoint: str,
    depth: int,
    node_classes: tuple[str, ...],
    name_filter: str | None,
    out: Path | None,
    plant: str,
    agent_id: str,
    source_id: str,
    equipment_prefix: str,
    username: str | None,
    password_env: str | None,
    policy: str,
    sec_mode: str,
    pki_dir: Path | None,
    trust_all_servers: bool,
    timeout: float,
) -> None:
    """Walk an OPC-UA server (with the same security as the agent: auto by default) and write a
    tag config the agent accepts as is, with the security it used."""
    import asyncio
    import os
    import re

    import yaml
    from asyncua.ua.uaerrors import UaError
    from pydantic import ValidationError

    from plantstream.config import Settings
    from plantstream.edge.config import OpcuaSecurity, dump_dict
    from plantstream.edge.opcua.browse import browse, to_config
    from plantstream.edge.opcua.secure import NoUsableEndpoint, secure

    if name_filter is not None:
        try:
            re.compile(name_filter)
        except re.error as exc:
            raise click.BadParameter(f"not a regular expression: {exc}", param_hint="--name-filter") from None
    password = os.environ.get(password_env, "") if password_env else None
    try:
        sec = OpcuaSecurity.model_validate(
            {"policy": policy, "mode": sec_mode, "pki_dir": pki_dir, "trust_all_servers": trust_all_servers}
        )
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"], param_hint="--security-policy/--security-mode") from None
    chosen: list[str] = []

    async def walk() -> Any:
        from asyncua.client.client import Client

        client = Client(endpoint, timeout=timeout)
        choice = await secure(client, sec, username, password, Settings.from_env().state_dir, endpoint)
        chosen.append(str(choice))
        click.echo(f"plantstream: browsing {endpoint} with security {choice}", err=True)
        async with client:
            return await browse(client, depth, name_filter, node_classes)

    try:
        result = asyncio.run(walk())
    except (OSError, TimeoutError, NoUsableEndpoint, UaError) as exc:
        click.echo(f"plantstream: cannot browse {endpoint}: {exc}", err=True)
        sys.exit(1)
    extra: dict[str, Any] = {"username": username} if username else {}
    if chosen and chosen[0] != "None":
        # The generated file pins what worked, so the agent does not depend on the server's ranking.
        pol, _, mod = chosen[0].partition("/")
        extra["security"] = {"policy": pol, "mode": mod, **({"pki_dir": str(pki_dir)} if pki_dir else {})}
    try:
        cfg = to_config(result, endpoint, plant, agent_id, source_id, equipment_prefix, extra)
    except ValueError as exc:
        click.echo(f"plantstream: {exc}", err=True)
        sys.exit(1)
    header = (
        f"# Generated by `plantstream edge browse {endpoint}`: {len(result.variables)} variables, "
        f"{len(result.skipped)} nodes skipped.\n# Review equipment paths, units and ranges; check with "
        "`plantstream edge check --config FILE`.\n"
    )
    text = header + yaml.safe_dump(dump_dict(cfg), sort_keys=False, allow_unicode=True)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        click.echo(f"{out}: {len(result.variables)} tags ({len(result.skipped)} nodes skipped)", err=True)
