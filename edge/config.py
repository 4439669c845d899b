"""Edge-agent configuration (YAML, validated with pydantic).

Load with :func:`load_config`; any problem raises :class:`plantstream.config.ConfigError` naming
``file:line: key``. Connection defaults that differ per deployment (Kafka bootstrap, topic prefix,
state directory) are left unset in the file and resolved from the environment when the agent
starts, so one config file works against the local stack and production alike.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self
from urllib.parse import SplitResult, unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from plantstream.config import ConfigError, Settings, load_yaml
from plantstream.contract import TagMeta, validate_equipment_path
from plantstream.edge.configbase import Backoff, TagBase, TagDefaults, _check_id, _Strict, check_std_property


class OpcuaTag(TagBase):
    node_id: str = Field(min_length=3, description="NodeId string, e.g. ns=2;s=caster1.mould_level")
    sampling_interval_ms: float | None = Field(None, ge=0)
    deadband_abs: float | None = Field(None, ge=0)
    deadband_percent: float | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def _one_deadband(self) -> OpcuaTag:
        if self.deadband_abs is not None and self.deadband_percent is not None:
            raise ValueError("set deadband_abs or deadband_percent, not both")
        return self


SecurityPolicyName = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]


class OpcuaSecurity(_Strict):
    """Secure channel. Certificates default to the PKI directory ``plantstream edge certs`` manages.
    ``auto`` (the default) takes the strongest endpoint the server offers for the configured
    identity and says which; None only when the server offers nothing else (edge/opcua/secure.py)."""

    policy: Literal["auto"] | SecurityPolicyName = Field(
        "auto", description="auto: the strongest the server offers; None only when asked for or the only one"
    )
    mode: Literal["auto", "None", "Sign", "SignAndEncrypt"] = "auto"
    pki_dir: Path | None = Field(None, description="default: $PLANTSTREAM_STATE_DIR/edge/pki")
    certificate: Path | None = Field(None, description="client certificate (DER/PEM); default <pki_dir>/own/cert.der")
    private_key: Path | None = Field(None, description="client key (PEM); default <pki_dir>/own/key.pem")
    trust_all_servers: bool = Field(
        False, description="accept any server certificate (commissioning only; logged as a warning)"
    )

    @model_validator(mode="after")
    def _pair(self) -> OpcuaSecurity:
        if (self.policy == "auto") != (self.mode == "auto"):
            raise ValueError("policy auto goes with mode auto (the server's strongest endpoint decides both)")
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError("policy None goes with mode None, and a security policy needs mode Sign or SignAndEncrypt")
        return self

    def resolved(self, base: Path) -> OpcuaSecurity:
        """Relative paths taken relative to ``base`` (the config file's folder)."""
        upd = {
            k: base / v
            for k in ("pki_dir", "certificate", "private_key")
            if (v := getattr(self, k)) is not None and not v.is_absolute()
        }
        return self.model_copy(update=upd) if upd else self


class OpcuaSource(_Strict):
    """An OPC-UA server; each tag is a monitored item (subscription) or a polled node."""

    type: Literal["opcua"]
    id: str
    endpoint: str
    mode: Literal["subscription", "poll"] = "subscription"
    publishing_interval_ms: float = Field(100, gt=0)
    sampling_interval_ms: float = Field(100, ge=0, description="default for tags without their own")
    queue_size: int = Field(100, ge=1, le=100_000, description="server-side queue per monitored item")
    poll_interval_ms: float = Field(1000, gt=0)
    monitored_item_batch: int = Field(200, ge=1, le=10_000)
    request_timeout_s: float = Field(4.0, gt=0)
    watchdog_interval_s: float = Field(1.0, gt=0)
    reconnect: Backoff = Field(default_factory=lambda: Backoff.model_validate({}))
    security: OpcuaSecurity = Field(default_factory=lambda: OpcuaSecurity.model_validate({}))
    username: str | None = Field(None, description="user identity token; anonymous when unset")
    password: SecretStr | None = None
    defaults: TagDefaults = Field(default_factory=TagDefaults)
    fast_decode: bool = Field(
        True,
        description="decode data-change notifications straight from the publish response's bytes (anything "
        "unusual still goes through asyncua's decoder); false = asyncua's decoder for everything",
    )
    tags: list[OpcuaTag] = Field(min_length=1)

    _check = field_validator("id")(_check_id)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith("opc.tcp://"):
            raise ValueError("endpoint must start with opc.tcp://")
        return v


class MqttTag(TagBase):
    """Metadata for a tag arriving over MQTT (published as TagMeta at start)."""


class MqttSubscription(_Strict):
    """One topic filter and how its topics and payloads become readings.

    ``template`` splits a topic into fields, one ``/``-segment per placeholder: ``{equipment+}``
    takes one or more segments (the ISA-95 path), ``{name}`` exactly one, ``{_}`` one ignored;
    literal segments must match. ``{tag}`` and ``{equipment}``/``{equipment+}`` name the reading;
    where the template lacks them, fixed ``tag``/``equipment`` values are required. Example:
    ``plantstream-sim/{plant}/{equipment+}/{tag}``. Without a template, the topic filter is
    derived from it; with one, ``topic`` defaults to the template's filter (``+``/``#``).
    """

    topic: str | None = None
    template: str | None = None
    equipment: str | None = None
    equipment_prefix: str = ""
    tag: str | None = None
    value_path: str = "value"
    timestamp_path: str | None = "ts_us"
    timestamp_format: Literal["epoch_us", "epoch_ms", "epoch_s", "iso8601"] = "epoch_us"
    unit_path: str | None = "unit"
    unit: str | None = Field(None, description="fixed unit; wins over unit_path")
    quality_path: str | None = "quality"
    readings_path: str | None = Field(
        None,
        description="several readings per message: '$' = the payload is a JSON array of readings, else a dotted "
        "path to a list of them in a JSON object; the other paths are then relative to each element",
    )
    tag_path: str | None = Field(None, description="tag name inside the reading (wins over the topic's {tag})")
    qos: Literal[0, 1] | None = None

    @model_validator(mode="after")
    def _shape(self) -> MqttSubscription:
        if self.template is None and self.topic is None:
            raise ValueError("set template (preferred) or topic")
        if self.readings_path is not None and (not self.readings_path or self.readings_path.startswith(".")):
            raise ValueError("readings_path must be '$' or a dotted path such as 'data.readings'")
        if self.template is not None:
            fields = template_fields(self.template)
            if "tag" not in fields and not self.tag and not self.tag_path:
                raise ValueError("template has no {tag}; set a fixed tag or a tag_path")
            if "equipment" not in fields and not self.equipment:
                raise ValueError("template has no {equipment} or {equipment+}; set a fixed equipment")
        elif not ((self.tag or self.tag_path) and self.equipment):
            raise ValueError("without a template, set a fixed equipment and a fixed tag (or a tag_path)")
        if self.equipment is not None:
            validate_equipment_path(self.equipment)
        return self

    @property
    def filter(self) -> str:
        if self.topic:
            return self.topic
        assert self.template is not None
        return template_filter(self.template)


_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}$")


