"""The local stack's storage engine: chosen by PLANTSTREAM_STACK_ENGINE, reported by the running
server itself, and an installed TimescaleDB that cannot load never takes the stack down (auto) or
passes silently (explicit)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plantstream.stack import PG_BIN, Ports, Stack, StackError, _timescaledb_load_failure, requested_engine
from plantstream.testing.plugin import free_port


@pytest.mark.parametrize(
    ("value", "want"), [("", "auto"), ("auto", "auto"), (" TimescaleDB ", "timescaledb"), ("postgres", "postgres")]
)
def test_requested_engine(monkeypatch: pytest.MonkeyPatch, value: str, want: str) -> None:
    monkeypatch.setenv("PLANTSTREAM_STACK_ENGINE", value)
    assert requested_engine() == want


def test_unknown_engine_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTSTREAM_STACK_ENGINE", "mysql")
    with pytest.raises(StackError, match=r"PLANTSTREAM_STACK_ENGINE='mysql'.*auto, timescaledb, postgres"):
        requested_engine()


def test_load_failure_is_read_from_the_server_log(tmp_path: Path) -> None:
    log = tmp_path / "postgres.log"
    assert _timescaledb_load_failure(log) == ""
    log.write_text(
        "2026-12-01 LOG:  starting\n"
        '2026-12-01 FATAL:  could not load library "/usr/lib/postgresql/15/lib/timescaledb.so": undefined symbol: x\n'
        "2026-12-01 LOG:  database system is shut down\n"
    )
    got = _timescaledb_load_failure(log)
    assert got.startswith("could not load library") and "undefined symbol: x" in got
    log.write_text("2026-12-01 FATAL:  data directory has wrong ownership\n")
    assert _timescaledb_load_failure(log) == ""


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[Stack]:
    if not (PG_BIN / "pg_ctl").exists():
        pytest.fail(f"PostgreSQL 15 is not installed ({PG_BIN}); ./dev setup installs it")
    s = Stack(tmp_path / "state", Ports(pg=free_port(), mqtt=free_port(), kafka=free_port()))
    yield s
    s.stop_postgres()


def _conf(s: Stack) -> str:
    return (s.pg_data / "postgresql.auto.conf").read_text()


@pytest.mark.integration
def test_engine_choice_on_one_data_directory(private_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    s = private_stack
    s.state.mkdir(parents=True)
    s.run.mkdir()
    # Plain PostgreSQL even where TimescaleDB is installed: nothing preloaded, and the server says so.
    monkeypatch.setenv("PLANTSTREAM_STACK_ENGINE", "postgres")
    assert s.start_postgres() == "started"
    assert "shared_preload_libraries" not in _conf(s)
    running = s.running_engine()
    assert running is not None and running.startswith("plain PostgreSQL 15")
    assert s.status()["postgres"] == (True, f"127.0.0.1:{s.ports.pg} ({running})")
    # Reusing that server when TimescaleDB is demanded is refused, naming what runs.
    monkeypatch.setenv("PLANTSTREAM_STACK_ENGINE", "timescaledb")
    if s.timescaledb_available():
        with pytest.raises(StackError, match="is plain PostgreSQL 15"):
            s.start_postgres()
    assert s.stop_postgres()

    monkeypatch.setenv("PLANTSTREAM_STACK_ENGINE", "auto")
    assert s.start_postgres() == "started"
    running = s.running_engine()
    assert running is not None
    if not s.timescaledb_available():
        assert running.startswith("plain") and s.engine_note() == ""
        return
    if running.startswith("timescaledb 2."):
        assert "shared_preload_libraries = 'timescaledb'" in _conf(s) and s.engine_note() == ""
    else:
        # Installed but unloadable: auto still starts, plain, and says exactly why.
        assert running.startswith("plain PostgreSQL 15")
        assert "does not load" in s.engine_note() and "timescaledb" in s.engine_note()
        assert s.engine_note() in s.status()["postgres"][1]
        assert s.stop_postgres()
        monkeypatch.setenv("PLANTSTREAM_STACK_ENGINE", "timescaledb")
        with pytest.raises(StackError, match="PLANTSTREAM_STACK_ENGINE=timescaledb but PostgreSQL cannot load it"):
            s.start_postgres()


def _pytest(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "plantstream.testing.plugin", "-p", "no:cacheprovider", "-q", *args],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_required_timescaledb_turns_its_skips_into_failures(tmp_path: Path) -> None:
    (tmp_path / "test_ts.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.timescaledb\n"
        "def test_needs_it():\n    pytest.skip('no extension')\n\n"
        "def test_other():\n    pytest.skip('unrelated')\n"
    )
    # No services on these ports: only the skip rule is exercised, not the engine check.
    dead = {"PLANTSTREAM_STACK_PG_PORT": str(free_port()), "PLANTSTREAM_STACK_MQTT_PORT": str(free_port())}
    relaxed = _pytest(tmp_path, {**dead, "PLANTSTREAM_REQUIRE_TIMESCALEDB": "0"}, "-rs")
    assert relaxed.returncode == 0, relaxed.stdout
    assert "2 skipped" in relaxed.stdout
    strict = _pytest(tmp_path, {**dead, "PLANTSTREAM_REQUIRE_TIMESCALEDB": "1"}, "-rs")
    assert strict.returncode == 1, strict.stdout
    assert "1 failed, 1 skipped" in strict.stdout
    assert "TimescaleDB test skipped while PLANTSTREAM_REQUIRE_TIMESCALEDB=1 (" in strict.stdout


@pytest.mark.integration
def test_required_timescaledb_refuses_a_plain_stack(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "test_any.py").write_text("def test_any():\n    assert True\n")
    got = _pytest(tmp_path, {"PLANTSTREAM_REQUIRE_TIMESCALEDB": "1"})
    running = stack.running_engine() or ""
    if running.startswith("timescaledb"):
        assert got.returncode == 0, got.stdout
    else:
        assert got.returncode == 2, got.stdout + got.stderr
        assert f"PLANTSTREAM_REQUIRE_TIMESCALEDB=1 but the local stack's PostgreSQL is {running!r}" in (
            got.stdout + got.stderr
        )
