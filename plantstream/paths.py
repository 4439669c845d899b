"""Where plantstream keeps local state (stack data, edge buffers, demo logs)."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_state_dir() -> Path:
    env = os.environ.get("PLANTSTREAM_STATE_DIR")
    if env:
        return Path(env)
    root = project_root()
    # A source checkout keeps state beside the code (git-ignored); an installed package uses ~/.
    if (root / "pyproject.toml").exists():
        return root / ".state"
    return Path.home() / ".local" / "state" / "plantstream"
