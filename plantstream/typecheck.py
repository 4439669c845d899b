"""Type-check the whole namespace as installed, and check its layers: mypy and import-linter cannot
follow setup.py's folder mapping (``edge/`` -> ``plantstream.edge``) through the editable finder, so
cross-stage imports would silently become ``Any`` and the import graph would look empty. This builds
a symlink tree with the installed layout and runs the tools on it.

    python -m plantstream.typecheck            # mypy, tests included
    python -m plantstream.typecheck --layers   # import-linter contracts of pyproject.toml, runtime code only
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from plantstream.paths import project_root

STAGES = ("sim", "edge", "producers", "streams", "sinks", "datasets", "monitor", "federation", "bench")


def build_runtime_tree(root: Path, out: Path) -> Path:
    """The installed layout without test folders: the layer contracts bind runtime code only."""
    pkg = out / "plantstream"
    if out.exists():
        _clear(out)
    pkg.mkdir(parents=True)
    _mirror(root / "plantstream", pkg)
    for stage in STAGES:
        if (root / stage).is_dir():
            _mirror(root / stage, pkg / stage)
    return out


def _clear(path: Path) -> None:
    for entry in path.iterdir():
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        else:
            _clear(entry)
            entry.rmdir()


def _mirror(src: Path, dst: Path) -> None:
    dst.mkdir(exist_ok=True)
    for entry in src.iterdir():
        if entry.name in ("tests", "__pycache__", "node_modules"):
            continue
        if entry.is_dir():
            if (entry / "__init__.py").exists():
                _mirror(entry, dst / entry.name)
        elif entry.suffix == ".py":
            (dst / entry.name).symlink_to(entry)


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


def check_layers(tree: Path, config: Path, argv: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """import-linter's contracts of ``config`` over a tree made by :func:`build_runtime_tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [str(Path(sys.executable).parent / "lint-imports"), str(config), "--no-cache", *(argv or [])]
    return subprocess.run(cmd, cwd=tree, env=env, check=False, text=True, capture_output=True)


def layers(argv: list[str]) -> int:
    root = project_root()
    tree = build_runtime_tree(root, root / ".state" / "layers")
    res = check_layers(tree, root / "pyproject.toml", argv)
    sys.stdout.write(res.stdout[res.stdout.find("Contracts") :] if "Contracts" in res.stdout else res.stdout)
    sys.stderr.write(res.stderr)
    return res.returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv[:1] == ["--layers"]:
        return layers(argv[1:])
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
