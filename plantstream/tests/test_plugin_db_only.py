"""CI's second pass keeps exactly the tests that touch PostgreSQL (PLANTSTREAM_TEST_DB_ONLY=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SAMPLE = """
import pytest

@pytest.fixture
def fresh_db():  # stands in for the plugin's fixture name only; nothing runs
    return "x"

@pytest.fixture
def settings(fresh_db):
    return fresh_db

def test_pure():
    pass

def test_direct(fresh_db):
    pass

def test_through_settings(settings):
    pass

@pytest.mark.db
def test_marked():
    pass
"""


def _collect(tmp_path: Path, db_only: bool) -> list[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "PLANTSTREAM_TEST_DB_ONLY"}
    if db_only:
        env["PLANTSTREAM_TEST_DB_ONLY"] = "1"
    # -p loads only the plugin's hooks; the sample's own fixtures shadow the plugin's.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "plantstream.testing.plugin",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    return [line.split("::")[1] for line in out.stdout.splitlines() if "::" in line]


def test_db_only_keeps_tests_reaching_fresh_db_or_marked(tmp_path: Path) -> None:
    assert _collect(tmp_path, False) == ["test_pure", "test_direct", "test_through_settings", "test_marked"]
    assert _collect(tmp_path, True) == ["test_direct", "test_through_settings", "test_marked"]
