"""Dataset products served by the node's monitor (issue 18): who is asking, what they may see and
use, and where a product's files are. The HTTP handlers (``web``) stay thin around these.

Contract:

* The caller's tier is the token's. A platform credential (``TokenSpec.platform``) may speak for a
  member with the headers of ``plantstream.domain.catalog`` (member id, the member's tier, its
  access levels); the effective tier is the lower of the token's and the asserted one. A token
  that is not a platform credential sending those headers is refused (400): it fails closed
  instead of being silently served as itself.
* Which products a tier sees is decided by the database: ``ds_products`` (migration 0012) read
  under ``SET LOCAL ROLE <tier role>`` shows a product only when its grade and every tag it was
  pulled from are readable by that role, exactly as a pull's rows are filtered.
* A decision, in order: the product exists (404), the tier may read it in the database (403; a
  core-grade product answers a non-owner like an absent one, 404), the product's access level is
  one the caller may use (403, downloads only), the file is in the product's manifest and inside
  the products directory (404). The reason is named in the answer.
* This module reads the products table with SQL only: the monitor -> datasets crossing stays as
  narrow as the import-linter contract lists it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import ValidationError

from plantstream.access import DB_ROLE, Tier
from plantstream.contract import Grade
from plantstream.domain.catalog import (
    ACCESS_HEADER,
    MEMBER_HEADER,
    NAME_RE,
    TIER_HEADER,
    Access,
    FileEntry,
    ProductEntry,
    SemVer,
    parse_access,
)
from plantstream.monitor.auth import Identity

log = logging.getLogger(__name__)

PRODUCTS_ENV = "PLANTSTREAM_PRODUCTS_DIR"  # the same variable `plantstream dataset publish` reads
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")
_RANK = {Tier.PUBLIC: 0, Tier.MEMBER: 1, Tier.OWNER: 2}
DEFAULT_ACCESS: dict[Tier, frozenset[Access]] = {
    Tier.OWNER: frozenset(Access),
    Tier.MEMBER: frozenset({Access.FREE, Access.MEMBER}),
    Tier.PUBLIC: frozenset({Access.FREE}),
}
MEDIA_TYPES = {
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/ld+json",
    ".md": "text/markdown; charset=utf-8",
}
QUALITY_MEDIA = "application/json"


class HeaderError(ValueError):
    """A member header the caller may not send, or one that is malformed (400, naming the header)."""

    def __init__(self, header: str, why: str) -> None:
        super().__init__(f"header {header}: {why}")
        self.header = header


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a product request is for, after the platform's assertions are applied."""

    who: Identity
    tier: Tier
    access: frozenset[Access]
    member: str | None = None  # the member a platform speaks for

    @property
    def actor(self) -> str:
        return f"{self.who.name}/{self.member}" if self.member else self.who.name

    def describe(self) -> dict[str, Any]:
        return {
            "token": self.who.name,
            "token_tier": self.who.tier.value,
            "platform": self.who.platform,
            "member": self.member,
            "tier": self.tier.value,
            "access": sorted(a.value for a in self.access),
        }


def caller_of(who: Identity, headers: Mapping[str, str]) -> Caller:
    """The caller of a product request; HeaderError for member headers it may not or did not
    properly send."""
    given = {h: headers.get(h) for h in (MEMBER_HEADER, TIER_HEADER, ACCESS_HEADER)}
    if not who.platform:
        for h, v in given.items():
            if v is not None:
                raise HeaderError(h, "only a platform credential may speak for a member; this token is not one")
        return Caller(who, who.tier, DEFAULT_ACCESS[who.tier])
    if all(v is None for v in given.values()):
        return Caller(who, who.tier, DEFAULT_ACCESS[who.tier])  # the platform itself (harvesting)
    for h, v in given.items():
        if v is None:
            raise HeaderError(h, f"is required with {', '.join(k for k, x in given.items() if x is not None)}")
    member, tier_text, access_text = (str(given[h]).strip() for h in (MEMBER_HEADER, TIER_HEADER, ACCESS_HEADER))
    if not _MEMBER.match(member):
        raise HeaderError(MEMBER_HEADER, "1-128 letters, digits, '_', '.', '@', ':' or '-'")
    if tier_text not in (Tier.PUBLIC.value, Tier.MEMBER.value):
        raise HeaderError(TIER_HEADER, f"{tier_text[:32]!r} is not public or member")
    try:
        access = parse_access(access_text)
    except ValueError as exc:
        raise HeaderError(ACCESS_HEADER, str(exc)) from None
    asserted = Tier(tier_text)
    # Never above the credential's own tier, whatever the platform asserts.
    tier = asserted if _RANK[asserted] <= _RANK[who.tier] else who.tier
    return Caller(who, tier, access, member)


def valid_key(name: str, version: str) -> bool:
    """Could ``name``/``version`` name a product at all (checked before any query)?"""
    if not NAME_RE.match(name):
        return False
    try:
        return str(SemVer.parse(version)) == version
    except ValueError:
        return False


# --- the database ----------------------------------------------------------------------------------

