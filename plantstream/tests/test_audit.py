"""The hash-chained audit log against a real PostgreSQL: intact chains verify, and every way of
tampering with a record (edit, delete, reorder, cut off the end) is named by its sequence number."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from plantstream import audit

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(fresh_db: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    c = psycopg.connect(fresh_db, autocommit=True)
    audit.ensure(c)
    yield c
    c.close()


def _fill(c: psycopg.Connection[tuple[object, ...]], n: int) -> list[audit.AuditRecord]:
    return [
        audit.append(
            c, "request", f"member-{i % 3}", f"steel/prod@1.0.{i}", {"bytes": i * 1000, "ratio": 1e20, "s": "ü\x00"}
        )
        for i in range(n)
    ]


def test_intact_chain_verifies_and_links(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    recs = _fill(conn, 6)
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5, 6]
    assert recs[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(recs))
    v = audit.verify(conn)
    assert v.ok and v.records == 6 and v.head == recs[-1].ref
    # The detail survives storage exactly (1e20 is not rewritten, NUL is kept escaped).
    stored = audit.records(conn)
    assert stored[2].detail == {"bytes": 2000, "ratio": 1e20, "s": "ü\x00"}
    assert audit.head(conn) == stored[-1]


def test_edited_field_is_named(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    _fill(conn, 5)
    conn.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
    v = audit.verify(conn)
    assert not v.ok and v.first_bad == 3 and "altered" in v.reason and v.records == 2


def test_edited_detail_with_recomputed_hash_breaks_the_next_link(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    recs = _fill(conn, 4)
    r = recs[1]
    forged = audit.canonical_json({"bytes": 1})
    h = audit.digest(r.seq, r.at, r.kind, r.actor, r.subject, forged, r.prev_hash)
    conn.execute("UPDATE audit_log SET detail = %s, hash = %s WHERE seq = 2", (forged, h))
    v = audit.verify(conn)
    assert not v.ok and v.first_bad == 3 and "does not link" in v.reason


def test_deleted_record_is_named_missing(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    _fill(conn, 5)
    conn.execute("DELETE FROM audit_log WHERE seq = 4")
    v = audit.verify(conn)
    assert not v.ok and v.first_bad == 4 and "missing" in v.reason


def test_cut_off_end_is_caught_by_the_head_the_other_side_recorded(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    recs = _fill(conn, 5)
    conn.execute("DELETE FROM audit_log WHERE seq >= 4")
    assert audit.verify(conn).ok  # the chain alone cannot see it ...
    v = audit.verify(conn, expect_head=recs[4].ref)  # ... the cited head can
    assert not v.ok and v.first_bad == 4
    assert audit.verify(conn, expect_head=recs[2].ref).ok


def test_concurrent_writers_keep_one_gap_free_chain(
    fresh_db: str, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with psycopg.connect(fresh_db, autocommit=True) as c:
                for i in range(25):
                    audit.append(c, "download", f"w{k}", f"file-{i}", {"i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    v = audit.verify(conn)
    assert v.ok and v.records == 100


def test_bad_fields_are_refused_before_writing(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with pytest.raises(audit.AuditError, match="kind"):
        audit.append(conn, "delete", "a", "b", {})
    with pytest.raises(audit.AuditError, match="actor"):
        audit.append(conn, "request", "", "b", {})
    with pytest.raises(audit.AuditError, match="subject"):
        audit.append(conn, "request", "a", "x\ny", {})
    with pytest.raises(audit.AuditError, match="NaN"):
        audit.append(conn, "request", "a", "b", {"v": float("nan")})
    with pytest.raises(audit.AuditError, match="table"):
        audit.ensure(conn, "audit; drop table x")
    assert audit.head(conn) is None


def test_timestamps_round_trip_through_timestamptz(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("SET TIME ZONE 'Asia/Shanghai'")
    audit.append(conn, "publish", "owner", "p@1.0.0", {}, at=datetime(2026, 12, 3, 1, 2, 3, 456789, tzinfo=UTC))
    assert audit.verify(conn).ok


def test_cli_verify_exit_codes(fresh_db: str, conn: psycopg.Connection[tuple[object, ...]]) -> None:
    _fill(conn, 3)
    cmd = [sys.executable, "-m", "plantstream.cli", "audit", "verify", "--dsn", fresh_db, "--json"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["records"] == 3
    conn.execute("UPDATE audit_log SET subject = 'x' WHERE seq = 2")
    bad = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "record 2" in bad.stderr
    missing = subprocess.run([*cmd[:-1], "--table", "nope"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "nope" in missing.stderr
