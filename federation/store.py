"""The platform's own database: nodes, the products harvested from them (the JSON-LD entry as the
node gave it), members, usage metered per member, product and UTC day (free and paid apart),
refused requests, alerts, and the hash-chained audit log (``plantstream.audit``, table
``audit_log``: harvest, request, decision, download, alert).

Never node data: only catalog metadata and counters. Functions take a psycopg connection in
autocommit mode; each writes in its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from plantstream import audit
from plantstream.domain.catalog import Access, ProductEntry

from .config import PlatformConfig
from .logic import DayUsage

# Any fixed key, distinct from the audit chain's advisory lock.
_MIGRATE_LOCK = 0x706C6174666D  # 'platfm'

SCHEMA = """
CREATE TABLE IF NOT EXISTS platform_nodes (
    id text PRIMARY KEY,
    url text NOT NULL,
    title text NOT NULL DEFAULT '',
    last_attempt_at timestamptz,
    last_ok_at timestamptz,
    last_error text,
    failures integer NOT NULL DEFAULT 0,
    stale boolean NOT NULL DEFAULT true,
    entries integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS platform_products (
    node text NOT NULL REFERENCES platform_nodes(id) ON DELETE CASCADE,
    name text NOT NULL,
    version text NOT NULL,
    entry jsonb NOT NULL,
    grade text NOT NULL,
    access text NOT NULL,
    material_field text NOT NULL,
    harvested_at timestamptz NOT NULL,
    PRIMARY KEY (node, name, version)
);
CREATE TABLE IF NOT EXISTS platform_members (
    id text PRIMARY KEY,
    level text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS platform_usage (
    member text NOT NULL,
    node text NOT NULL,
    product text NOT NULL,
    version text NOT NULL,
    day date NOT NULL,
    charge text NOT NULL CHECK (charge IN ('free', 'paid')),
    downloads integer NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    cells bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (member, day, node, product, version, charge)
);
CREATE TABLE IF NOT EXISTS platform_denials (
    member text NOT NULL,
    at timestamptz NOT NULL,
    node text NOT NULL,
    product text NOT NULL,
    status integer NOT NULL,
    reason text NOT NULL
);
CREATE INDEX IF NOT EXISTS platform_denials_member_at ON platform_denials (member, at);
CREATE TABLE IF NOT EXISTS platform_alerts (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    member text NOT NULL,
    rule text NOT NULL,
    detail jsonb NOT NULL,
    audit_seq bigint NOT NULL
);
"""


def ensure_database(dsn: str) -> bool:
    """Create the DSN's database on its server if it is missing (tests, first start); True when
    created. Connects to the server's ``postgres`` database with the same credentials."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    name = str(params.get("dbname") or "")
    if not name:
        raise ValueError("database dsn: no database name")
    admin = make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created concurrently
    return True


def migrate(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        # One schema change at a time when several platform processes start together.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute(SCHEMA)
    audit.ensure(conn)


def sync_config(conn: psycopg.Connection[Any], cfg: PlatformConfig) -> None:
    """Nodes and members as configured (tokens and credentials are never stored). Nodes no longer
    configured are removed with their entries."""
    with conn.transaction():
        for n in cfg.nodes:
            conn.execute(
                "INSERT INTO platform_nodes (id, url, title) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET url = excluded.url, title = excluded.title",
                (n.id, n.url, n.title),
            )
        conn.execute("DELETE FROM platform_nodes WHERE NOT (id = ANY(%s))", ([n.id for n in cfg.nodes],))
        for m in cfg.members:
            conn.execute(
                "INSERT INTO platform_members (id, level) VALUES (%s, %s) "
                "ON CONFLICT (id) DO UPDATE SET level = excluded.level, updated_at = now() "
                "WHERE platform_members.level IS DISTINCT FROM excluded.level",
                (m.id, m.level),
            )


# --- harvest -----------------------------------------------------------------------------------


def record_harvest_ok(
    conn: psycopg.Connection[Any], node: str, docs: list[tuple[ProductEntry, dict[str, Any]]], at: datetime
) -> None:
    """Replace the node's entries with this catalog (the node is the authority on what it offers)."""
    with conn.transaction():
        conn.execute("DELETE FROM platform_products WHERE node = %s", (node,))
        for entry, doc in docs:
            conn.execute(
                "INSERT INTO platform_products (node, name, version, entry, grade, access, material_field, harvested_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    node,
                    entry.name,
                    entry.version,
                    Jsonb(doc),
                    entry.grade.value,
                    entry.access.value,
                    entry.material_field.value,
                    at,
                ),
            )
        conn.execute(
            "UPDATE platform_nodes SET last_attempt_at = %s, last_ok_at = %s, last_error = NULL, failures = 0,"
            " stale = false, entries = %s WHERE id = %s",
            (at, at, len(docs), node),
        )


def record_harvest_failed(conn: psycopg.Connection[Any], node: str, error: str, at: datetime) -> int:
    """Keep the node's last entries, marked stale; returns the consecutive failures so far."""
    row = conn.execute(
        "UPDATE platform_nodes SET last_attempt_at = %s, last_error = %s, failures = failures + 1, stale = true"
        " WHERE id = %s RETURNING failures",
        (at, error[:500], node),
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True)
class NodeState:
    id: str
    url: str
    last_attempt_at: datetime | None
    last_ok_at: datetime | None
    last_error: str | None
    failures: int
    stale: bool
    entries: int


def nodes(conn: psycopg.Connection[Any]) -> list[NodeState]:
    rows = conn.execute(
        "SELECT id, url, last_attempt_at, last_ok_at, last_error, failures, stale, entries FROM platform_nodes ORDER BY id"
    ).fetchall()
    return [NodeState(*r) for r in rows]


@dataclass(frozen=True, slots=True)
class Harvested:
    node: str
    entry: ProductEntry
    doc: dict[str, Any]
    harvested_at: datetime
    stale: bool


def _harvested(r: Any) -> Harvested | None:
    try:
        entry = ProductEntry.from_jsonld(r[1])
    except ValueError:
        return None  # validated at harvest; an entry edited in the database since is left out
    return Harvested(r[0], entry, r[1], r[2], bool(r[3]))


def products(conn: psycopg.Connection[Any]) -> list[Harvested]:
    rows = conn.execute(
        "SELECT p.node, p.entry, p.harvested_at, n.stale FROM platform_products p"
        " JOIN platform_nodes n ON n.id = p.node ORDER BY p.node, p.name, p.version"
    ).fetchall()
    return [h for h in (_harvested(r) for r in rows) if h is not None]


def product(conn: psycopg.Connection[Any], node: str, name: str, version: str) -> Harvested | None:
    r = conn.execute(
        "SELECT p.node, p.entry, p.harvested_at, n.stale FROM platform_products p"
        " JOIN platform_nodes n ON n.id = p.node WHERE p.node = %s AND p.name = %s AND p.version = %s",
        (node, name, version),
    ).fetchone()
    return _harvested(r) if r else None


# --- usage -------------------------------------------------------------------------------------


def charge_of(access: Access) -> str:
    return "paid" if access is Access.PAID else "free"


def day_usage(conn: psycopg.Connection[Any], member: str, day: date) -> DayUsage:
    rows = conn.execute(
        "SELECT node, product, version, sum(cells), sum(bytes) FROM platform_usage"
        " WHERE member = %s AND day = %s GROUP BY node, product, version",
        (member, day),
    ).fetchall()
    return DayUsage(
        products=frozenset(f"{r[0]}/{r[1]}@{r[2]}" for r in rows),
        cells=sum(int(r[3]) for r in rows),
        bytes=sum(int(r[4]) for r in rows),
    )


def meter(
    conn: psycopg.Connection[Any],
    member: str,
    node: str,
    entry: ProductEntry,
    day: date,
    nbytes: int,
    cells: int,
) -> None:
    """Count one download: its bytes always, the product's cells once per member, product and day."""
    conn.execute(
        "INSERT INTO platform_usage (member, node, product, version, day, charge, downloads, bytes, cells)"
        " VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s)"
        " ON CONFLICT (member, day, node, product, version, charge) DO UPDATE SET"
        " downloads = platform_usage.downloads + 1, bytes = platform_usage.bytes + excluded.bytes",
        (member, node, entry.name, entry.version, day, charge_of(entry.access), nbytes, cells),
    )


def daily_bytes(conn: psycopg.Connection[Any], member: str, before: date, days: int) -> list[int]:
    """The member's byte totals of its active days in ``[before - days, before)``."""
    rows = conn.execute(
        "SELECT day, sum(bytes) FROM platform_usage WHERE member = %s AND day < %s AND day >= %s GROUP BY day",
        (member, before, before - timedelta(days=days)),
    ).fetchall()
    return [int(r[1]) for r in rows]


@dataclass(frozen=True, slots=True)
class UsageRow:
    member: str
    day: date
    node: str
    product: str
    version: str
    charge: str
    downloads: int
    bytes: int
    cells: int


def usage(conn: psycopg.Connection[Any], member: str | None = None, day: date | None = None) -> list[UsageRow]:
    rows = conn.execute(
        "SELECT member, day, node, product, version, charge, downloads, bytes, cells FROM platform_usage"
        " WHERE (%(m)s::text IS NULL OR member = %(m)s) AND (%(d)s::date IS NULL OR day = %(d)s)"
        " ORDER BY member, day, node, product, version, charge",
        {"m": member, "d": day},
    ).fetchall()
    return [UsageRow(*r) for r in rows]


# --- refusals and alerts -----------------------------------------------------------------------


def record_denial(
    conn: psycopg.Connection[Any], member: str, at: datetime, node: str, product: str, status: int, reason: str
) -> None:
    conn.execute(
        "INSERT INTO platform_denials (member, at, node, product, status, reason) VALUES (%s, %s, %s, %s, %s, %s)",
        (member, at, node, product, status, reason[:500]),
    )


def denials_since(conn: psycopg.Connection[Any], member: str, since: datetime) -> list[datetime]:
    rows = conn.execute(
        "SELECT at FROM platform_denials WHERE member = %s AND at >= %s ORDER BY at", (member, since)
    ).fetchall()
    return [r[0] for r in rows]


def last_alert(conn: psycopg.Connection[Any], member: str, rule: str) -> datetime | None:
    r = conn.execute("SELECT max(at) FROM platform_alerts WHERE member = %s AND rule = %s", (member, rule)).fetchone()
    return r[0] if r else None


def record_alert(
    conn: psycopg.Connection[Any], member: str, rule: str, detail: dict[str, Any], at: datetime
) -> audit.AuditRecord:
    """The alert as an audit record (kind ``alert``) and a row pointing at it, in one transaction."""
    with conn.transaction():
        rec = audit.append(conn, "alert", "platform", f"member/{member}", {"rule": rule, **detail}, at=at)
        conn.execute(
            "INSERT INTO platform_alerts (at, member, rule, detail, audit_seq) VALUES (%s, %s, %s, %s, %s)",
            (at, member, rule, Jsonb(detail), rec.seq),
        )
    return rec


def alerts(conn: psycopg.Connection[Any], member: str | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT at, member, rule, detail, audit_seq FROM platform_alerts"
        " WHERE %(m)s::text IS NULL OR member = %(m)s ORDER BY id",
        {"m": member},
    ).fetchall()
    return [{"at": r[0], "member": r[1], "rule": r[2], "detail": r[3], "audit_seq": r[4]} for r in rows]


def now() -> datetime:
    return datetime.now(UTC)