def template_fields(template: str) -> dict[str, bool]:
    """Placeholder name -> multi-segment?; raises ValueError on a malformed template."""
    out: dict[str, bool] = {}
    multi = 0
    for seg in template.split("/"):
        if "{" in seg or "}" in seg:
            m = _PLACEHOLDER.match(seg)
            if not m:
                raise ValueError(f"template segment {seg!r} must be a whole placeholder like {{tag}} or {{equipment+}}")
            name, plus = m.group(1), bool(m.group(2))
            if name in out and name != "_":
                raise ValueError(f"placeholder {{{name}}} appears twice")
            multi += plus
            out[name] = plus
        elif seg in ("+", "#"):
            raise ValueError("a template uses placeholders, not MQTT wildcards")
    if multi > 1:
        raise ValueError("at most one multi-segment placeholder ({name+}) per template")
    return out


def template_filter(template: str) -> str:
    """MQTT filter matching a template: '+' per single placeholder, '#' from a multi one on."""
    out = []
    for seg in template.split("/"):
        m = _PLACEHOLDER.match(seg)
        if m and m.group(2):
            out.append("#")
            break
        out.append("+" if m else seg)
    return "/".join(out)


class MqttTls(_Strict):
    """TLS for the broker connection (``mqtts://`` turns it on with the system CAs)."""

    ca_file: Path | None = Field(
        None, description="PEM CA bundle that signed the broker's certificate; default: system CAs"
    )
    cert_file: Path | None = Field(None, description="client certificate (PEM) for brokers that require one")
    key_file: Path | None = Field(None, description="client private key (PEM); default: inside cert_file")
    check_hostname: bool = Field(True, description="verify the broker's name against its certificate")

    @model_validator(mode="after")
    def _pair(self) -> MqttTls:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        return self


