"""Pytest fixtures for plantstream's real services (a pytest plugin, like psycopg's).

One local stack serves the whole session (the broker's first consumer-group join costs ~20-30 s).
Tests isolate themselves by name instead: a unique topic prefix per test and a fresh database
per test, so nothing leaks between them and no test depends on another's data.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from plantstream.config import Settings
from plantstream.stack import Stack, port_open

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``cond`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def stack() -> Stack:
    s = Stack()
    if not all(ok for ok, _ in s.status().values()):
        s.up(install=False)
    return s


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    return f"127.0.0.1:{stack.ports.kafka}"


@pytest.fixture(scope="session")
def mqtt_port(stack: Stack) -> int:
    return stack.ports.mqtt


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fresh_db(stack: Stack) -> Iterator[str]:
    """A new empty database; its DSN. Dropped after the test."""
    import psycopg

    name = f"pstest_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield stack.dsn(name)
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(stack: Stack, fresh_db: str, topic_prefix: str, tmp_path: Path) -> Settings:
    """Settings pointing at the local stack, with this test's own topics, database and state."""
    return Settings(
        db_dsn=fresh_db,  # type: ignore[arg-type]
        kafka_bootstrap=f"127.0.0.1:{stack.ports.kafka}",
        mqtt_url=f"mqtt://127.0.0.1:{stack.ports.mqtt}",  # type: ignore[arg-type]
        topic_prefix=topic_prefix,
        partitions=3,
        state_dir=tmp_path / "state",
    )


@pytest.fixture
def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for subprocesses (``plantstream ...``) that use ``settings``."""
    return {
        **os.environ,
        "PLANTSTREAM_DB_DSN": settings.dsn,
        "PLANTSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PLANTSTREAM_MQTT_URL": settings.mqtt,
        "PLANTSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "PLANTSTREAM_PARTITIONS": str(settings.partitions),
        "PLANTSTREAM_STATE_DIR": str(settings.state_dir),
        "PLANTSTREAM_LOG_FORMAT": "json",
    }


def timescaledb_required() -> bool:
    """``PLANTSTREAM_REQUIRE_TIMESCALEDB=1`` (the TimescaleDB CI run): a TimescaleDB test that
    would skip fails instead, so a green run proves the TimescaleDB path."""
    return os.environ.get("PLANTSTREAM_REQUIRE_TIMESCALEDB", "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and timescaledb_required() and item.get_closest_marker("timescaledb") is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: TimescaleDB test skipped while PLANTSTREAM_REQUIRE_TIMESCALEDB=1 ({report.longrepr})"
        )


@pytest.fixture(scope="session", autouse=True)
def _engine_banner(request: pytest.FixtureRequest) -> None:
    """Say once which storage engine this session's database is (integration sessions only)."""
    if timescaledb_required() and request.session.items and services_available():
        running = Stack().running_engine() or ""
        if not running.startswith("timescaledb"):
            pytest.exit(f"PLANTSTREAM_REQUIRE_TIMESCALEDB=1 but the local stack's PostgreSQL is {running!r}", 2)


def services_available() -> bool:
    s = Stack()
    return all(port_open(p) for p in (s.ports.pg, s.ports.mqtt, s.ports.kafka))


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "integration: needs the local stack (PostgreSQL, Mosquitto, broker)")
    config.addinivalue_line("markers", "e2e: whole pipeline through real services")
    config.addinivalue_line("markers", "timescaledb: needs the TimescaleDB extension installed")
    config.addinivalue_line("markers", "slow: takes more than ~30 s")
    config.addinivalue_line("markers", "db: reads or writes PostgreSQL without the fresh_db fixture")


DB_ONLY_ENV = "PLANTSTREAM_TEST_DB_ONLY"


def _uses_db(item: pytest.Item) -> bool:
    # fixturenames is the transitive closure, so a test reaching fresh_db through settings counts.
    return "fresh_db" in getattr(item, "fixturenames", ()) or item.get_closest_marker("db") is not None


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    """``PLANTSTREAM_TEST_DB_ONLY=1`` (CI's second pass, on the other storage engine): run only the
    tests that touch PostgreSQL. Everything else does not depend on the engine and ran in the first
    pass; the count deselected is printed so the pass says what it left out."""
    if os.environ.get(DB_ONLY_ENV, "") in ("", "0"):
        return
    keep = [i for i in items if _uses_db(i)]
    dropped = [i for i in items if not _uses_db(i)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"{DB_ONLY_ENV}=1: {len(keep)} tests that touch PostgreSQL run; "
            f"{len(dropped)} engine-independent tests deselected (they run in the other pass)"
        )
