"""The layer contracts of pyproject.toml hold on the runtime code, and the check catches a crossing."""

from __future__ import annotations

from pathlib import Path

from plantstream.paths import project_root
from plantstream.typecheck import build_runtime_tree, check_layers


def test_layers_hold_on_the_tree(tmp_path: Path) -> None:
    root = project_root()
    res = check_layers(build_runtime_tree(root, tmp_path / "tree"), root / "pyproject.toml")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_a_stage_importing_another_stage_or_the_simulator_is_refused(tmp_path: Path) -> None:
    root = project_root()
    tree = build_runtime_tree(root, tmp_path / "tree")
    bad = tree / "plantstream" / "streams" / "shortcut.py"
    bad.write_text("from plantstream.sinks.timescaledb import sink\nfrom plantstream.sim import engine\n")
    core = tree / "plantstream" / "domain" / "leak.py"
    core.write_text("from plantstream.producers import codec\n")
    res = check_layers(tree, root / "pyproject.toml")
    assert res.returncode == 1, res.stdout[-3000:]
    out = res.stdout
    assert "plantstream.streams.shortcut -> plantstream.sinks.timescaledb.sink" in out
    assert "plantstream.streams.shortcut -> plantstream.sim.engine" in out
    assert "plantstream.domain.leak -> plantstream.producers.codec" in out


def test_tests_and_test_folders_are_not_in_the_runtime_tree(tmp_path: Path) -> None:
    tree = build_runtime_tree(project_root(), tmp_path / "tree")
    pkg = tree / "plantstream"
    assert (pkg / "edge" / "agent.py").is_symlink()
    assert (pkg / "sinks" / "timescaledb" / "sink.py").is_symlink()
    assert not any(p.name == "tests" for p in pkg.rglob("*"))
