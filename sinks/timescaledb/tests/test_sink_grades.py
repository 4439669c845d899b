"""Grades fail closed in the tag registry (migration 0007): an unstated grade is core, the tags
topic may state a grade once and raise it later but never lower it, an owner lowers it with
`plantstream db tag-grade`, and every change or refused lowering is recorded."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import psycopg
import pytest

from plantstream.contract import Grade, TagMeta
from plantstream.sinks.timescaledb.grades import GradeError, grade_changes, set_tag_grade
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.testing.sinks import EQ, reading_records, readings, records

pytestmark = pytest.mark.integration


def _grade(dsn: str, tag: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT grade FROM tags WHERE plant = 'steel' AND tag = %s", (tag,)).fetchone()
    assert row is not None, tag
    return str(row[0])


def _meta(sink: PostgresSink, meta: TagMeta) -> None:
    sink.write(records("tags", [meta]))
    assert sink.flush() == []


def test_grades_fail_closed_and_only_owners_lower_them(fresh_db: str) -> None:
    migrate(fresh_db)
    sink = PostgresSink(fresh_db)
    sink.connect()
    try:
        rs = readings(10, tags=2)
        sink.write(reading_records(rs))
        assert sink.flush() == []
        unstated = rs[0].tag
        assert _grade(fresh_db, unstated) == "core"  # seen in readings only: never stated, so core
        # The first statement of a grade stands, even below core.
        meta = TagMeta("steel", unstated, EQ, rs[0].unit, grade=Grade.GENERAL)
        _meta(sink, meta)
        assert _grade(fresh_db, unstated) == "general"
        _meta(sink, replace(meta, grade=Grade.IMPORTANT))  # raising: applied
        assert _grade(fresh_db, unstated) == "important"
        for _ in range(3):  # lowering from the topic: refused, and recorded once, not per replay
            _meta(sink, replace(meta, grade=Grade.GENERAL, description=f"replay {_}"))
        assert _grade(fresh_db, unstated) == "important"
    finally:
        sink.close()
    with psycopg.connect(fresh_db) as conn:
        assert grade_changes(conn, "steel", unstated) == [
            ("core", "general", "meta", "applied", ""),
            ("general", "important", "meta", "applied", ""),
            (
                "important",
                "general",
                "meta",
                "refused",
                "a tag's grade is lowered only by an owner (plantstream db tag-grade)",
            ),
        ]
        # A plain UPDATE by any other writer cannot lower it either.
        conn.execute("UPDATE tags SET grade = 'general' WHERE plant = 'steel' AND tag = %s", (unstated,))
        conn.commit()
    assert _grade(fresh_db, unstated) == "important"
    with psycopg.connect(fresh_db) as conn:
        change = set_tag_grade(conn, "steel", unstated, Grade.GENERAL, "ana (plant owner)", "published as open data")
        assert (change.old, change.new) == (Grade.IMPORTANT, Grade.GENERAL)
        assert grade_changes(conn, "steel", unstated)[-1] == (
            "important", "general", "ana (plant owner)", "applied", "published as open data",
        )  # fmt: skip
        # The owner's authorization ended with its transaction.
        conn.execute("UPDATE tags SET grade = 'core' WHERE plant = 'steel' AND tag = %s", (unstated,))
        conn.execute("UPDATE tags SET grade = 'general' WHERE plant = 'steel' AND tag = %s", (unstated,))
        conn.commit()
        assert _grade(fresh_db, unstated) == "core"
        with pytest.raises(GradeError, match="no tag 'nope' in plant 'steel'"):
            set_tag_grade(conn, "steel", "nope", Grade.GENERAL, "ana")
        with pytest.raises(GradeError, match="--by"):
            set_tag_grade(conn, "steel", unstated, Grade.GENERAL, "  ")


def test_tag_grade_command(fresh_db: str) -> None:
    migrate(fresh_db)
    sink = PostgresSink(fresh_db)
    sink.connect()
    rs = readings(4, tags=1)
    sink.write(reading_records(rs))
    assert sink.flush() == []
    sink.close()
    env = {"PLANTSTREAM_DB_DSN": fresh_db, "PLANTSTREAM_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plantstream.cli", "db", "tag-grade", *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    ok = run("steel", rs[0].tag, "general", "--by", "ana", "--reason", "reviewed")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"steel/{rs[0].tag}: core -> general (by ana)"
    assert _grade(fresh_db, rs[0].tag) == "general"
    missing = run("steel", "nope", "general", "--by", "ana")
    assert missing.returncode == 2 and "no tag 'nope' in plant 'steel'" in missing.stderr
    bad = run("steel", rs[0].tag, "secret", "--by", "ana")
    assert bad.returncode == 2 and "'secret' is not one of" in bad.stderr
    # Neither the DSN's password nor anything secret is echoed.
    password = fresh_db.split(":")[2].split("@")[0]
    assert all(password not in r.stdout + r.stderr for r in (ok, missing, bad))
