"""Tokens -> tiers (and requester names), and what a tier may see.

Tokens come from a YAML file (``tokens: {<token>: owner|member|public}``, or with a requester name
``<token>: {tier: member, name: mia}``, or a platform credential ``{tier: member, name: hub,
platform: true}``) and/or the environment variable
``PLANTSTREAM_MONITOR_TOKENS="tok1=owner,tok2=member:mia,tok3=member:hub:platform"`` (the
environment wins on a clash).
The name is what dataset pulls record as their requester; without one it is ``token-`` and the
first 12 hex digits of the token's SHA-256, so the token itself is never stored or shown.
A request presents its token as ``Authorization: Bearer <token>`` or ``?token=<token>`` (the
browser's EventSource cannot set headers). Comparison is constant-time over every configured
token, so response time does not reveal a prefix match.

Fail-closed rules:

* an unknown or malformed token is rejected (401), never downgraded to a tier;
* a request without a token gets ``anonymous_tier`` (default: ``public`` when no token is
  configured at all, so a fresh install shows only general-grade data; ``none`` once tokens exist);
* a tag whose grade is unknown is treated as core-grade (only the owner tier sees it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from plantstream.access import READABLE, Tier
from plantstream.config import ConfigError, load_yaml
from plantstream.contract import Grade

TOKENS_ENV = "PLANTSTREAM_MONITOR_TOKENS"
ANONYMOUS = "anonymous"
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class TokenSpec(BaseModel):
    """A token's tier and the (non-secret) name its dataset pulls are recorded under."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: Tier
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    # A platform credential (issue 18): the platform of a "1+N" data program speaks for its members
    # with it, asserting a member's tier and access levels in headers (never above this tier).
    platform: bool = False


class MonitorConfig(BaseModel):
    """``monitor.example.yaml``: tokens and live-stream tuning."""

    model_config = ConfigDict(extra="forbid")

    tokens: dict[str, Tier | TokenSpec] = Field(default_factory=dict)
    # Tier for requests without a token; None: such requests are refused. Unset: public when no
    # token is configured, refused otherwise.
    anonymous_tier: Tier | Literal["none"] | None = None
    # Events buffered per SSE client before the oldest are dropped (a slow browser never blocks
    # the Kafka bridge or the other clients).
    client_queue: int = Field(default=2000, ge=10, le=1_000_000)
    # How often the grade map is reloaded from the tag registry (tags first seen in readings).
    grade_refresh_s: float = Field(default=30.0, gt=0)
    # Forward the 1 min windows too (the page uses the 1 s windows only).
    forward_1m: bool = False
    # Dataset pulls over HTTP: output root (default $PLANTSTREAM_STATE_DIR/datasets; each pull in
    # <pull id>/), pulls running at once (more answer 429), and how long a POST waits for the
    # request to pass the database checks (so an unknown tag is a 422, not a failed pull later).
    datasets_dir: Path | None = None
    # Dataset products (issue 18): where `plantstream dataset publish` put them (default
    # $PLANTSTREAM_PRODUCTS_DIR, else $PLANTSTREAM_STATE_DIR/products), and how the catalog names
    # this node and its own URL (default: scheme and host of each request).
    products_dir: Path | None = None
    node_id: str = Field(default="plantstream-node", pattern=_NAME_PATTERN, description="the catalog's identifier")
    node_title: str = Field(default="plantstream data resource node", min_length=1, max_length=200)
    public_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$", description="base URL catalog links use"
    )
    max_concurrent_pulls: int = Field(default=1, ge=1, le=64)
    pull_answer_wait_s: float = Field(default=10.0, ge=0, le=300)
    # Bounds. Every one is enforced on the server and named in the answer when hit, so a client
    # (or a hostile one) learns which limit it ran into and cannot exhaust the process.
    max_pulls_per_token: int = Field(default=1, ge=1, le=64, description="pulls one token may run at once (429)")
    pull_max_rows: int = Field(
        default=20_000_000, ge=1, description="grid rows a pull may ask for, whatever its row_cap (422)"
    )
    pull_max_cells: dict[Tier, int] = Field(
        default_factory=lambda: {Tier.OWNER: 2_000_000_000, Tier.MEMBER: 500_000_000, Tier.PUBLIC: 100_000_000},
        description="rows x readable tags a pull of each tier may produce (422); a tier not listed cannot pull",
    )
    pull_statement_timeout_s: float = Field(
        default=600.0, gt=0, le=86_400, description="statement_timeout of every connection a pull opens"
    )
    sse_max_clients: int = Field(default=200, ge=1, le=100_000, description="live streams in total (503)")
    sse_max_per_token: int = Field(default=8, ge=1, le=10_000, description="live streams per token (429)")
    history_max_range_s: float = Field(
        default=31 * 86400.0, gt=0, description="longest end - start a history request may span (422)"
    )
    history_max_points: int = Field(default=5000, ge=1, le=100_000, description="most buckets per history (400)")
    api_max_inflight_per_token: int = Field(
        default=6, ge=1, le=10_000, description="API requests one token may have in progress at once (429)"
    )
    db_pool_size: int = Field(
        default=10, ge=1, le=200, description="database connections of the API; keep above api_max_inflight_per_token"
    )
    api_statement_timeout_s: float = Field(
        default=15.0, gt=0, le=3600, description="statement_timeout of API queries; history over it: 422"
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Prometheus /metrics on its own port too (--metrics-port > PLANTSTREAM_METRICS_PORT > this)",
    )

    @field_validator("tokens")
    @classmethod
    def _tokens_not_blank(cls, v: dict[str, Tier | TokenSpec]) -> dict[str, Tier | TokenSpec]:
        for tok in v:
            if len(tok) < 8 or tok != tok.strip():
                raise ValueError("tokens must be at least 8 characters without surrounding blanks")
        return v


