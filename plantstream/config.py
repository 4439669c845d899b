"""Typed configuration: environment for connections, YAML files for agents and pipelines.

Every command reads ``PLANTSTREAM_*`` variables so the same commands point at the local stack
(``eval "$(plantstream stack env)"``) or a production cluster. YAML files are validated with
pydantic; an error names the file, the line and the key, and the CLI exits with status 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from plantstream.paths import default_state_dir

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A configuration problem a human must fix; ``str()`` is the pointed message."""

    exit_code = 2


def mask_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db`` (also key=value DSNs)."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return url
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", url)


class Settings(BaseModel):
    """Connection settings shared by every service, from the environment."""

    model_config = ConfigDict(frozen=True)

    db_dsn: SecretStr = Field(SecretStr("postgresql://plantstream@127.0.0.1:55432/plantstream"))
    kafka_bootstrap: str = "127.0.0.1:19092"
    mqtt_url: SecretStr = Field(SecretStr("mqtt://127.0.0.1:11883"))
    topic_prefix: str = "plantstream"
    partitions: int = Field(6, ge=1, le=1024)
    state_dir: Path = Field(default_factory=default_state_dir)
    metrics_port: int | None = None
    log_format: str = "json"

    ENV: ClassVar[dict[str, str]] = {
        "db_dsn": "PLANTSTREAM_DB_DSN",
        "kafka_bootstrap": "PLANTSTREAM_KAFKA_BOOTSTRAP",
        "mqtt_url": "PLANTSTREAM_MQTT_URL",
        "topic_prefix": "PLANTSTREAM_TOPIC_PREFIX",
        "partitions": "PLANTSTREAM_PARTITIONS",
        "state_dir": "PLANTSTREAM_STATE_DIR",
        "metrics_port": "PLANTSTREAM_METRICS_PORT",
        "log_format": "PLANTSTREAM_LOG_FORMAT",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        # With nothing set, fall back to the local stack of this state directory (if one was made).
        if not env.get("PLANTSTREAM_DB_DSN") and env is not None:
            env = {**_local_stack_env(), **env}
        values: dict[str, Any] = {k: env[v] for k, v in cls.ENV.items() if env.get(v)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "?"
            raise ConfigError(f"environment variable {cls.ENV.get(field, field)}: {err['msg']}") from None

    @property
    def dsn(self) -> str:
        return self.db_dsn.get_secret_value()

    @property
    def mqtt(self) -> str:
        return self.mqtt_url.get_secret_value()

    def describe(self) -> dict[str, str]:
        """Safe to log: secrets masked."""
        return {
            "db": mask_url(self.dsn),
            "kafka": self.kafka_bootstrap,
            "mqtt": mask_url(self.mqtt),
            "topics": self.topic_prefix,
        }


def _local_stack_env() -> dict[str, str]:
    from plantstream.stack import Stack

    stack = Stack()
    return stack.env() if stack.meta_file.exists() else {}


# --- YAML with line numbers --------------------------------------------------------------------


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Walk the composed YAML node tree along a pydantic error location; return a 1-based line."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(part):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            if nxt is None:
                # pydantic puts union discriminator tags in the location; they are not YAML keys.
                continue
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Load and validate ``path`` into ``model``; ConfigError names file, line and key."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}:1: the top level must be a mapping of keys, not {type(data).__name__}")
    try:
        return model.model_validate(data, context={"config_path": str(p)})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(x) for x in loc) or "(top level)"
            line = _line_of(node, loc)
            lines.append(f"{p}:{line}: key '{key}': {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
