from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from plantstream.config import Settings
from plantstream.domain.materials import MaterialSpec, PropertyLimit
from plantstream.sinks.cli import db
from plantstream.sinks.timescaledb import migrate as M
from plantstream.testing.sinks import checksums

pytestmark = pytest.mark.integration

S355 = MaterialSpec(
    spec_id="EN10025-2:S355J2",
    standard="EN 10025-2:2004",
    grade="S355J2",
    revision="2004",
    effective_from="2005-01-01",
    material_class="structural steel",
    description="non-alloy structural steel",
    limits=(
        PropertyLimit("C", "percent", max=0.20, condition="thickness_mm<=40"),
        PropertyLimit("ReH", "MPa", min=355, condition="thickness_mm<=16", test_method="ISO 6892-1"),
        PropertyLimit("casting_speed", "m/min", min=0.8, max=2.0, basis="process"),
    ),
)


def _schema(dsn: str) -> list[tuple[str, ...]]:
    with psycopg.connect(dsn) as conn:
        return [
            tuple(map(str, r))
            for r in conn.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY 1, 2"
            ).fetchall()
        ]


def test_migrate_twice_is_a_noop(fresh_db: str) -> None:
    first = M.migrate(fresh_db)
    on_disk = sorted({int(f.name[:4]) for f in (Path(M.__file__).parent / "migrations").glob("[0-9]*.sql")})
    assert len(on_disk) >= 4
    assert [m.version for m in first] == on_disk
    schema, data = _schema(fresh_db), checksums(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        applied = conn.execute("SELECT version, flavor, checksum, applied_at FROM schema_migrations").fetchall()
    assert M.migrate(fresh_db) == []
    assert _schema(fresh_db) == schema
    assert checksums(fresh_db) == data
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT version, flavor, checksum, applied_at FROM schema_migrations").fetchall() == applied
        st = M.status(conn)
    assert st.up_to_date and st.flavor == st.available_flavor


def test_edited_migration_is_refused(fresh_db: str) -> None:
    M.migrate(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 2")
    with pytest.raises(M.MigrationError, match=r"\[2\].*checksum"):
        M.migrate(fresh_db)
    with psycopg.connect(fresh_db) as conn, pytest.raises(M.MigrationError, match="not current"):
        M.require_current(conn)


def test_seed_materials_idempotent(fresh_db: str) -> None:
    M.migrate(fresh_db, seed=False)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert M.seed_materials(conn, {S355.spec_id: S355}) == 1
        before = checksums(fresh_db)
        assert M.seed_materials(conn, {S355.spec_id: S355}) == 0
        assert checksums(fresh_db) == before
        rows = conn.execute(
            "SELECT l.property, l.basis, l.min, l.max, l.unit FROM spec_property_limits l "
            "JOIN material_specs s ON s.id = l.spec_pk WHERE s.spec_id = %s ORDER BY 1",
            (S355.spec_id,),
        ).fetchall()
        assert rows == [
            ("C", "lab", None, 0.2, "percent"),
            ("ReH", "lab", 355.0, None, "MPa"),
            ("casting_speed", "process", 0.8, 2.0, "m/min"),
        ]
        # A changed limit replaces the spec's limits.
        changed = dataclasses.replace(S355, limits=S355.limits[:1])
        assert M.seed_materials(conn, {S355.spec_id: changed}) == 1
        n = conn.execute("SELECT count(*) FROM spec_property_limits").fetchone()
        assert n is not None and n[0] == 1


def test_db_cli_migrate_and_status(settings: Settings, settings_env: dict[str, str]) -> None:
    runner = CliRunner()
    status = runner.invoke(db, ["status"], env=settings_env)
    assert status.exit_code == 1 and "0001_equipment_tags" in status.output and "pending" in status.output
    out = runner.invoke(db, ["migrate"], env=settings_env)
    assert out.exit_code == 0, out.output
    assert "applied 0003_timeseries" in out.output
    again = runner.invoke(db, ["migrate"], env=settings_env)
    assert again.output.strip() == "up to date"
    status = runner.invoke(db, ["status"], env=settings_env)
    assert status.exit_code == 0 and "pending" not in status.output
    assert "storage: plain" in status.output or "storage: timescale" in status.output
