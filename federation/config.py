"""``platform.example.yaml``: where the platform listens, its own database, the nodes it harvests,
member levels with their quotas, the members, and the alert thresholds.

Fail-closed rules checked here (a bad file exits 2 naming file, line and key):

* every API call needs a member token; there is no anonymous level;
* a level grants the ``public`` or ``member`` data tier, never ``owner``: core-grade data stays at
  its node, whatever the platform's configuration says;
* a non-loopback listen address needs TLS (``tls_cert`` + ``tls_key``), or ``tls_proxy: true``
  saying a TLS terminator stands in front, since member tokens travel in every request.

Secrets (node credentials, member tokens, the DSN's password) are ``SecretStr``: masked in
``repr``, in ``describe()`` and in every log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from plantstream.access import Tier
from plantstream.config import ConfigError, is_loopback, load_yaml, mask_url
from plantstream.domain.catalog import Access

_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DEFAULT_PORT = 8790


class Listen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="address to listen on (loopback unless TLS is configured)")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="0: any free port")
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain: serve HTTPS")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    tls_proxy: bool = Field(
        default=False, description="a TLS-terminating proxy stands in front: plain HTTP off loopback is allowed"
    )

    @model_validator(mode="after")
    def _tls(self) -> Listen:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        for name in ("tls_cert", "tls_key"):
            p = getattr(self, name)
            if p is not None and not p.is_file():
                raise ValueError(f"{name} {p}: no such file")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class Database(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: SecretStr = Field(
        default=SecretStr("postgresql://plantstream@127.0.0.1:55432/plantstream_platform"),
        description="the platform's own database (not a node's); PLANTSTREAM_PLATFORM_DSN or --dsn win",
    )
    pool_size: int = Field(default=8, ge=1, le=100)


class Node(BaseModel):
    """A data resource node: its id (as its catalog names itself), base URL and the credential the
    platform presents to it (``Authorization: Bearer``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID)
    url: str = Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$", max_length=500)
    credential: SecretStr
    title: str = ""

    @field_validator("url")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.rstrip("/")

    @field_validator("credential")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        s = v.get_secret_value()
        if len(s) < 8 or s != s.strip():
            raise ValueError("a node credential must be at least 8 characters without surrounding blanks")
        return v


class Quotas(BaseModel):
    """Per member of a level, per UTC day (and at once for pulls)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    products_per_day: int = Field(default=20, ge=0, description="distinct product versions downloaded from")
    cells_per_day: int = Field(default=100_000_000, ge=0, description="rows x columns of those products")
    bytes_per_day: int = Field(default=1_000_000_000, ge=0, description="bytes streamed through the platform")
    concurrent_pulls: int = Field(default=2, ge=1, le=64, description="downloads in progress at once")


class Level(BaseModel):
    """What a member level may use: a data tier (which grades) and access levels, within quotas."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: Literal["public", "member"] = Field(
        description="data tier the node applies: public (general grade) or member (important + general); "
        "core grade is never granted through the platform"
    )
    access: list[Access] = Field(min_length=1, description="product access levels: free, member, paid")
    quotas: Quotas = Field(default_factory=Quotas)

    @field_validator("tier", mode="before")
    @classmethod
    def _never_owner(cls, v: object) -> object:
        if v == Tier.OWNER.value:
            raise ValueError("the owner tier (core grade) is never granted through the platform")
        return v

    @property
    def data_tier(self) -> Tier:
        return Tier(self.tier)


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID)
    level: str
    token: SecretStr

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        s = v.get_secret_value()
        if len(s) < 16 or s != s.strip():
            raise ValueError("a member token must be at least 16 characters without surrounding blanks")
        return v


class Alerts(BaseModel):
    """Unusual patterns that raise an alert (audit record kind ``alert``, a metric, a log line)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    volume_factor: float = Field(default=10.0, gt=1, description="today's bytes above this x the median day")
    volume_min_bytes: int = Field(default=100_000_000, ge=0, description="...and above this many bytes")
    volume_history_days: int = Field(default=30, ge=1, le=366, description="earlier days the median is taken over")
    denied_count: int = Field(default=5, ge=1, description="this many refused requests of one member...")
    denied_window_s: float = Field(default=600.0, gt=0, description="...within this many seconds")


class PlatformConfig(BaseModel):
    """``plantstream platform serve|harvest|search|usage --config platform.yaml``."""

    model_config = ConfigDict(extra="forbid")

    listen: Listen = Field(default_factory=Listen)
    database: Database = Field(default_factory=Database)
    harvest_interval_s: float = Field(default=300.0, ge=1, le=86_400, description="scheduled catalog harvests")
    harvest_timeout_s: float = Field(default=15.0, gt=0, le=600, description="one node's catalog request")
    node_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="idle read timeout of a brokered download")
    nodes: list[Node] = Field(default_factory=list)
    levels: dict[str, Level] = Field(min_length=1)
    members: list[Member] = Field(default_factory=list)
    alerts: Alerts = Field(default_factory=Alerts)
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="/metrics on its own port too")

    @field_validator("levels")
    @classmethod
    def _level_names(cls, v: dict[str, Level]) -> dict[str, Level]:
        import re

        for name in v:
            if not re.match(_ID, name):
                raise ValueError(f"level name {name!r} must match {_ID}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PlatformConfig:
        seen: set[str] = set()
        for n in self.nodes:
            if n.id in seen:
                raise ValueError(f"node id {n.id!r} appears twice")
            seen.add(n.id)
        ids: set[str] = set()
        tokens: set[str] = set()
        for m in self.members:
            if m.level not in self.levels:
                raise ValueError(f"member {m.id!r}: level {m.level!r} is not one of {sorted(self.levels)}")
            if m.id in ids:
                raise ValueError(f"member id {m.id!r} appears twice")
            tok = m.token.get_secret_value()
            if tok in tokens:
                raise ValueError(f"member {m.id!r}: its token is another member's too")
            ids.add(m.id)
            tokens.add(tok)
        return self

    def node(self, node_id: str) -> Node | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def describe(self) -> dict[str, object]:
        """Safe to log: no credential, no token, the DSN's password masked."""
        return {
            "listen": f"{'https' if self.listen.tls else 'http'}://{self.listen.host}:{self.listen.port}",
            "db": mask_url(self.database.dsn.get_secret_value()),
            "nodes": {n.id: n.url for n in self.nodes},
            "levels": {k: {"tier": v.tier, "access": [a.value for a in v.access]} for k, v in self.levels.items()},
            "members": len(self.members),
            "harvest_interval_s": self.harvest_interval_s,
        }


def check_listen(cfg: PlatformConfig, path: str | Path = "config", host: str | None = None) -> None:
    """Fail closed: member tokens and node data cross this socket, so off loopback it must be TLS
    (here or at a proxy) and there must be members at all. ConfigError (exit 2) says why."""
    h = host if host is not None else cfg.listen.host
    if is_loopback(h):
        return
    if not cfg.members:
        raise ConfigError(f"{path}: key 'members': refusing to listen on {h} with no member configured")
    if not (cfg.listen.tls or cfg.listen.tls_proxy):
        raise ConfigError(
            f"{path}: key 'listen.host': refusing to listen on {h} without TLS: set listen.tls_cert and "
            "listen.tls_key, or listen.tls_proxy: true behind a TLS-terminating proxy, or listen on 127.0.0.1"
        )


def load_config(path: str | Path) -> PlatformConfig:
    """Load and validate; ConfigError (exit 2) names file, line and key."""
    return load_yaml(path, PlatformConfig)
