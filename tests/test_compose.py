"""The production deployment (compose/) is checked without Docker.

- docker-compose.yml validates against the Compose Specification JSON schema, taken at test time
  from an installed package (check-jsonschema vendors it), never from a committed copy;
- every plantstream command in it is a real command of the click tree (walked at test time);
- environment variables, healthchecks, dependency conditions, published ports, volumes, edge
  configs, Prometheus targets and dashboard metrics agree with the code and with compose/README.md.

Compose variables are interpolated with the values of compose/.env.example, as `docker compose
--env-file .env.example config` would, before anything is checked.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from plantstream.cli import cli
from plantstream.config import KafkaSecurity, Settings

COMPOSE_DIR = Path(__file__).resolve().parent.parent / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
README = COMPOSE_DIR / "README.md"

SCHEMA_DIST = "check-jsonschema"
SCHEMA_FILE = "compose-spec.json"
# Stages the brief allows to be missing for now; any other missing stage is a failure.
ONE_SHOT_CONDITION = "service_completed_successfully"
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
ACLS = COMPOSE_DIR / "kafka" / "acls.sh"
KAFKA_START = COMPOSE_DIR / "kafka" / "start.sh"
SINGLE_BROKER = COMPOSE_DIR / "docker-compose.single-broker.yml"


# ------------------------------------------------------------------ Compose interpolation


class InterpolationError(ValueError):
    pass


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate_str(text: str, env: Mapping[str, str], used: set[str] | None = None) -> str:
    """Compose-style ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``,
    ``${VAR?err}``, ``${VAR:+alt}``, ``$$``. Raises InterpolationError for a required unset variable."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        if used is not None:
            used.add(name)
        op, arg = m.group("op"), m.group("arg") or ""
        is_set = name in env
        non_empty = bool(env.get(name))
        if op in (":-", "-"):
            return env[name] if (non_empty if op == ":-" else is_set) else arg
        if op in (":?", "?"):
            if not (non_empty if op == ":?" else is_set):
                raise InterpolationError(f"required variable {name} is not set: {arg}")
            return env[name]
        if op in (":+", "+"):
            return arg if (non_empty if op == ":+" else is_set) else ""
        return env.get(name, "")

    return _VAR.sub(sub, text)


def interpolate(node: Any, env: Mapping[str, str], used: set[str] | None = None) -> Any:
    if isinstance(node, str):
        return interpolate_str(node, env, used)
    if isinstance(node, dict):
        return {k: interpolate(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, used) for v in node]
    return node


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path}:{lineno}: not KEY=VALUE: {line!r}"
        env[key] = value
    return env


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{COMPOSE_FILE}: no services"
    return data


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    result = interpolate(raw_compose, env_example)
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification schema as vendored by the installed check-jsonschema wheel.

    Read through the distribution's file list (not by importing check_jsonschema: only its data
    is needed, and its CLI module may not import with the click version the project pins)."""
    try:
        dist = importlib.metadata.distribution(SCHEMA_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"the Compose schema comes from the '{SCHEMA_DIST}' package (dev extra): pip install {SCHEMA_DIST}")
    files = [f for f in dist.files or [] if f.name == SCHEMA_FILE and "vendor" in f.parts]
    assert files, f"{SCHEMA_DIST} {dist.version} ships no vendored {SCHEMA_FILE}"
    schema = json.loads(files[0].read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def argv(svc: Mapping[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(x) for x in cmd]


def is_plantstream(svc: Mapping[str, Any]) -> bool:
    build = svc.get("build")
    return isinstance(build, dict) and str(build.get("dockerfile", "")).endswith("compose/Dockerfile")


def plantstream_services(services: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {name: svc for name, svc in services.items() if is_plantstream(svc)}
    assert found, "no service is built from compose/Dockerfile"
    return found


def depends_on(svc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):
        return {name: {"condition": "service_started"} for name in dep}
    return dict(dep)


def is_one_shot(name: str, services: Mapping[str, dict[str, Any]]) -> bool:
    return services[name].get("restart") == "no" and any(
        depends_on(other).get(name, {}).get("condition") == ONE_SHOT_CONDITION for other in services.values()
    )


def bind_mounts(svc: Mapping[str, Any]) -> dict[str, Path]:
    """Container path -> host path for the service's bind mounts (short syntax, relative to compose/)."""
    out: dict[str, Path] = {}
    for vol in svc.get("volumes") or []:
        if isinstance(vol, str):
            src, _, rest = vol.partition(":")
            target = rest.split(":")[0]
            if src.startswith((".", "/")):
                out[target] = (COMPOSE_DIR / src).resolve()
        elif isinstance(vol, dict) and vol.get("type") == "bind":
            out[vol["target"]] = (COMPOSE_DIR / vol["source"]).resolve()
    return out


