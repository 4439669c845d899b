"""Versioned schema migrations and the material-spec seed.

Migrations are ``migrations/NNNN_name.sql`` (both storage paths) or ``NNNN_name.plain.sql`` /
``NNNN_name.timescale.sql`` (one file per path for the same version). Each is applied in order,
inside its own transaction, and recorded in ``schema_migrations`` with a SHA-256 checksum.

Contract:

* The storage path ("flavor") is chosen once, when the first migration runs: ``timescale`` when
  the TimescaleDB extension is available to this server (``pg_available_extensions``), else
  ``plain``. It is recorded with every migration and never changes for that database.
* A failing migration rolls back completely; the ones before it stay applied.
* An applied migration whose file has changed since is refused (``MigrationError``), never
  re-applied; so is a database that has migrations this build does not know.
* Concurrent ``migrate`` calls (several sinks starting) serialize on an advisory lock.
* ``seed_materials`` upserts ``plantstream.domain.materials.MATERIALS``; running it again with the
  same data writes nothing.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, cast

import psycopg

from plantstream.domain.materials import MaterialSpec

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
Flavor = Literal["timescale", "plain"]
_LOCK_KEY = 0x70_73_6D_69  # "psmi": one advisory lock id for all plantstream migrations
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(plain|timescale))?\.sql$")


class MigrationError(RuntimeError):
    """The database schema cannot be brought to this build's version; the message says why."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    flavor: str
    checksum: str
    applied_at: str


@dataclass(frozen=True, slots=True)
class Status:
    flavor: Flavor | None  # None: nothing applied yet
    available_flavor: Flavor
    applied: list[AppliedMigration]
    pending: list[Migration]
    changed: list[int]  # applied versions whose file differs now

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.changed


def discover(flavor: Flavor, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations for ``flavor``, in version order; errors name the offending file."""
    found: dict[int, Migration] = {}
    generic: set[int] = set()
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if m is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql or NNNN_name.<plain|timescale>.sql")
        version, name, only = int(m.group(1)), m.group(2), m.group(3)
        if only is None:
            generic.add(version)
        elif only != flavor:
            continue
        if version in found:
            raise MigrationError(f"{path}: version {version:04d} is defined twice for the {flavor} path")
        found[version] = Migration(version, name, path, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def available_flavor(conn: psycopg.Connection[Any]) -> Flavor:
    """``timescale`` when the extension is installed AND preloaded (CREATE EXTENSION fails
    without ``shared_preload_libraries = 'timescaledb'``), else ``plain``."""
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb' "
        "AND current_setting('shared_preload_libraries') ~ '(^|[ ,])timescaledb([ ,]|$)'"
    ).fetchone()
    return "timescale" if row else "plain"


def _ensure_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version     integer PRIMARY KEY,
               name        text NOT NULL,
               flavor      text NOT NULL CHECK (flavor IN ('timescale', 'plain')),
               checksum    text NOT NULL,
               applied_at  timestamptz NOT NULL DEFAULT now(),
               duration_ms integer NOT NULL
           )"""
    )


def _applied(conn: psycopg.Connection[Any]) -> list[AppliedMigration]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    rows = conn.execute(
        "SELECT version, name, flavor, checksum, applied_at::text FROM schema_migrations ORDER BY version"
    ).fetchall()
    return [AppliedMigration(*r) for r in rows]


def status(conn: psycopg.Connection[Any]) -> Status:
    applied = _applied(conn)
    avail = available_flavor(conn)
    flavor: Flavor | None = cast(Flavor, applied[0].flavor) if applied else None
    wanted = discover(flavor or avail)
    by_version = {m.version: m for m in wanted}
    unknown = [a.version for a in applied if a.version not in by_version]
    if unknown:
        raise MigrationError(
            f"the database has migrations {unknown} that this build does not know; it was migrated by a newer plantstream"
        )
    done = {a.version: a for a in applied}
    changed = [v for v, a in done.items() if a.checksum != by_version[v].checksum]
    pending = [m for m in wanted if m.version not in done]
    return Status(flavor, avail, applied, pending, changed)


