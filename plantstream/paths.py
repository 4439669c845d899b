"""Where plantstream keeps local state (stack data, edge buffers, demo logs)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic validates only this TypedDict on Python < 3.12

log = logging.getLogger(__name__)

# The local stack's metadata file in its state directory; `client_env` holds the clients' variables.
STACK_META = "stack.json"


class StackMeta(TypedDict, total=False):
    """``stack.json``, written by ``plantstream stack up`` (plantstream/stack.py). Every key is
    optional: the file grows as the stack is set up. Unknown keys are ignored (a newer build's)."""

    pg_data: str  # PostgreSQL's data directory
    pg_password: str
    engine: str  # the engine the server was last started with: timescaledb | postgres
    engine_note: str  # why not the engine `auto` would have chosen ('' when it is)
    client_env: dict[str, str]  # PLANTSTREAM_* variables the clients use to reach the stack


class StackMetaError(ValueError):
    """``stack.json`` is not what ``stack up`` writes; ``str()`` names the file and the key."""


_META = TypeAdapter(StackMeta)


def parse_stack_meta(text: str, where: str = STACK_META) -> StackMeta:
    """The typed content of a ``stack.json`` text; :class:`StackMetaError` when malformed.

    Strict: a number where a string belongs is an error, not converted (the file is ours).
    The message never includes values (the file holds the database password)."""
    try:
        return _META.validate_json(text, strict=True)
    except ValidationError as exc:
        err = exc.errors(include_input=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        raise StackMetaError(f"{where}: " + (f"key {key!r}: " if key else "") + err["msg"]) from None


def read_stack_meta(path: Path) -> StackMeta:
    """``path`` parsed ({} when it does not exist); :class:`StackMetaError` when it is malformed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise StackMetaError(f"{path}: unreadable: {exc}") from None
    return parse_stack_meta(text, str(path))


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
    in this state directory ({} when none was started, or the file is malformed: then a warning
    names the file and the key, and the caller's defaults apply)."""
    try:
        meta = read_stack_meta((state_dir or default_state_dir()) / STACK_META)
    except StackMetaError as exc:
        # A fallback for convenience only: the settings' own defaults (or errors) take over.
        log.warning("local stack metadata ignored", extra={"kv": {"error": str(exc)}})
        return {}
    return meta.get("client_env", {})