class MqttConnection(_Strict):
    """How to reach an MQTT broker: shared by the JSON and the Sparkplug B sources.

    Without ``url`` the agent uses ``PLANTSTREAM_MQTT_URL`` at start (one config file for every
    environment). ``mqtts://`` (or a ``tls`` block) enables TLS; default ports 1883 / 8883.
    """

    id: str
    url: SecretStr | None = Field(
        None, description="mqtt://host:port or mqtts://host:port, may carry user:password; default PLANTSTREAM_MQTT_URL"
    )
    client_id: str | None = Field(None, description="fixed id so the broker keeps the session; default agent.source")
    username: str | None = None
    password: SecretStr | None = None
    tls: MqttTls | None = None
    qos: Literal[0, 1] = 1
    protocol: Literal["3.1.1", "5"] = "5"
    session_expiry_s: int = Field(7 * 86400, ge=0, description="MQTT 5: how long the broker keeps the session")
    keepalive_s: int = Field(30, ge=5, le=3600)
    max_payload_bytes: int = Field(65536, ge=16)
    accept_unlisted: bool = Field(True, description="readings of tags not listed under tags pass with defaults")
    reconnect: Backoff = Field(default_factory=lambda: Backoff.model_validate({}))
    defaults: TagDefaults = Field(default_factory=TagDefaults)

    _check = field_validator("id")(_check_id)

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_mqtt_url(v.get_secret_value())
        return v

    def _parts(self) -> SplitResult:
        if self.url is None:
            raise ValueError(f"source {self.id!r} has no url and PLANTSTREAM_MQTT_URL was not applied")
        return urlsplit(self.url.get_secret_value())

    @property
    def use_tls(self) -> bool:
        return self.tls is not None or self._parts().scheme in ("mqtts", "ssl")

    @property
    def host(self) -> str:
        return self._parts().hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return self._parts().port or (8883 if self.use_tls else 1883)

    def credentials(self) -> tuple[str | None, str | None]:
        parts = self._parts()
        user = self.username or (unquote(parts.username) if parts.username else None)
        pwd = (
            self.password.get_secret_value() if self.password else (unquote(parts.password) if parts.password else None)
        )
        return user, pwd

    def with_default_url(self, url: str) -> Self:
        """This source with ``url`` filled in when the file left it out (validated like the file's)."""
        if self.url is not None:
            return self
        check_mqtt_url(url)
        return self.model_copy(update={"url": SecretStr(url)})


