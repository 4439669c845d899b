"""Every migration parses as PostgreSQL (libpg_query via pglast), including the TimescaleDB path
that cannot run on a server without the extension; and the TimescaleDB rules hold in its text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plantstream.sinks.timescaledb.migrate import MIGRATIONS_DIR

pglast = pytest.importorskip("pglast", reason="pglast (libpg_query) is needed to parse SQL without a server")

FILES = sorted(Path(MIGRATIONS_DIR).glob("*.sql"))
TIMESCALE = (Path(MIGRATIONS_DIR) / "0003_timeseries.timescale.sql").read_text()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_migration_parses(path: Path) -> None:
    assert pglast.parse_sql(path.read_text())


def hypertables() -> dict[str, str]:
    return dict(re.findall(r"create_hypertable\('(\w+)', '(\w+)'", TIMESCALE))


def test_timescale_unique_keys_include_the_time_column() -> None:
    tables = hypertables()
    assert set(tables) == {"readings", "aggregates_1s", "aggregates_1m"}
    for table, time_col in tables.items():
        body = re.search(rf"CREATE TABLE {table} \((.*?)\n\);", TIMESCALE, re.S)
        assert body is not None
        keys = re.findall(r"(?:PRIMARY KEY|UNIQUE) \(([^)]*)\)", body.group(1))
        assert keys and all(time_col in [c.strip() for c in k.split(",")] for k in keys), (table, keys)


def test_timescale_compression_retention_and_chunk_intervals() -> None:
    for table, time_col in hypertables().items():
        assert re.search(rf"create_hypertable\('{table}', '{time_col}', chunk_time_interval => interval", TIMESCALE)
        assert re.search(
            rf"ALTER TABLE {table} SET \(timescaledb.compress, timescaledb.compress_segmentby = 'tag_id',\s*"
            rf"timescaledb.compress_orderby = '{time_col}'\)",
            TIMESCALE,
        ), table
        assert f"add_compression_policy('{table}'" in TIMESCALE
    assert "add_retention_policy(table_name::regclass, keep) FROM retention" in TIMESCALE
    assert "WITH (timescaledb.continuous)" in TIMESCALE and "WITH NO DATA" in TIMESCALE
    assert "add_continuous_aggregate_policy('aggregates_1h'" in TIMESCALE


def test_no_row_level_security_on_time_series() -> None:
    # TimescaleDB rejects RLS with compression and continuous aggregates over RLS tables.
    for path in FILES:
        assert not re.search(r"ENABLE ROW LEVEL SECURITY", path.read_text(), re.I), path.name
