"""Fixtures of the monitor tests (helpers live in plantstream.testing.monitor)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plantstream.config import Settings
from plantstream.datasets.api import ENGINE
from plantstream.monitor.auth import MonitorConfig
from plantstream.monitor.web import make_app
from plantstream.testing.monitor import TOKENS, Served, ServerThread, load
from plantstream.testing.plugin import wait_until


@pytest.fixture
def loaded_db(fresh_db: str) -> tuple[str, int]:
    return fresh_db, load(fresh_db)


@pytest.fixture
def api(loaded_db: tuple[str, int], settings: Settings) -> Iterator[Served]:
    """The monitor without its Kafka feed, over the loaded database."""
    cfg = MonitorConfig(tokens=TOKENS, anonymous_tier="none")
    with ServerThread(make_app(settings, cfg, kafka=False, engine=ENGINE)) as served:
        wait_until(lambda: served.get("/healthz", None)[0] == 200, 10, "monitor /healthz")
        yield served