def check_mqtt_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
        raise ValueError("url must be mqtt://host:port or mqtts://host:port")
    if not parts.hostname:
        raise ValueError("url needs a host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("url port must be a number") from None


class MqttSource(MqttConnection):
    """An MQTT broker carrying one JSON reading per message."""

    type: Literal["mqtt"]
    subscriptions: list[MqttSubscription] = Field(min_length=1)
    tags: list[MqttTag] = []


class SparkplugTag(TagBase):
    """Metadata for a tag derived from a Sparkplug B metric (published as TagMeta at start)."""


class SparkplugSource(MqttConnection):
    """Sparkplug B edge nodes and devices on an MQTT broker (``spBv1.0/<group>/<type>/<node>[/<device>]``).

    Names: ``{group}``, ``{node}``, ``{device}``, ``{metric}`` placeholders. Node-level metrics use
    ``node_equipment`` / ``node_tag``, device metrics ``device_equipment`` / ``device_tag``; the
    ISA-95 path is ``equipment_prefix`` + the equipment template.
    """

    type: Literal["sparkplug"]
    group_ids: list[str] = Field(default_factory=lambda: ["+"], min_length=1, description="'+' = every group")
    equipment_prefix: str = ""
    node_equipment: str = "{group}/{node}"
    device_equipment: str = "{group}/{node}/{device}"
    node_tag: str = "{node}.{metric}"
    device_tag: str = "{node}.{device}.{metric}"
    host_id: str | None = Field(
        None, description="publish Sparkplug 3.0 primary-host STATE (spBv1.0/STATE/<host_id>) as this id"
    )
    rebirth_interval_s: float = Field(5.0, gt=0, description="at most one rebirth request per node per interval")
    reorder_timeout_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="how long a seq gap may wait for its missing messages (out of order) before a rebirth is"
        " requested (Sparkplug's Reorder Timeout); 0 requests it at once",
    )
    tags: list[SparkplugTag] = []

    @field_validator("group_ids")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if g != "+" and (not g or any(c in g for c in "/+#")):
                raise ValueError(f"group id {g!r} must be '+' or a name without '/', '+', '#'")
        return v

    @field_validator("equipment_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v:
            validate_equipment_path(v)
        return v.rstrip("/")

    @field_validator("host_id")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError("host_id must be a name without '/', '+', '#'")
        return v


def _source_union() -> Any:
    """The ``sources`` item type: every registered connector's model, told apart by ``type``
    (edge/registry.py; a connector folder registers itself, nothing here lists them)."""
    from functools import reduce
    from operator import or_

    from plantstream.edge.registry import connectors

    models = [c.config_model() for c in connectors()]
    union = models[0] if len(models) == 1 else reduce(or_, models)
    return Annotated[union, Field(discriminator="type")]


if TYPE_CHECKING:
    # For the type checker only: the built-in connectors, so `src.type == "mqtt"` narrows. A
    # connector registered elsewhere validates and runs the same; to mypy it is one of these.
    from plantstream.edge.modbus.config import ModbusSource

    Source = OpcuaSource | MqttSource | SparkplugSource | ModbusSource
else:
    Source = _source_union()


class KafkaTarget(_Strict):
    bootstrap: str | None = Field(None, description="default: PLANTSTREAM_KAFKA_BOOTSTRAP")
    topic_prefix: str | None = Field(None, description="default: PLANTSTREAM_TOPIC_PREFIX")
    partitions: int | None = Field(None, ge=1, description="used only when the agent creates missing topics")
    create_topics: bool = True
    producer: dict[str, str | int | float | bool] = Field(default_factory=dict, description="librdkafka overrides")
    max_inflight: int = Field(2000, ge=1, description="buffered batches produced but not yet acknowledged")


class BufferConfig(_Strict):
    path: Path | None = Field(None, description="default: $PLANTSTREAM_STATE_DIR/edge/<agent id>/buffer.db")
    max_bytes: int = Field(1 << 30, ge=1 << 16)
    max_age_s: float = Field(7 * 86400, gt=0)
    synchronous: Literal["full", "normal"] = Field(
        "full", description="full: an acknowledged reading survives power loss; normal: survives process crashes"
    )
    commit_interval_ms: float = Field(
        10,
        ge=0,
        le=1000,
        description="group commit: at most one buffer commit (one fsync) per interval; what arrives meanwhile "
        "waits for it, unacknowledged (0: commit as soon as anything arrives)",
    )
    max_held_readings: int = Field(
        100_000,
        ge=0,
        description="while the buffer cannot be written (disk full, I/O error): readings from sources without "
        "acknowledgement (OPC-UA, MQTT QoS 0) held in memory at most; past this they are dropped and counted "
        "(dropped readings, reason storage_error). MQTT QoS 1 readings are never dropped: they stay "
        "unacknowledged, kept by the broker's session",
    )


class BatchConfig(_Strict):
    """One Kafka message per equipment unit and source, closed at max_readings or max_delay_ms."""

    max_readings: int = Field(500, ge=1, le=100_000, description="close a batch at this many readings")
    max_delay_ms: float = Field(50, gt=0, le=10_000, description="... or this long after its first reading")
    max_bytes: int = Field(
        1_000_000,
        ge=16_384,
        le=100_000_000,
        description="... or when its encoded size (estimated from above) would pass this many bytes; keep it at "
        "or below the broker's message.max.bytes (Kafka's default is about 1 MB) and the producer's; a single "
        "reading larger than a batch can hold is dead-lettered at decode",
    )


class TimestampWindow(_Strict):
    """How far a reading's timestamp may be from the agent's clock when it arrives.

    Outside the window the reading is kept but flagged bad (quality 2) with the reason, so one
    reading stamped in year 9999 or 1970 never passes as good data. Timestamps no stage can
    represent (before 1970, after year 9999) are dead-lettered at decode instead.
    """

    max_past_s: float = Field(
        7 * 86400,
        ge=1,
        le=100 * 365 * 86400,
        description="older than the receiving clock by more than this: flagged bad (backfills need more)",
    )
    max_future_s: float = Field(
        600,
        ge=0,
        le=365 * 86400,
        description="ahead of the receiving clock by more than this: flagged bad (allowed clock skew)",
    )


class EdgeConfig(_Strict):
    agent_id: str = Field(description="this agent's name (buffer and status file paths, metrics label)")
    plant: str = Field(description="plant id stamped on every reading (first part of every Kafka key)")
    sources: list[Source] = Field(
        min_length=1,
        description="OPC-UA, MQTT, Sparkplug B and Modbus TCP sources (one per registered connector, edge/registry.py), by `type`",
    )
    kafka: KafkaTarget = Field(default_factory=lambda: KafkaTarget.model_validate({}))
    buffer: BufferConfig = Field(
        default_factory=lambda: BufferConfig.model_validate({}), description="store-and-forward buffer (SQLite)"
    )
    batch: BatchConfig = Field(
        default_factory=lambda: BatchConfig.model_validate({}), description="readings per Kafka message"
    )
    timestamps: TimestampWindow = Field(
        default_factory=lambda: TimestampWindow.model_validate({}),
        description="window around the receiving clock outside which readings are flagged bad",
    )
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics; 0 = any free port")
    metrics_host: str = "127.0.0.1"
    progress_interval_s: float = Field(10.0, gt=0, description="seconds between progress log lines")

    _check = field_validator("agent_id", "plant")(_check_id)

    @model_validator(mode="after")
    def _unique(self) -> EdgeConfig:
        seen: set[str] = set()
        for s in self.sources:
            if s.id in seen:
                raise ValueError(f"source id {s.id!r} is used twice; each source owns its sequence stream")
            seen.add(s.id)
        tags: dict[str, str] = {}
        for s in self.sources:
            listed = s.tags
            for t in listed:
                if t.tag in tags:
                    raise ValueError(f"tag {t.tag!r} is configured twice (sources {tags[t.tag]!r} and {s.id!r})")
                tags[t.tag] = s.id
        return self

    # --- resolved at start from the environment --------------------------------------------

    def settings(self) -> Settings:
        return Settings.from_env()

    def bootstrap(self, settings: Settings | None = None) -> str:
        return self.kafka.bootstrap or (settings or self.settings()).kafka_bootstrap

    def topic_prefix(self, settings: Settings | None = None) -> str:
        return self.kafka.topic_prefix or (settings or self.settings()).topic_prefix

    def partitions(self, settings: Settings | None = None) -> int:
        return self.kafka.partitions or (settings or self.settings()).partitions

    def buffer_path(self, settings: Settings | None = None) -> Path:
        if self.buffer.path is not None:
            return self.buffer.path
        return (settings or self.settings()).state_dir / "edge" / self.agent_id / "buffer.db"

    def status_path(self, settings: Settings | None = None) -> Path:
        return self.buffer_path(settings).with_suffix(".status.json")

    def discovering_sources(self) -> dict[str, MqttSource | SparkplugSource]:
        """Sources that pass readings of tags they do not list (their TagMeta is made at first sighting)."""
        return {s.id: s for s in self.sources if isinstance(s, MqttSource | SparkplugSource) and s.accept_unlisted}

    def tag_metas(self) -> list[TagMeta]:
        out: list[TagMeta] = []
        for s in self.sources:
            for t in s.tags:
                address = t.node_id if isinstance(t, OpcuaTag) else f"{s.type}:{s.id}"
                out.append(t.meta(self.plant, s.defaults, address))
        return out


def unlisted_meta(plant: str, source: MqttSource | SparkplugSource, tag: str, equipment: str, unit: str) -> TagMeta:
    """TagMeta for a tag a source accepted without listing it: the source's defaults (grade above
    all, so an unlisted tag is not silently core when the site set another default), the unit the
    reading carried if any."""
    d = source.defaults
    return TagMeta(
        plant=plant,
        tag=tag,
        equipment=equipment,
        unit=unit or d.unit,
        datatype=d.datatype,
        grade=d.grade,
        source_address=f"{source.type}:{source.id}",
    )


class _AnyMapping(BaseModel):
    model_config = ConfigDict(extra="allow")


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop the union tag pydantic inserts after a source index ('sources', 0, 'opcua', ...)."""
    from plantstream.edge.registry import connectors

    out = list(loc)
    if len(out) >= 3 and out[0] == "sources" and out[2] in {c.type for c in connectors()}:
        del out[2]
    return tuple(out)


def default_unit_property_problems(cfg: EdgeConfig) -> list[tuple[tuple[int | str, ...], str]]:
    """(location, message) per tag whose standard property does not fit the unit or datatype it
    takes from its source's defaults (a tag's own unit is checked where the tag is validated)."""
    out: list[tuple[tuple[int | str, ...], str]] = []
    for i, s in enumerate(cfg.sources):
        for j, t in enumerate(s.tags):
            if not t.std_property or (t.unit is not None and t.datatype is not None):
                continue
            try:
                check_std_property(t.std_property, t.unit if t.unit is not None else s.defaults.unit,
                                   t.datatype or s.defaults.datatype)  # fmt: skip
            except ValueError as exc:
                out.append(
                    (("sources", i, "tags", j, "property"), f"{exc} (unit or datatype from the source's defaults)")
                )
    return out


def load_config(path: str | Path) -> EdgeConfig:
    """Validate ``path``; ConfigError (CLI exit 2) names file:line: key on any problem."""
    from pydantic import ValidationError

    from plantstream.config import _line_of

    load_yaml(path, _AnyMapping)  # unreadable file, bad YAML, non-mapping: its errors are already precise
    text = Path(path).read_text(encoding="utf-8")
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    try:
        cfg = EdgeConfig.model_validate(yaml.safe_load(text) or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            key = ".".join(str(x) for x in loc) or "(top level)"
            lines.append(f"{path}:{_line_of(node, loc)}: key '{key}': {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    problems = [
        f"{path}:{_line_of(node, loc)}: key '{'.'.join(str(x) for x in loc)}': {msg}"
        for loc, msg in default_unit_property_problems(cfg)
    ]
    if problems:
        raise ConfigError("\n".join(problems))
    # Relative paths (buffer, certificates) are relative to the config file, not to wherever the
    # agent was started.
    base = Path(path).parent
    if cfg.buffer.path is not None and not cfg.buffer.path.is_absolute():
        cfg = cfg.model_copy(update={"buffer": cfg.buffer.model_copy(update={"path": base / cfg.buffer.path})})
    sources = [
        s.model_copy(update={"security": s.security.resolved(base)}) if isinstance(s, OpcuaSource) else s
        for s in cfg.sources
    ]
    if sources != cfg.sources:
        cfg = cfg.model_copy(update={"sources": sources})
    return cfg


def dump_dict(cfg: EdgeConfig) -> dict[str, Any]:
    """Plain data for YAML, secrets revealed (the file is the secret's home), unset values left out."""
    data = cfg.model_dump(mode="json", exclude_none=True)

    def reveal(model: BaseModel, out: dict[str, Any]) -> None:
        for name in type(model).model_fields:
            v = getattr(model, name)
            if isinstance(v, SecretStr):
                out[name] = v.get_secret_value()
            elif isinstance(v, BaseModel) and name in out:
                reveal(v, out[name])
            elif isinstance(v, list) and name in out:
                for item, o in zip(v, out[name], strict=True):
                    if isinstance(item, BaseModel):
                        reveal(item, o)

    reveal(cfg, data)
    return data


__all__ = [
    "Backoff",
    "BatchConfig",
    "BufferConfig",
    "ConfigError",
    "EdgeConfig",
    "KafkaTarget",
    "MqttConnection",
    "MqttSource",
    "MqttSubscription",
    "MqttTag",
    "MqttTls",
    "OpcuaSecurity",
    "OpcuaSource",
    "OpcuaTag",
    "SparkplugSource",
    "SparkplugTag",
    "TagDefaults",
    "TimestampWindow",
    "dump_dict",
    "load_config",
    "template_fields",
    "template_filter",
]
