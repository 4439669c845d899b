"""A tamper-evident audit log: records chained by SHA-256, in any PostgreSQL database.

Node and platform each keep one (table ``audit_log``): every publish, harvest, request, decision,
download and alert is a record whose hash covers its own fields and the previous record's hash.
Sequence numbers are assigned gap-free under a transaction-scoped advisory lock (not from a
sequence, which leaves gaps on rollback), so a deleted record shows as a gap and an edited one as a
hash mismatch. ``verify`` names the first record that breaks the chain.

What the chain cannot show on its own: removal of the newest records. The head (seq and hash) is
therefore exported — the node returns it with every decision (``X-Plantstream-Audit``), and the
platform records that value in its own chain — so each side can prove the other's history.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

GENESIS = "0" * 64
KINDS = frozenset({"publish", "harvest", "request", "decision", "download", "alert"})
_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MAX_TEXT = 512
_MAX_DETAIL = 64 * 1024
# Any fixed 64-bit key works; it only has to differ from other advisory locks in the database.
_LOCK_KEY = 0x706C616E7461  # 'planta'


class AuditError(ValueError):
    """A record that cannot be appended as given (names the field)."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: datetime
    kind: str
    actor: str
    subject: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str
    detail_text: str  # exactly as stored and hashed

    @property
    def ref(self) -> str:
        """``<seq>:<hash>``: how the other side of a request cites this record."""
        return f"{self.seq}:{self.hash}"


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    records: int
    first_bad: int | None  # seq of the first altered record, or of the first missing one
    reason: str
    head: str | None = None  # "<seq>:<hash>" of the last record when intact


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise AuditError("detail: NaN and infinity cannot be recorded")
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def canonical_json(detail: Mapping[str, Any]) -> str:
    """The detail as stored: sorted keys, no whitespace, ASCII. Kept as text, not jsonb, because
    jsonb rewrites numbers (1e20 comes back as an integer) and the hash must survive storage."""
    return json.dumps(_canonical(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def digest(seq: int, at: datetime, kind: str, actor: str, subject: str, detail: str, prev: str) -> str:
    """SHA-256 over the canonical JSON of the record's fields (``detail`` already canonical text,
    UTC µs timestamp, as timestamptz keeps it)."""
    body = {
        "seq": seq,
        "at": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "kind": kind,
        "actor": actor,
        "subject": subject,
        "detail": detail,
        "prev": prev,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _ident(table: str) -> sql.Identifier:
    if not _TABLE.match(table):
        raise AuditError(f"table: {table!r} is not a plain lower-case identifier")
    return sql.Identifier(table)


def ensure(conn: psycopg.Connection[Any], table: str = "audit_log") -> None:
    """Create the table if it is missing (idempotent)."""
    t = _ident(table)
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " seq bigint PRIMARY KEY CHECK (seq > 0),"
                " at timestamptz NOT NULL,"
                " kind text NOT NULL,"
                " actor text NOT NULL,"
                " subject text NOT NULL,"
                " detail text NOT NULL,"
                " prev_hash text NOT NULL,"
                " hash text NOT NULL)"
            ).format(t)
        )


def _check_text(name: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise AuditError(f"{name}: a non-empty string of at most {_MAX_TEXT} characters is required")
    if any(ord(c) < 32 for c in value):
        raise AuditError(f"{name}: control characters are not recorded")


def append(
    conn: psycopg.Connection[Any],
    kind: str,
    actor: str,
    subject: str,
    detail: Mapping[str, Any],
    *,
    table: str = "audit_log",
    at: datetime | None = None,
) -> AuditRecord:
    """Append one record in its own (sub)transaction; concurrent writers are serialized by an
    advisory lock held until that transaction ends. Raises ``AuditError`` for a bad field."""
    if kind not in KINDS:
        raise AuditError(f"kind: {kind!r} is not one of {sorted(KINDS)}")
    _check_text("actor", actor)
    _check_text("subject", subject)
    text = canonical_json(detail)
    if len(text) > _MAX_DETAIL:
        raise AuditError(f"detail: larger than {_MAX_DETAIL} bytes")
    t = _ident(table)
    # Microsecond precision is what timestamptz keeps; truncate first so the hash round-trips.
    when = (at or datetime.now(UTC)).astimezone(UTC)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        row = conn.execute(sql.SQL("SELECT seq, hash FROM {} ORDER BY seq DESC LIMIT 1").format(t)).fetchone()
        seq, prev = (int(row[0]) + 1, str(row[1])) if row else (1, GENESIS)
        h = digest(seq, when, kind, actor, subject, text, prev)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (seq, at, kind, actor, subject, detail, prev_hash, hash) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            ).format(t),
            (seq, when, kind, actor, subject, text, prev, h),
        )
    return AuditRecord(seq, when, kind, actor, subject, json.loads(text), prev, h, text)


