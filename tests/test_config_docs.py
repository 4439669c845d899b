"""The configuration reference in docs/config/ is what the code generates (it cannot drift)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from plantstream.configdocs import DEFAULT_OUT, DOCS, generate


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "config-docs", *args], capture_output=True, text=True, timeout=60
    )


def test_committed_config_docs_are_current() -> None:
    proc = _run("--check")
    assert proc.returncode == 0, proc.stderr


def test_docs_cover_every_field_and_check_catches_drift(tmp_path: Path) -> None:
    from plantstream.edge.config import BufferConfig
    from plantstream.sinks.runner import SinkConfig

    docs = generate()
    assert sorted(docs) == sorted(f"{d.name}.md" for d in DOCS)
    for name in SinkConfig.model_fields:
        assert f"| `{name}` |" in docs["sink.md"]
    # Nested models get their own section, with defaults and constraints from the code.
    assert "## `BufferConfig`" in docs["edge.md"]
    assert "| `commit_interval_ms` | float | `10` | ≥ 0, ≤ 1000 |" in docs["edge.md"]
    assert BufferConfig().commit_interval_ms == 10
    out = tmp_path / "docs"
    shutil.copytree(DEFAULT_OUT, out)
    (out / "sink.md").write_text((out / "sink.md").read_text().replace("`50000`", "`40000`"))
    proc = _run("--check", "--out", str(out))
    assert proc.returncode == 1 and "sink.md" in proc.stderr
