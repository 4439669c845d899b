"""Where plantstream keeps local state (stack data, edge buffers, demo logs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

# The local stack's metadata file in its state directory; `client_env` holds the clients' variables.
STACK_META = "stack.json"


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


def local_stack_env(state_dir: Path | None = None) -> dict[str, str]:
    """The ``PLANTSTREAM_*`` variables of the local stack that ``plantstream stack up`` started
    in this state directory ({} when none was started or the file is unreadable)."""
    meta = (state_dir or default_state_dir()) / STACK_META
    try:
        env = json.loads(meta.read_text()).get("client_env", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}
