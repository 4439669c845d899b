"""The tag registry owns grades: the owner's command that changes one (migration 0007 refuses
lowering from any other writer) and the record of changes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from plantstream.contract import Grade

log = logging.getLogger(__name__)


class GradeError(ValueError):
    """A grade change that cannot be made (unknown tag, empty owner name); the message says which."""


@dataclass(frozen=True, slots=True)
class GradeChange:
    plant: str
    tag: str
    old: Grade
    new: Grade
    by: str


def set_tag_grade(
    conn: psycopg.Connection[Any], plant: str, tag: str, grade: Grade, by: str, reason: str = ""
) -> GradeChange:
    """Set ``plant``/``tag``'s grade as the owner ``by`` (raising and lowering), recorded in
    tag_grade_changes with ``reason``. One transaction; the session setting that authorizes a
    lowering lives only inside it."""
    by = by.strip()
    if not by:
        raise GradeError("--by: the owner's name is required (it is recorded with the change)")
    if len(by) > 200 or len(reason) > 2000:
        raise GradeError("--by is at most 200 characters and --reason at most 2000")
    with conn.transaction():
        row = conn.execute("SELECT grade FROM tags WHERE plant = %s AND tag = %s FOR UPDATE", (plant, tag)).fetchone()
        if row is None:
            raise GradeError(f"no tag {tag!r} in plant {plant!r}")
        old = Grade(row[0])
        conn.execute("SELECT set_config('plantstream.grade_change_by', %s, true)", (by,))
        conn.execute("SELECT set_config('plantstream.grade_change_reason', %s, true)", (reason,))
        conn.execute(
            "UPDATE tags SET grade = %s, updated_at = now() WHERE plant = %s AND tag = %s", (grade.value, plant, tag)
        )
    change = GradeChange(plant, tag, old, grade, by)
    log.info(
        "tag grade set by owner",
        extra={"kv": {"plant": plant, "tag": tag, "old": old.value, "new": grade.value, "by": by}},
    )
    return change


def grade_changes(conn: psycopg.Connection[Any], plant: str, tag: str) -> list[tuple[str, str, str, str, str]]:
    """(old, new, changed_by, outcome, reason) for one tag, oldest first."""
    rows = conn.execute(
        "SELECT c.old_grade, c.new_grade, c.changed_by, c.outcome, c.reason FROM tag_grade_changes c "
        "JOIN tags t ON t.id = c.tag_id WHERE t.plant = %s AND t.tag = %s ORDER BY c.id",
        (plant, tag),
    ).fetchall()
    return [(str(a), str(b), str(c), str(d), str(e)) for a, b, c, d, e in rows]
