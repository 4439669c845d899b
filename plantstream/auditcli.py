"""``plantstream audit``: check a node's or the platform's hash-chained audit log."""

from __future__ import annotations

import json
import sys

import click
import psycopg

from plantstream import audit
from plantstream.config import Settings, mask_url


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log (node and platform keep one each)."""


@audit_group.command("verify")
@click.option("--dsn", default=None, help="database holding the log (default: the node's PLANTSTREAM_DB_DSN)")
@click.option("--table", default="audit_log", show_default=True)
@click.option(
    "--expect-head", default=None, help="'<seq>:<hash>' the other side recorded: also proves nothing was cut off"
)
@click.option("--json", "as_json", is_flag=True, help="print the verdict as JSON")
def verify(dsn: str | None, table: str, expect_head: str | None, as_json: bool) -> None:
    """Walk the chain; exit 0 when intact, 1 naming the first altered or missing record."""
    target = dsn or Settings.from_env().dsn
    try:
        with psycopg.connect(target, connect_timeout=10) as conn:
            v = audit.verify(conn, table, expect_head=expect_head)
    except audit.AuditError as exc:
        raise click.UsageError(str(exc)) from exc
    except psycopg.errors.UndefinedTable as exc:
        click.echo(f"{mask_url(target)}: no audit table {table!r}", err=True)
        raise SystemExit(2) from exc
    except psycopg.OperationalError as exc:
        click.echo(f"{mask_url(target)}: cannot connect ({type(exc).__name__})", err=True)
        raise SystemExit(2) from exc
    if as_json:
        click.echo(
            json.dumps({"ok": v.ok, "records": v.records, "first_bad": v.first_bad, "reason": v.reason, "head": v.head})
        )
    elif v.ok:
        click.echo(f"intact: {v.records} records, head {v.head}")
    else:
        click.echo(f"BROKEN at record {v.first_bad}: {v.reason} ({v.records} records verified before it)", err=True)
    sys.exit(0 if v.ok else 1)