def _record(r: Any) -> AuditRecord:
    try:
        detail = json.loads(r[5])
    except ValueError:
        detail = {}  # an edited, unparsable detail: verify reports it by its hash
    return AuditRecord(int(r[0]), r[1], r[2], r[3], r[4], detail if isinstance(detail, dict) else {}, r[6], r[7], r[5])


def _rows(conn: psycopg.Connection[Any], table: str, after: int = 0) -> Iterator[AuditRecord]:
    t = _ident(table)
    # Server-side cursor: a long chain is checked in constant memory.
    with conn.cursor(name="audit_verify") as cur:
        cur.execute(
            sql.SQL(
                "SELECT seq, at, kind, actor, subject, detail, prev_hash, hash FROM {} WHERE seq > %s ORDER BY seq"
            ).format(t),
            (after,),
        )
        for r in cur:
            yield _record(r)


def records(conn: psycopg.Connection[Any], table: str = "audit_log", after: int = 0) -> list[AuditRecord]:
    with conn.transaction():
        return list(_rows(conn, table, after))


def head(conn: psycopg.Connection[Any], table: str = "audit_log") -> AuditRecord | None:
    t = _ident(table)
    r = conn.execute(
        sql.SQL(
            "SELECT seq, at, kind, actor, subject, detail, prev_hash, hash FROM {} ORDER BY seq DESC LIMIT 1"
        ).format(t)
    ).fetchone()
    return _record(r) if r else None


def verify(conn: psycopg.Connection[Any], table: str = "audit_log", expect_head: str | None = None) -> Verdict:
    """Walk the chain from the first record. ``expect_head`` (``<seq>:<hash>`` the other side
    recorded) also proves that no record up to it was removed from the end."""
    prev, expected, n = GENESIS, 1, 0
    last: AuditRecord | None = None
    with conn.transaction():
        for rec in _rows(conn, table):
            if rec.seq != expected:
                return Verdict(False, n, expected, f"record {expected} is missing (next present: {rec.seq})")
            if rec.prev_hash != prev:
                return Verdict(False, n, rec.seq, f"record {rec.seq} does not link to record {rec.seq - 1}")
            if digest(rec.seq, rec.at, rec.kind, rec.actor, rec.subject, rec.detail_text, rec.prev_hash) != rec.hash:
                return Verdict(False, n, rec.seq, f"record {rec.seq} was altered (its hash does not match its fields)")
            prev, expected, n, last = rec.hash, expected + 1, n + 1, rec
    if expect_head is not None:
        seq_s, _, h = expect_head.partition(":")
        if not (seq_s.isascii() and seq_s.isdigit()):
            raise AuditError(f"expect_head: {expect_head!r} is not '<seq>:<hash>'")
        want = int(seq_s)
        if last is None or last.seq < want:
            return Verdict(
                False, n, (last.seq + 1) if last else 1, f"records up to {want} were recorded elsewhere but are missing"
            )
        with conn.transaction():
            got = conn.execute(sql.SQL("SELECT hash FROM {} WHERE seq = %s").format(_ident(table)), (want,)).fetchone()
        if got is None or got[0] != h:
            return Verdict(False, n, want, f"record {want} differs from the hash recorded elsewhere")
    return Verdict(True, n, None, "intact", last.ref if last else None)