def parse_tokens_env(text: str) -> dict[str, Tier | TokenSpec]:
    """``"tok1=owner,tok2=member:mia"`` -> mapping; ConfigError names the variable and the bad entry."""
    out: dict[str, Tier | TokenSpec] = {}
    for i, item in enumerate(x.strip() for x in text.split(",")):
        if not item:
            continue
        tok, sep, tier = item.rpartition("=")
        tok = tok.strip()
        if not sep or not tok:
            raise ConfigError(f"environment variable {TOKENS_ENV}: entry {i + 1} must be token=tier")
        tier, colon, name = tier.partition(":")
        name, _, flag = name.partition(":")
        if flag and flag.strip() != "platform":
            raise ConfigError(
                f"environment variable {TOKENS_ENV}: entry {i + 1}: the third part may only be 'platform'"
            )
        try:
            out[tok] = (
                TokenSpec(tier=Tier(tier.strip()), name=name.strip(), platform=bool(flag))
                if colon
                else Tier(tier.strip())
            )
        except ValidationError:
            raise ConfigError(
                f"environment variable {TOKENS_ENV}: entry {i + 1} has name {name.strip()!r}; "
                "names are 1-64 letters, digits, '_', '.', '@' or '-'"
            ) from None
        except ValueError:
            raise ConfigError(
                f"environment variable {TOKENS_ENV}: entry {i + 1} has tier {tier.strip()!r}; "
                f"expected one of {', '.join(t.value for t in Tier)}"
            ) from None
        if len(tok) < 8:
            raise ConfigError(f"environment variable {TOKENS_ENV}: entry {i + 1}: tokens need at least 8 characters")
    return out


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> MonitorConfig:
    """The YAML file (if any) with tokens from the environment merged in. ConfigError on bad input."""
    cfg = load_yaml(path, MonitorConfig) if path else MonitorConfig()
    env = os.environ if env is None else env
    extra = parse_tokens_env(env.get(TOKENS_ENV, ""))
    if extra:
        cfg = cfg.model_copy(update={"tokens": {**cfg.tokens, **extra}})
    return cfg


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is: the tier its token grants and a non-secret name (``anonymous`` without a token)."""

    tier: Tier
    name: str
    anonymous: bool = False
    # Per-token limits count by this key (a hash prefix of the token; names may be shared).
    key: str = ANONYMOUS
    platform: bool = False  # a platform credential (TokenSpec.platform)


def token_label(token: str) -> str:
    """The default requester name of a token: a hash prefix, never the token."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]


class Authenticator:
    def __init__(self, cfg: MonitorConfig) -> None:
        self._tokens: list[tuple[bytes, Identity]] = []
        for tok, spec in cfg.tokens.items():
            tier, name = (spec.tier, spec.name) if isinstance(spec, TokenSpec) else (spec, None)
            platform = isinstance(spec, TokenSpec) and spec.platform
            label = token_label(tok)
            self._tokens.append((tok.encode(), Identity(tier, name or label, key=label, platform=platform)))
        anon = cfg.anonymous_tier
        if anon is None:
            anon = "none" if self._tokens else Tier.PUBLIC
        self.anonymous: Tier | None = None if anon == "none" else Tier(anon)

    def identify(self, token: str | None) -> Identity | None:
        """The identity of ``token`` (None or empty: anonymous); None means refused."""
        if token is None or token == "":
            return Identity(self.anonymous, ANONYMOUS, anonymous=True) if self.anonymous is not None else None
        given = token.encode()
        found: Identity | None = None
        for tok, ident in self._tokens:
            # No early exit: every request costs the same comparisons.
            if hmac.compare_digest(tok, given):
                found = ident
        return found

    def tier(self, token: str | None) -> Tier | None:
        """The tier of ``token`` (None: anonymous); None means refused."""
        ident = self.identify(token)
        return ident.tier if ident is not None else None


def token_of(authorization: str | None, query_token: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return "\x00invalid"  # a malformed header is a wrong token, not an anonymous request
    return query_token


def grade_visible(tier: Tier, grade: str | None) -> bool:
    """May ``tier`` see a tag of ``grade``? Unknown grades count as core (fail closed)."""
    try:
        g = Grade(grade) if grade is not None else Grade.CORE
    except ValueError:
        g = Grade.CORE
    return g in READABLE[tier]


def visible_grades(tier: Tier) -> list[str]:
    return sorted(g.value for g in READABLE[tier])