_ENTRY_COLS = (
    "p.id, p.name, p.version, p.title, p.description, p.field, p.grade, p.access, p.license, p.plant, p.spec, "
    "p.snapshot, p.files, p.standard_properties, p.rows, p.bytes, p.temporal_start, p.temporal_end, p.published_at"
)


class SchemaMissing(RuntimeError):
    """The database has no products table yet (migration 0012 not applied)."""


def _iso(dt: Any) -> str:
    return str(dt.isoformat().replace("+00:00", "Z"))


def _media(path: str) -> str:
    if path == "quality.json":
        return QUALITY_MEDIA
    return MEDIA_TYPES.get(Path(path).suffix, "application/octet-stream")


def entry_of(row: Any) -> ProductEntry:
    files = [
        FileEntry(path=f["path"], bytes=int(f["bytes"]), sha256=f["sha256"], media_type=_media(f["path"]))
        for f in row[12]
    ]
    return ProductEntry(
        name=row[1],
        version=row[2],
        title=row[3],
        description=row[4],
        material_field=row[5],
        grade=row[6],
        access=row[7],
        license=row[8],
        plant=row[9],
        spec=row[10],
        standard_properties=list(row[13] or []),
        temporal_start=_iso(row[16]),
        temporal_end=_iso(row[17]),
        rows=int(row[14]),
        bytes=int(row[15]),
        snapshot=row[11],
        published_at=_iso(row[18]),
        files=files,
    )


def _as_tier(conn: psycopg.Connection[Any], tier: Tier) -> None:
    # LOCAL: the role ends with the transaction, so a pooled connection never keeps it.
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(DB_ROLE[tier])))


def _schema(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT to_regclass('ds_products') IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise SchemaMissing("the database has no dataset products (migration 0012): run `plantstream db migrate`")


def visible(conn: psycopg.Connection[Any], tier: Tier) -> list[ProductEntry]:
    """The products ``tier`` may read, as the database decides under the tier's role."""
    with conn.transaction():
        _schema(conn)
        _as_tier(conn, tier)
        rows = conn.execute(f"SELECT {_ENTRY_COLS} FROM ds_products p ORDER BY p.name, p.id").fetchall()
    entries = []
    for r in rows:
        try:
            entries.append(entry_of(r))
        except ValidationError as exc:
            # One record the shared vocabulary cannot express must not take the catalog down.
            log.warning(
                "product left out of the catalog",
                extra={"kv": {"product": f"{r[1]}@{r[2]}", "error": str(exc.errors()[0]["msg"])}},
            )
    return sorted(entries, key=lambda e: (e.name, SemVer.parse(e.version)))


@dataclass(frozen=True, slots=True)
class Found:
    entry: ProductEntry
    location: Path
    readable: bool  # by the caller's tier role, in the database


def find(conn: psycopg.Connection[Any], tier: Tier, name: str, version: str) -> Found | None:
    """The product (read as the monitor's login) and whether ``tier``'s role may read it (asked of
    ``ds_products`` under that role, in the same transaction)."""
    with conn.transaction():
        _schema(conn)
        row = conn.execute(
            f"SELECT {_ENTRY_COLS}, p.location FROM dataset_products p WHERE p.name = %s AND p.version = %s",
            (name, version),
        ).fetchone()
        if row is None:
            return None
        _as_tier(conn, tier)
        seen = conn.execute("SELECT 1 FROM ds_products WHERE id = %s", (row[0],)).fetchone()
    return Found(entry_of(row[:19]), Path(row[19]), seen is not None)


# --- decisions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    status: int
    reason: str


def decide(caller: Caller, found: Found | None, *, use: bool) -> Decision:
    """May ``caller`` see (``use`` False: description, Croissant, quality report) or use
    (``use`` True: the data files) the product?"""
    if found is None:
        return Decision(False, 404, "no such product on this node")
    e = found.entry
    if not found.readable:
        if e.grade is Grade.CORE and caller.tier is not Tier.OWNER:
            # Core data never leaves the node: to anyone else it does not exist.
            return Decision(False, 404, "no such product on this node")
        return Decision(
            False,
            403,
            f"tier {caller.tier.value} may not read product {e.key} (grade {e.grade.value}; "
            f"decided by the database as role {DB_ROLE[caller.tier]})",
        )
    if use and e.access not in caller.access:
        levels = ", ".join(sorted(a.value for a in caller.access)) or "none"
        return Decision(False, 403, f"product {e.key} is {e.access.value} access; the caller may use {levels}")
    return Decision(True, 200, "allowed")


def file_of(found: Found, root: Path, rel: str) -> tuple[Path, FileEntry] | None:
    """The file ``rel`` of the product if its manifest lists it and it lies inside the product's
    directory under ``root`` (the recorded location must be that directory); None otherwise."""
    entry = next((f for f in found.entry.files if f.path == rel), None)
    if entry is None:
        return None
    base = (root / found.entry.name / found.entry.version).resolve()
    if found.location.resolve() != base:
        return None  # published into another products directory than this monitor serves
    path = (base / entry.path).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path, entry


def safe_text(text: str, limit: int = 200) -> str:
    """``text`` fit for an audit field (no control characters, bounded)."""
    cleaned = "".join(c if ord(c) >= 32 and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in text)
    return cleaned[:limit] or "?"
