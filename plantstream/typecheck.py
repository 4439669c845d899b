"""Type-check the whole namespace as installed: mypy cannot follow setup.py's folder mapping
(``edge/`` -> ``plantstream.edge``) through the editable finder, so cross-stage imports would
silently become ``Any``. This builds a symlink tree with the installed layout and runs mypy on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from plantstream.paths import project_root

STAGES = ("sim", "edge", "producers", "streams", "sinks", "datasets", "monitor", "bench")


def build_tree(root: Path, out: Path) -> Path:
    pkg = out / "plantstream"
    pkg.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in (root / "plantstream").iterdir()} | {s for s in STAGES if (root / s).is_dir()}
    for entry in pkg.iterdir():
        if entry.name not in wanted and entry.is_symlink():
            entry.unlink()
    for src in (root / "plantstream").iterdir():
        _link(pkg / src.name, src)
    for stage in STAGES:
        if (root / stage).is_dir():
            _link(pkg / stage, root / stage)
    return out


def _link(dst: Path, src: Path) -> None:
    if dst.is_symlink() and os.readlink(dst) == str(src):
        return
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src)


def main(argv: list[str] | None = None) -> int:
    root = project_root()
    tree = build_tree(root, root / ".state" / "typecheck")
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(root / "pyproject.toml"),
        "-p",
        "plantstream",
        *(argv or []),
    ]
    return subprocess.run(cmd, cwd=tree, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