def named_volumes(svc: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> named volume."""
    out: dict[str, str] = {}
    for vol in svc.get("volumes") or []:
        if isinstance(vol, str):
            src, _, rest = vol.partition(":")
            if rest and not src.startswith((".", "/", "~")):
                out[rest.split(":")[0]] = src
        elif isinstance(vol, dict) and vol.get("type") == "volume":
            out[vol["target"]] = vol["source"]
    return out


def walk_commands(group: click.Command, ctx: click.Context, path: tuple[str, ...] = ()) -> Iterator[click.Command]:
    yield group
    if isinstance(group, click.Group):
        for name in group.list_commands(ctx):
            sub = group.get_command(ctx, name)
            if sub is not None:
                yield from walk_commands(sub, ctx, (*path, name))


def resolve(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """Walk the click tree along ``args``: (command path, leaf command, remaining args).

    AssertionError for an unknown word."""
    ctx = click.Context(cli, info_name="plantstream")
    cmd: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        word = rest.pop(0)
        sub = cmd.get_command(ctx, word)
        if sub is None:
            known = ", ".join(cmd.list_commands(ctx))
            raise AssertionError(f"`plantstream {' '.join([*path, word])}` is not a command (known here: {known})")
        cmd = sub
        path.append(word)
    assert not isinstance(cmd, click.Group), f"`plantstream {' '.join(path)}` is a group, not a runnable command"
    return path, cmd, rest


# ------------------------------------------------------------------ schema


def test_compose_validates_against_compose_spec(compose: dict[str, Any]) -> None:
    schema = compose_spec_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "docker-compose.yml violates the Compose Specification:\n" + "\n".join(
        f"  {'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors[:20]
    )


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(lambda c: c["services"]["kafka-1"].update(helthcheck={"test": ["CMD", "true"]}), id="unknown-key"),
        pytest.param(lambda c: c["services"]["kafka-1"].update(ports="9094:9094"), id="ports-not-a-list"),
        pytest.param(
            lambda c: c["services"]["sink"]["depends_on"].update(migrate={"condition": 3}), id="bad-condition"
        ),
    ],
)
def test_schema_catches_broken_compose(compose: dict[str, Any], mutation: Any) -> None:
    """The validation above is live: the same schema rejects a damaged copy of our file."""
    schema = compose_spec_schema()
    broken = copy.deepcopy(compose)
    mutation(broken)
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_interpolation_needs_only_env_example(raw_compose: dict[str, Any], env_example: dict[str, str]) -> None:
    used: set[str] = set()
    interpolate(raw_compose, env_example, used)  # raises for a required variable missing from .env.example
    with pytest.raises(InterpolationError, match="POSTGRES_PASSWORD"):
        interpolate(raw_compose, {k: v for k, v in env_example.items() if k != "POSTGRES_PASSWORD"})
    unused = set(env_example) - used
    assert not unused, f".env.example sets variables docker-compose.yml never uses: {sorted(unused)}"


def test_env_example_holds_no_real_secret(env_example: dict[str, str]) -> None:
    secret_keys = [k for k in env_example if re.search(r"PASSWORD|SECRET|TOKEN|CLUSTER_ID", k)]
    assert {"POSTGRES_PASSWORD", "MQTT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= set(secret_keys)
    for key in secret_keys:
        assert env_example[key].startswith("change-me"), f".env.example {key} must be a change-me placeholder"
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert "compose/.env" in ignore, "the real .env must never enter the image build context"


def test_interpolation_rules() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate_str("${A:-x}/${E:-x}/${E-x}/${U-x}/$$A/$A", env) == "1/x//x/$A/1"
    assert interpolate_str("${A:+y}${U:+y}", env) == "y"
    with pytest.raises(InterpolationError):
        interpolate_str("${E:?need E}", env)


# ------------------------------------------------------------------ plantstream commands


def _command_cases() -> list[Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return [pytest.param(name, id=name) for name, svc in data["services"].items() if is_plantstream(svc)]


@pytest.mark.parametrize("service", _command_cases())
def test_service_command_is_a_real_cli_command(service: str, services: dict[str, dict[str, Any]]) -> None:
    svc = services[service]
    args = argv(svc)
    assert args[:1] == ["plantstream"], f"{service}: command must start with the plantstream console script: {args}"
    path, leaf, rest = resolve(args[1:])
    # Parse the remaining arguments exactly as click would (option names, types, choices, paths),
    # with container paths of bind-mounted files replaced by the files in compose/.
    mounts = bind_mounts(svc)
    host_args = [str(mounts[a]) if a in mounts else a for a in rest]
    try:
        leaf.make_context(" ".join(["plantstream", *path]), host_args)
    except click.exceptions.Exit:
        pass
    except click.ClickException as exc:
        pytest.fail(f"compose service {service!r}: `{' '.join(args)}` is rejected by the CLI: {exc.format_message()}")


def test_resolver_rejects_unknown_commands() -> None:
    with pytest.raises(AssertionError, match="not a command"):
        resolve(["topics", "no-such-subcommand"])
    with pytest.raises(AssertionError, match="group"):
        resolve(["topics"])
    path, leaf, rest = resolve(["topics", "create"])
    assert path == ["topics", "create"] and leaf.name == "create" and rest == []


def test_brief_commands_are_present(services: dict[str, dict[str, Any]]) -> None:
    commands = {" ".join(argv(s)[1:3]) for s in plantstream_services(services).values()}
    for expected in ("topics create", "db migrate", "edge run", "streams worker", "sink run", "sim steel"):
        assert expected in commands, f"no service runs `plantstream {expected}`"
    assert any(c.startswith("monitor") for c in commands)


# ------------------------------------------------------------------ environment


def known_env_vars() -> set[str]:
    """Variables the code reads: Settings, click ``envvar=`` of every built command, and
    ``PLANTSTREAM_*`` names read in the plantstream sources (e.g. the log level)."""
    known = set(Settings.ENV.values()) | set(KafkaSecurity.ENV.values())
    ctx = click.Context(cli, info_name="plantstream")
    for cmd in walk_commands(cli, ctx):
        for param in cmd.params:
            env = getattr(param, "envvar", None)
            known.update([env] if isinstance(env, str) else list(env or []))
    import plantstream

    for root in plantstream.__path__:
        for py in Path(root).rglob("*.py"):
            if "tests" not in py.parts:
                text = py.read_text(encoding="utf-8", errors="replace")
                known.update(re.findall(r"""environ(?:\.get)?[\[(]\s*["'](PLANTSTREAM_[A-Z0-9_]+)""", text))
                known.update(re.findall(r"""getenv\(\s*["'](PLANTSTREAM_[A-Z0-9_]+)""", text))
    return known


def test_env_vars_are_known_to_the_code(services: dict[str, dict[str, Any]]) -> None:
    known = known_env_vars()
    assert "PLANTSTREAM_LOG_LEVEL" in known  # read by plantstream/log.py: proves the source scan works
    for name, svc in plantstream_services(services).items():
        unknown = set(environment(svc)) - known
        assert not unknown, f"{name}: environment variables no plantstream code reads: {sorted(unknown)}"


def test_services_get_the_connections_they_need(services: dict[str, dict[str, Any]]) -> None:
    used: set[str] = set()
    for name, svc in plantstream_services(services).items():
        env = environment(svc)
        used |= set(env)
        words = argv(svc)[1:2]
        if argv(svc)[1:3] == ["db", "migrate"] or words == ["platform"]:
            # The platform talks to nodes over HTTP and to its own database, never to a node's Kafka.
            assert not any(k.startswith("PLANTSTREAM_KAFKA_") for k in env), f"{name} needs no Kafka credentials"
        else:
            assert env.get("PLANTSTREAM_KAFKA_BOOTSTRAP") == "kafka-1:9092,kafka-2:9092,kafka-3:9092", name
        if words[0] in ("db", "sink", "monitor", "dataset"):
            dsn = env.get("PLANTSTREAM_DB_DSN", "")
            assert dsn.startswith("postgresql://") and "@timescaledb:5432/" in dsn, f"{name}: DSN {dsn!r}"
        if words[0] in ("edge", "sim"):
            assert env.get("PLANTSTREAM_MQTT_URL", "").startswith("mqtt://"), name
        if "PLANTSTREAM_DB_DSN" in env:
            assert words[0] in ("db", "sink", "monitor", "dataset"), f"{name} needs no database password"
        settings = Settings.from_env(env)  # the real parser accepts the values
        assert settings.kafka_bootstrap == env.get("PLANTSTREAM_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    brief = {"PLANTSTREAM_DB_DSN", "PLANTSTREAM_KAFKA_BOOTSTRAP", "PLANTSTREAM_MQTT_URL"}
    brief |= {"PLANTSTREAM_TOPIC_PREFIX", "PLANTSTREAM_STATE_DIR"}
    assert brief <= used


# ------------------------------------------------------------------ health, restarts, ordering


def test_every_service_has_a_healthcheck_or_is_one_shot(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if is_one_shot(name, services):
            continue
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable") and hc.get("test"), f"{name}: long-running service without healthcheck"
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: restart policy"
    for name, svc in services.items():
        if svc.get("restart") == "no":
            assert is_one_shot(name, services), f"{name}: restart 'no' but nothing waits for it to complete"


def test_depends_on_use_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep, spec in depends_on(svc).items():
            assert dep in services, f"{name} depends on undefined {dep}"
            cond = spec.get("condition")
            assert cond in ("service_healthy", ONE_SHOT_CONDITION), f"{name} -> {dep}: condition {cond!r}"
            if cond == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy; it has no healthcheck"
            else:
                assert services[dep].get("restart") == "no", f"{dep} is awaited to complete but restarts"
            assert set(services[dep].get("profiles") or []) <= set(svc.get("profiles") or []), (
                f"{name} depends on {dep}, which only runs in profiles {services[dep].get('profiles')}"
            )
    sink = depends_on(services["sink"])
    assert sink["migrate"]["condition"] == ONE_SHOT_CONDITION
    migrate = argv(services["migrate"])
    assert migrate == ["plantstream", "db", "migrate"]
    for name, svc in plantstream_services(services).items():
        if argv(svc)[1] in ("edge", "streams", "sink"):
            assert depends_on(svc).get("topics", {}).get("condition") == ONE_SHOT_CONDITION, name
    assert argv(services["topics"]) == ["plantstream", "topics", "create"]


def test_resource_limits_and_log_rotation(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if is_one_shot(name, services):
            continue
        limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        assert limits.get("memory") and limits.get("cpus"), f"{name}: no cpu/memory limit"
        opts = (svc.get("logging") or {}).get("options") or {}
        assert opts.get("max-size"), f"{name}: container logs are not rotated"


def test_profiles(services: dict[str, dict[str, Any]]) -> None:
    by_profile: dict[str, set[str]] = {}
    for name, svc in services.items():
        for p in svc.get("profiles") or []:
            by_profile.setdefault(p, set()).add(name)
    assert set(by_profile) == {"sim", "observability"}
    sims = {" ".join(argv(services[n])[1:3]) for n in by_profile["sim"]}
    assert sims == {"sim steel", "sim chemical", "sim fiber"}
    assert {"prometheus", "grafana"} <= by_profile["observability"]


# ------------------------------------------------------------------ ports, volumes, scaling


def documented_ports(readme: str) -> set[tuple[str, int]]:
    section = readme.split("## Published ports", 1)
    assert len(section) == 2, "compose/README.md has no '## Published ports' section"
    body = section[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`?([a-z0-9-]+)`?\s*\|\s*(\d+)\s*\|", body, re.M)
    assert rows, "no port table rows in '## Published ports'"
    return {(svc, int(port)) for svc, port in rows}


def published_ports(services: Mapping[str, dict[str, Any]]) -> dict[tuple[str, int], str]:
    """(service, container port) -> host address it binds to."""
    out: dict[tuple[str, int], str] = {}
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                out[(name, int(port["target"]))] = str(port.get("host_ip", ""))
                continue
            parts = str(port).split(":")
            host_ip = parts[0] if len(parts) == 3 else ""
            out[(name, int(parts[-1].split("/")[0]))] = host_ip
    return out


def test_only_documented_ports_are_published(services: dict[str, dict[str, Any]], readme: str) -> None:
    published = published_ports(services)
    documented = documented_ports(readme)
    assert set(published) == documented, (
        f"published but undocumented: {sorted(set(published) - documented)}; "
        f"documented but not published: {sorted(documented - set(published))}"
    )
    for (name, port), host_ip in published.items():
        assert host_ip == "127.0.0.1", (
            f"{name}:{port} must bind to PUBLISH_ADDR (127.0.0.1 by default), not {host_ip!r}"
        )


def test_state_lives_in_named_volumes(services: dict[str, dict[str, Any]], compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    kafka_volumes = set()
    for node in KAFKA_NODES:
        kafka = services[node]
        vol = named_volumes(kafka).get(environment(kafka)["KAFKA_LOG_DIRS"])
        assert vol, f"{node}: Kafka log dir is not on a named volume"
        kafka_volumes.add(vol)
    assert len(kafka_volumes) == len(KAFKA_NODES), "Kafka nodes must not share a log volume"
    assert named_volumes(services["timescaledb"]).get("/var/lib/postgresql/data"), "database not on a named volume"
    conf = (COMPOSE_DIR / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    location = re.search(r"^persistence_location\s+(\S+)", conf, re.M)
    assert location and named_volumes(services["mosquitto"]).get(location.group(1).rstrip("/"))
    edges = {n: s for n, s in plantstream_services(services).items() if argv(s)[1:3] == ["edge", "run"]}
    assert set(edges) == {"edge-steel", "edge-chemical", "edge-fiber"}
    buffers = set()
    for name, svc in edges.items():
        vol = named_volumes(svc).get(environment(svc)["PLANTSTREAM_STATE_DIR"])
        assert vol, f"{name}: its state dir (durable buffer) is not a named volume"
        buffers.add(vol)
    assert len(buffers) == len(edges), "edge agents must not share a buffer volume"
    for svc in services.values():
        assert set(named_volumes(svc).values()) <= declared


def test_scalable_services(services: dict[str, dict[str, Any]]) -> None:
    streams = services["streams"]
    assert "container_name" not in streams and not streams.get("ports")
    assert int(streams["deploy"]["replicas"]) >= 2
    for name, svc in services.items():
        if (svc.get("deploy") or {}).get("replicas") is not None:
            assert "container_name" not in svc and not svc.get("ports"), f"{name} is scalable yet pinned"
        if int((svc.get("deploy") or {}).get("replicas", 1)) > 1:
            assert not named_volumes(svc), f"{name}: replicas would share a named volume"


# ------------------------------------------------------------------ image, edge configs, observability


def test_plantstream_services_share_one_image(raw_compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    ps = plantstream_services(services)
    assert len({str(s.get("image")) for s in ps.values()}) == 1
    for svc in ps.values():
        build = svc["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == COMPOSE_DIR / "Dockerfile"
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^RUN .*pip (install|wheel)", dockerfile, re.M), "Dockerfile must pip-install the project"
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0"), "services must not run as root"
    # Every service that runs the console script is built from the project image, and vice versa.
    for name, svc in services.items():
        assert (argv(svc)[:1] == ["plantstream"]) == is_plantstream(svc), name


def _edge_config_cases() -> list[Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return [
        pytest.param(name, id=name)
        for name, svc in data["services"].items()
        if is_plantstream(svc) and argv(svc)[1:3] == ["edge", "run"]
    ]


@pytest.mark.parametrize("service", _edge_config_cases())
def test_edge_config_exists_and_passes_edge_check(service: str, services: dict[str, dict[str, Any]]) -> None:
    svc = services[service]
    args = argv(svc)
    container_path = args[args.index("--config") + 1]
    mounts = bind_mounts(svc)
    assert container_path in mounts, f"{service}: --config {container_path} is not a bind-mounted file"
    host = mounts[container_path]
    assert host.is_file() and host.parent == COMPOSE_DIR / "edge", f"{service}: {host} missing"
    assert PurePosixPath(container_path).parent != PurePosixPath(environment(svc)["PLANTSTREAM_STATE_DIR"])
    ctx = click.Context(cli, info_name="plantstream")
    edge = cli.get_command(ctx, "edge")
    assert isinstance(edge, click.Group) and edge.get_command(ctx, "check") is not None, "no `plantstream edge check`"
    result = CliRunner().invoke(cli, ["--log-format", "text", "edge", "check", "--config", str(host)])
    assert result.exit_code == 0, f"plantstream edge check --config {host}:\n{result.output}"


@pytest.mark.parametrize("service", _edge_config_cases())
def test_edge_config_fits_the_container(service: str, services: dict[str, dict[str, Any]]) -> None:
    """The agent config is valid for the edge stage's model and wired to this deployment: metrics
    where Prometheus and the healthcheck look, buffer on the volume, Kafka from the environment,
    OPC-UA endpoints of the `sim` profile on the port the simulator serves."""
    from plantstream.edge import config as edge_config

    svc = services[service]
    env = environment(svc)
    args = argv(svc)
    host = bind_mounts(svc)[args[args.index("--config") + 1]]
    cfg = edge_config.load_config(host)
    assert cfg.metrics_port == int(env["PLANTSTREAM_METRICS_PORT"]), f"{host}: metrics_port"
    assert cfg.metrics_host == "0.0.0.0", f"{host}: metrics must listen beyond the container's loopback"
    assert cfg.kafka.bootstrap is None and cfg.kafka.topic_prefix is None, f"{host}: Kafka comes from the environment"
    settings = Settings.from_env(env)
    buffer = PurePosixPath(str(cfg.buffer_path(settings)))
    state_dir = PurePosixPath(env["PLANTSTREAM_STATE_DIR"])
    assert state_dir in buffer.parents, f"{host}: buffer {buffer} is not on the {state_dir} volume"
    sim_ports = {
        name: int(argv(s)[argv(s).index("--opcua-port") + 1])
        for name, s in services.items()
        if argv(s)[1:2] == ["sim"] and "--opcua-port" in argv(s)
    }
    for source in cfg.sources:
        if source.type == "opcua":
            m = re.match(r"opc\.tcp://([^:/]+):(\d+)", source.endpoint)
            assert m, source.endpoint
            if m.group(1) in services:
                assert sim_ports.get(m.group(1)) == int(m.group(2)), f"{host}: {source.endpoint} is not served"
        else:
            assert source.host in services, f"{host}: MQTT broker {source.host} is not a compose service"


def test_prometheus_scrapes_every_long_running_service(services: dict[str, dict[str, Any]]) -> None:
    prom = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    targets: set[tuple[str, int]] = set()
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                host, _, port = t.rpartition(":")
                targets.add((host, int(port)))
        for sd in job.get("dns_sd_configs", []):
            targets |= {(n, int(sd["port"])) for n in sd["names"]}
    for name, svc in plantstream_services(services).items():
        if is_one_shot(name, services) or "sim" in (svc.get("profiles") or []):
            continue
        port = int(environment(svc)["PLANTSTREAM_METRICS_PORT"])
        assert (name, port) in targets, f"Prometheus does not scrape {name}:{port}"
    for host, _ in targets - {("127.0.0.1", 9090)}:
        assert host in services, f"Prometheus scrapes unknown service {host}"


METRIC = re.compile(r"\bplantstream_[a-z0-9_]+")


def contract_metrics(readme: str) -> set[str]:
    section = readme.split("## Metrics contract", 1)
    assert len(section) == 2, "compose/README.md has no '## Metrics contract' section"
    body = section[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`(plantstream_[a-z0-9_]+)", body, re.M))


def test_dashboard_uses_only_contract_metrics(readme: str) -> None:
    contract = contract_metrics(readme)
    brief = {
        "plantstream_edge_readings_in_total",
        "plantstream_edge_buffer_bytes",
        "plantstream_edge_buffer_oldest_age_seconds",
        "plantstream_streams_readings_in_total",
        "plantstream_sink_rows_written_total",
        "plantstream_sink_write_seconds",
        "plantstream_consumer_lag",
        "plantstream_deadletters_total",
    }
    assert brief <= contract, f"missing from the README contract: {sorted(brief - contract)}"
    dash = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "plantstream.json").read_text(encoding="utf-8"))
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"]), "duplicate panel ids"
    used: set[str] = set()
    for panel in panels:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            used |= {re.sub(r"_(bucket|sum|count)$", "", m) for m in METRIC.findall(target["expr"])}
    assert used <= contract, f"dashboard queries metrics outside the contract: {sorted(used - contract)}"
    assert contract <= used, f"contract metrics without a panel: {sorted(contract - used)}"
    datasource = yaml.safe_load(
        (COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    uid = datasource["datasources"][0]["uid"]
    var = next(v for v in dash["templating"]["list"] if v["type"] == "datasource")
    assert var["current"]["value"] == uid


STAGE_OF_PREFIX = {"plantstream_edge_": "edge", "plantstream_streams_": "streams", "plantstream_sink_": "sinks"}
# Shared names every stage of the kind must export (dead letters: all three; lag: the consumers).
SHARED_METRICS = {
    "plantstream_deadletters_total": ("edge", "streams", "sinks"),
    "plantstream_consumer_lag": ("streams", "sinks"),
}


def _stage_sources(stage: str) -> str:
    """Source text of a stage, tests excluded."""
    root = Path(__file__).resolve().parent.parent / stage
    assert (root / "cli.py").exists(), f"{stage}/cli.py missing"
    return "\n".join(
        p.read_text(encoding="utf-8", errors="replace") for p in root.rglob("*.py") if "tests" not in p.parts
    )


def _defines(source: str, metric: str) -> bool:
    # prometheus-client counters are declared without the _total suffix.
    base = re.sub(r"_total$", "", metric)
    return re.search(rf"""["']{re.escape(base)}(_total)?["']""", source) is not None


def test_built_stages_export_the_contract_metrics(readme: str) -> None:
    """The dashboard is only as good as the names the stages export: each built stage declares the
    contract metrics of its prefix (and the shared ones)."""
    contract = contract_metrics(readme)
    missing: dict[str, list[str]] = {}
    checked = 0
    for metric in sorted(contract):
        stages = SHARED_METRICS.get(metric) or tuple(s for p, s in STAGE_OF_PREFIX.items() if metric.startswith(p))
        for stage in stages:
            source = _stage_sources(stage)
            checked += 1
            if not _defines(source, metric):
                missing.setdefault(stage, []).append(metric)
    assert checked > 0, "no stage checked"
    assert not missing, "stages do not export the metrics contract of compose/README.md: " + "; ".join(
        f"{stage}: {', '.join(names)}" for stage, names in sorted(missing.items())
    )


def test_grafana_provisioning_points_at_the_dashboard(services: dict[str, dict[str, Any]]) -> None:
    prov = yaml.safe_load(
        (COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "plantstream.yml").read_text(encoding="utf-8")
    )
    path = prov["providers"][0]["options"]["path"]
    mounts = bind_mounts(services["grafana"])
    assert mounts.get(path) == COMPOSE_DIR / "grafana" / "dashboards"
    assert mounts.get("/etc/grafana/provisioning") == COMPOSE_DIR / "grafana" / "provisioning"


def test_mosquitto_production_settings(services: dict[str, dict[str, Any]]) -> None:
    conf = (COMPOSE_DIR / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    active = {
        line.split()[0]: line.split(None, 1)[1] if len(line.split()) > 1 else ""
        for line in conf.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert active.get("persistence") == "true"
    assert active.get("allow_anonymous") == "false"
    pw_dir = str(PurePosixPath(active["password_file"]).parent)
    assert pw_dir in named_volumes(services["mosquitto"]), "password file is not on the shared auth volume"
    assert pw_dir in named_volumes(services["mqtt-passwd"])
    assert re.search(r"^#\s*listener 8883", conf, re.M), "the TLS listener (8883) should be documented, commented"
    assert bind_mounts(services["mosquitto"]).get("/mosquitto/config/mosquitto.conf") == COMPOSE_DIR / "mosquitto" / (
        "mosquitto.conf"
    )


# ------------------------------------------------------------------ Kafka security


def _listeners(env: Mapping[str, str]) -> dict[str, tuple[int, str]]:
    """listener name -> (container port, security protocol)"""
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    out: dict[str, tuple[int, str]] = {}
    for item in env["KAFKA_LISTENERS"].split(","):
        name, _, port = item.rpartition(":")
        name = name.split("://")[0]
        out[name] = (int(port), protocols[name])
    return out


def test_no_plaintext_listener_and_only_sasl_ssl_published(services: dict[str, dict[str, Any]]) -> None:
    published = published_ports(services)
    for node in KAFKA_NODES:
        env = environment(services[node])
        listeners = _listeners(env)
        assert set(listeners) == {"INTERNAL", "CONTROLLER", "EXTERNAL"}, node
        assert all(proto.startswith("SASL_") for _, proto in listeners.values()), f"{node}: {listeners}"
        outside = {port for (svc, port) in published if svc == node}
        assert outside == {listeners["EXTERNAL"][0]}, f"{node} publishes {outside}"
        assert listeners["EXTERNAL"][1] == "SASL_SSL"
        assert env["KAFKA_LISTENER_NAME_EXTERNAL_SSL_KEYSTORE_LOCATION"].startswith("/etc/kafka/certs/")
        assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false" and env["KAFKA_SUPER_USERS"] == "User:admin"
        assert "PLAINTEXT://" not in env["KAFKA_ADVERTISED_LISTENERS"]


def test_three_nodes_replicate_three_ways(services: dict[str, dict[str, Any]]) -> None:
    envs = [environment(services[n]) for n in KAFKA_NODES]
    assert sorted(e["KAFKA_NODE_ID"] for e in envs) == ["1", "2", "3"]
    assert {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs} == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    for e in envs:
        assert e["KAFKA_DEFAULT_REPLICATION_FACTOR"] == e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_MIN_INSYNC_REPLICAS"] == e["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    for name, svc in plantstream_services(services).items():
        env = environment(svc)
        if "PLANTSTREAM_KAFKA_BOOTSTRAP" in env:
            k = Settings.from_env(env).kafka
            assert (k.replication_factor, k.min_insync_replicas) == (3, 2), name


def _acl_table() -> list[tuple[str, str, str, str, str]]:
    text = ACLS.read_text(encoding="utf-8")
    body = text.split("<<TABLE\n", 1)[1].split("\nTABLE\n", 1)[0]
    rows = []
    for line in body.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            principal, op, res, pattern, name = line.split()
            rows.append((principal, op, res, pattern, name))
    return rows


def test_every_kafka_client_logs_in_as_its_own_user(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    scram_users = set(re.findall(r'scram ([a-z-]+) "\$SCRAM_', KAFKA_START.read_text(encoding="utf-8")))
    acl_users = {row[0] for row in _acl_table()}
    users: dict[str, str] = {}
    for name, svc in plantstream_services(services).items():
        env = environment(svc)
        if "PLANTSTREAM_KAFKA_BOOTSTRAP" not in env:
            continue
        k = Settings.from_env(env).kafka
        assert (k.security_protocol, k.sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-512"), name
        assert k.sasl_username in scram_users, f"{name}: user {k.sasl_username} has no SCRAM credential"
        assert k.sasl_username == "admin" or k.sasl_username in acl_users, f"{name}: no ACLs for {k.sasl_username}"
        users[name] = str(k.sasl_username)
    assert users["topics"] == "admin"  # topic creation is the only admin client
    assert {u for n, u in users.items() if n != "topics"}.isdisjoint({"admin"})
    # Long-running services each have their own user (a simulator speaks as its plant's edge).
    running = {n: u for n, u in users.items() if not n.startswith("sim-") and n != "topics"}
    assert len(set(running.values())) == len(running), running
    assert scram_users == {"admin", *running.values()}
    for var in re.findall(r"\$\{(KAFKA_[A-Z_]+_PASSWORD)", COMPOSE_FILE.read_text(encoding="utf-8")):
        assert env_example[var].startswith("change-me"), var


def test_acls_give_each_service_only_what_it_needs() -> None:
    grants: dict[str, set[tuple[str, str, str]]] = {}
    for principal, op, res, pattern, name in _acl_table():
        assert op in ("Read", "Write", "Describe", "IdempotentWrite", "All"), op
        assert pattern in ("literal", "prefixed") and res in ("topic", "group", "cluster"), (res, pattern)
        grants.setdefault(principal, set()).add((op, res, name))
    P = "{P}"
    writes = {u: {n for op, r, n in g if r == "topic" and op in ("Write", "All")} for u, g in grants.items()}
    reads = {u: {n for op, r, n in g if r == "topic" and op in ("Read", "All")} for u, g in grants.items()}
    for edge in ("edge-steel", "edge-chemical", "edge-fiber"):
        assert writes[edge] == {f"{P}.readings.raw.v1", f"{P}.tags.v1", f"{P}.context.v1", f"{P}.deadletter.v1"}
        assert reads[edge] == set(), f"{edge} reads nothing"
    # Only edges may write tag metadata (grades), and nobody but streams writes processed topics.
    assert {u for u, w in writes.items() if f"{P}.tags.v1" in w} == {"edge-steel", "edge-chemical", "edge-fiber"}
    for topic in (f"{P}.readings.clean.v1", f"{P}.aggregates.v1", f"{P}.deviations.v1"):
        assert {u for u, w in writes.items() if topic in w} == {"streams"}, topic
    assert reads["streams"] >= {f"{P}.readings.raw.v1", f"{P}.tags.v1", f"{P}.context.v1"}
    assert f"{P}.readings.raw.v1" not in writes["streams"]
    assert writes["sink"] == {f"{P}.deadletter.v1"} and writes["monitor"] == set()
    assert reads["monitor"] == {f"{P}.readings.clean.v1", f"{P}.aggregates.v1", f"{P}.deviations.v1"}
    # "All" only on the worker's own Faust topics; no cluster right beyond idempotent produce.
    assert {(u, n) for u, g in grants.items() for op, _r, n in g if op == "All"} == {("streams", f"{P}-streams")}
    assert all(op == "IdempotentWrite" for g in grants.values() for op, r, _n in g if r == "cluster")
    assert "admin" not in grants  # the super user needs no ACL


def test_single_broker_override_turns_two_nodes_off(services: dict[str, dict[str, Any]]) -> None:
    override = yaml.safe_load(SINGLE_BROKER.read_text(encoding="utf-8"))
    assert set(override["services"]) == {"kafka-2", "kafka-3"}
    assert all(svc == {"profiles": ["three-nodes"]} for svc in override["services"].values())
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for node in ("kafka-2", "kafka-3"):
            if node in deps:
                assert deps[node].get("required") is False, f"{name} would not start without {node}"