def migrate(dsn: str, seed: bool = True, flavor: Flavor | None = None) -> list[Migration]:
    """Apply pending migrations (and seed materials); return those applied. Idempotent.

    ``flavor`` forces the storage path of a database with no schema yet: ``plain`` works on any
    server (tests of the native-partitioning path run on a TimescaleDB server too); ``timescale``
    needs the extension preloaded. None takes what the server offers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            _ensure_table(conn)
            st = status(conn)
            if st.changed:
                raise MigrationError(
                    f"applied migrations {st.changed} differ from this build's files (checksum mismatch); "
                    "a released migration must never be edited: add a new one instead"
                )
            if flavor is not None and st.flavor is not None and flavor != st.flavor:
                raise MigrationError(f"the database is on the {st.flavor} path; it cannot be migrated as {flavor}")
            if flavor == "timescale" and st.available_flavor != "timescale":
                raise MigrationError(
                    "the timescale path needs the TimescaleDB extension installed and in shared_preload_libraries"
                )
            chosen: Flavor = st.flavor or flavor or st.available_flavor
            pending = st.pending if chosen == (st.flavor or st.available_flavor) else _pending(conn, chosen)
            for m in pending:
                t0 = time.monotonic()
                try:
                    with conn.transaction():
                        conn.execute(m.sql)
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, flavor, checksum, duration_ms) "
                            "VALUES (%s, %s, %s, %s, %s)",
                            (m.version, m.name, chosen, m.checksum, int((time.monotonic() - t0) * 1000)),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"{m.path.name}: {exc}") from exc
            if seed:
                from plantstream.domain.materials import MATERIALS

                seed_materials(conn, MATERIALS)
            return pending
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _pending(conn: psycopg.Connection[Any], flavor: Flavor) -> list[Migration]:
    done = {a.version for a in _applied(conn)}
    return [m for m in discover(flavor) if m.version not in done]


def require_current(conn: psycopg.Connection[Any]) -> Flavor:
    """The database flavor if its schema matches this build; MigrationError saying what to do otherwise."""
    st = status(conn)
    if st.flavor is None:
        raise MigrationError("the database has no plantstream schema: run `plantstream db migrate`")
    if not st.up_to_date:
        raise MigrationError(
            f"the database schema is not current (pending {[m.version for m in st.pending]}, "
            f"changed {st.changed}): run `plantstream db migrate`"
        )
    return st.flavor


def seed_materials(conn: psycopg.Connection[Any], materials: Mapping[str, MaterialSpec]) -> int:
    """Upsert material classes, definitions, specs and limits; returns how many specs changed.

    A spec whose stored content equals ``materials`` is not touched, so seeding twice is a no-op.
    """
    changed = 0
    with conn.transaction():
        for spec in materials.values():
            if _spec_matches(conn, spec):
                continue
            changed += 1
            conn.execute(
                "INSERT INTO material_classes (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (spec.material_class,)
            )
            conn.execute(
                "INSERT INTO material_definitions (class_id, code, description) "
                "SELECT id, %s, %s FROM material_classes WHERE name = %s "
                "ON CONFLICT (code) DO NOTHING",
                (spec.grade, spec.description, spec.material_class),
            )
            row = conn.execute(
                "INSERT INTO material_specs (spec_id, revision, definition_id, standard, grade, description, effective_from) "
                "SELECT %s, %s, d.id, %s, %s, %s, %s FROM material_definitions d WHERE d.code = %s "
                "ON CONFLICT (spec_id, revision) DO UPDATE SET definition_id = EXCLUDED.definition_id, "
                "standard = EXCLUDED.standard, grade = EXCLUDED.grade, description = EXCLUDED.description, "
                "effective_from = EXCLUDED.effective_from RETURNING id",
                (
                    spec.spec_id,
                    spec.revision,
                    spec.standard,
                    spec.grade,
                    spec.description,
                    date.fromisoformat(spec.effective_from),
                    spec.grade,
                ),
            ).fetchone()
            assert row is not None
            conn.execute("DELETE FROM spec_property_limits WHERE spec_pk = %s", (row[0],))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO spec_property_limits (spec_pk, property, basis, condition, min, max, target, unit, test_method) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            row[0],
                            lim.property,
                            lim.basis,
                            lim.condition,
                            lim.min,
                            lim.max,
                            lim.target,
                            lim.unit,
                            lim.test_method,
                        )
                        for lim in spec.limits
                    ],
                )
    return changed


def _spec_matches(conn: psycopg.Connection[Any], spec: MaterialSpec) -> bool:
    row = conn.execute(
        "SELECT s.id, s.standard, s.grade, s.description, s.effective_from, c.name "
        "FROM material_specs s JOIN material_definitions d ON d.id = s.definition_id "
        "JOIN material_classes c ON c.id = d.class_id WHERE s.spec_id = %s AND s.revision = %s",
        (spec.spec_id, spec.revision),
    ).fetchone()
    if row is None:
        return False
    if row[1:] != (
        spec.standard,
        spec.grade,
        spec.description,
        date.fromisoformat(spec.effective_from),
        spec.material_class,
    ):
        return False
    stored = conn.execute(
        "SELECT property, basis, condition, min, max, target, unit, test_method FROM spec_property_limits "
        "WHERE spec_pk = %s ORDER BY property, basis, condition",
        (row[0],),
    ).fetchall()
    wanted = [
        (lim.property, lim.basis, lim.condition, lim.min, lim.max, lim.target, lim.unit, lim.test_method)
        for lim in spec.limits
    ]
    return sorted((tuple(r) for r in stored), key=lambda t: t[:3]) == sorted(wanted, key=lambda t: t[:3])
