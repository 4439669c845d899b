"""Typed configuration: environment for connections, YAML files for agents and pipelines.

Every command reads ``PLANTSTREAM_*`` variables so the same commands point at the local stack
(``eval "$(plantstream stack env)"``) or a production cluster. YAML files are validated with
pydantic; an error names the file, the line and the key, and the CLI exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from plantstream.paths import default_state_dir

M = TypeVar("M", bound=BaseModel)
_T = TypeVar("_T")


class ConfigError(Exception):
    """A configuration problem a human must fix; ``str()`` is the pointed message."""

    exit_code = 2


def is_loopback(host: str) -> bool:
    """Does ``host`` (an address or a name) resolve to loopback addresses only? Services that
    may listen without credentials only on loopback (monitor, platform) ask this."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # unresolvable: not provably loopback, so it counts as exposed
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def mask_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db`` (also key=value DSNs)."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return url
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", url)


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class KafkaSecurity(BaseModel):
    """How every Kafka client connects (edge producer, streams worker, sink, monitor feed, topic
    administration, checkpoints, bench): one definition, mapped to librdkafka and aiokafka settings
    by plantstream.producers.kafka. From ``PLANTSTREAM_KAFKA_*`` variables (see ENV)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: SaslMechanism | None = Field(default=None, description="SASL mechanism (with a SASL_* protocol)")
    sasl_username: str | None = Field(default=None, max_length=256)
    sasl_password: SecretStr | None = Field(default=None, description="masked in every log line and describe()")
    oauth_token_endpoint: str | None = Field(default=None, description="OAUTHBEARER: OIDC token endpoint URL")
    ssl_ca_location: Path | None = Field(
        default=None, description="CA bundle (PEM) that signed the brokers' certificates"
    )
    ssl_certificate_location: Path | None = Field(default=None, description="client certificate (PEM), for mutual TLS")
    ssl_key_location: Path | None = Field(default=None, description="client key (PEM), for mutual TLS")
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = Field(default=True, description="verify the broker's certificate names its host")
    replication_factor: int = Field(default=1, ge=1, le=32, description="for the topics plantstream creates")
    min_insync_replicas: int | None = Field(
        default=None, ge=1, le=32, description="topic min.insync.replicas (acks=all)"
    )

    ENV: ClassVar[dict[str, str]] = {
        "security_protocol": "PLANTSTREAM_KAFKA_SECURITY_PROTOCOL",
        "sasl_mechanism": "PLANTSTREAM_KAFKA_SASL_MECHANISM",
        "sasl_username": "PLANTSTREAM_KAFKA_SASL_USERNAME",
        "sasl_password": "PLANTSTREAM_KAFKA_SASL_PASSWORD",
        "oauth_token_endpoint": "PLANTSTREAM_KAFKA_OAUTH_TOKEN_ENDPOINT",
        "ssl_ca_location": "PLANTSTREAM_KAFKA_SSL_CA",
        "ssl_certificate_location": "PLANTSTREAM_KAFKA_SSL_CERT",
        "ssl_key_location": "PLANTSTREAM_KAFKA_SSL_KEY",
        "ssl_key_password": "PLANTSTREAM_KAFKA_SSL_KEY_PASSWORD",
        "ssl_check_hostname": "PLANTSTREAM_KAFKA_SSL_CHECK_HOSTNAME",
        "replication_factor": "PLANTSTREAM_KAFKA_REPLICATION_FACTOR",
        "min_insync_replicas": "PLANTSTREAM_KAFKA_MIN_INSYNC_REPLICAS",
    }

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} needs a SASL_PLAINTEXT or SASL_SSL security_protocol"
            )
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and (
            not self.sasl_username or self.sasl_password is None
        ):
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and sasl_password")
        if self.sasl_mechanism == "OAUTHBEARER" and not self.oauth_token_endpoint:
            raise ValueError(
                "sasl_mechanism OAUTHBEARER needs oauth_token_endpoint (and sasl_username/password as client id/secret)"
            )
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl_certificate_location and ssl_key_location go together (mutual TLS)")
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path}: no such file")
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas {self.min_insync_replicas} exceeds replication_factor {self.replication_factor}"
            )
        return self

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def describe(self) -> str:
        """Safe to log: never the password."""
        out: str = self.security_protocol
        if self.sasl_mechanism:
            out += f" {self.sasl_mechanism} as {self.sasl_username or '?'}"
        if self.ssl_ca_location:
            out += f" ca={self.ssl_ca_location}"
        return out

    def to_env(self) -> dict[str, str]:
        """The ``PLANTSTREAM_KAFKA_*`` variables that give a child process these settings
        (secrets included: for a subprocess environment, never for a log line)."""
        out: dict[str, str] = {}
        for field, var in self.ENV.items():
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[var] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSecurity:
        values: dict[str, Any] = {k: env[v] for k, v in cls.ENV.items() if env.get(v)}
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            where = cls.ENV.get(field) or "PLANTSTREAM_KAFKA_* settings"
            raise ConfigError(f"environment variable {where}: {err['msg']}") from None


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
    kafka: KafkaSecurity = Field(default_factory=lambda: KafkaSecurity())
    # The shared vocabulary of standard properties; None: the one shipped in plantstream.domain.
    vocabulary_path: Path | None = None

    ENV: ClassVar[dict[str, str]] = {
        "db_dsn": "PLANTSTREAM_DB_DSN",
        "kafka_bootstrap": "PLANTSTREAM_KAFKA_BOOTSTRAP",
        "mqtt_url": "PLANTSTREAM_MQTT_URL",
        "topic_prefix": "PLANTSTREAM_TOPIC_PREFIX",
        "partitions": "PLANTSTREAM_PARTITIONS",
        "state_dir": "PLANTSTREAM_STATE_DIR",
        "metrics_port": "PLANTSTREAM_METRICS_PORT",
        "log_format": "PLANTSTREAM_LOG_FORMAT",
        "vocabulary_path": "PLANTSTREAM_VOCABULARY",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        # With nothing set, fall back to the local stack of this state directory (if one was made).
        if not env.get("PLANTSTREAM_DB_DSN") and env is not None:
            env = {**_local_stack_env(), **env}
        values: dict[str, Any] = {k: env[v] for k, v in cls.ENV.items() if env.get(v)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values.setdefault("kafka", KafkaSecurity.from_env(env))
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
            "kafka_security": self.kafka.describe(),
            "mqtt": mask_url(self.mqtt),
            "topics": self.topic_prefix,
        }


def layered(
    *, cli: _T | None = None, env: _T | None = None, file: _T | None = None, default: _T | None = None
) -> _T | None:
    """The one precedence rule of every service setting: command line > environment > config file >
    default. ``None`` is "not given" at that level; 0 and "" are values (port 0: any free port)."""
    for value in (cli, env, file):
        if value is not None:
            return value
    return default


def _local_stack_env() -> dict[str, str]:
    # Read from the file `plantstream stack up` leaves, not the stack module: core never imports dev tooling.
    from plantstream.paths import local_stack_env

    return local_stack_env()


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
    except yaml.YAMLError as exc:  # e.g. ReaderError: a control character the YAML spec forbids
        raise ConfigError(f"{p}: invalid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}:1: the top level must be a mapping of keys, not {type(data).__name__}")
    try:
        return model.model_validate(data, context={"config_path": str(p)})
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to be a configuration") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(x) for x in loc) or "(top level)"
            line = _line_of(node, loc)
            lines.append(f"{p}:{line}: key '{key}': {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
