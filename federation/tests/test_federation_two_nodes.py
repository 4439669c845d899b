"""Two data resource nodes and a platform, for real (issue 18): a steel node and a fiber node, each
with its own PostgreSQL database, published products and a ``plantstream monitor`` process on
loopback, and a ``plantstream platform serve`` process with its own database.

Proves: both catalogs are harvested and one search finds both; a member's download through the
platform is byte-identical to a direct download at the node (and to the catalog's SHA-256); a
public member is refused an important-grade product by the node, the reason passed through and
both chains citing each other; a quota answers 429 naming the limit before the node is asked;
usage is metered free and paid apart; repeated refusals raise an alert (audit record, metric); a
node that goes down keeps its entries, marked stale; an edited platform audit row is found by
``plantstream.audit.verify`` and by ``plantstream audit verify --dsn``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from plantstream import audit
from plantstream.config import Settings
from plantstream.datasets import products as P
from plantstream.domain.catalog import AUDIT_HEADER
from plantstream.federation import store
from plantstream.stack import Stack
from plantstream.testing import datasets as testing
from plantstream.testing.plugin import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.timeout(300)]

T0 = datetime.fromtimestamp(testing.T0_US / 1e6, UTC)
SECONDS = 600
GENERAL = sorted(t.tag for t in testing.TAGS if t.grade.value == "general")
OWNER = "node-owner-token-01"
CRED = {"steel": "platform-credential-steel", "fiber": "platform-credential-fiber"}
MIA, PAT, SAM = "member-token-mia-000001", "public-token-pat-000001", "small-token-sam-0000001"
SAM_BYTES = 1000


@dataclass
class Node:
    id: str
    dsn: str
    products: Path
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None


def http(url: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError:
        return 0, {}, b""


def jget(url: str, token: str | None) -> tuple[int, Any]:
    code, _, body = http(url, token)
    return code, json.loads(body) if body else None


def _db(stack: Stack) -> str:
    name = f"pstest_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop(stack: Stack, name: str) -> None:
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _env(stack: Stack, dsn: str, state: Path, products: Path, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "PLANTSTREAM_DB_DSN": dsn,
        "PLANTSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{stack.ports.kafka}",
        "PLANTSTREAM_TOPIC_PREFIX": prefix,
        "PLANTSTREAM_STATE_DIR": str(state),
        "PLANTSTREAM_PRODUCTS_DIR": str(products),
        "PLANTSTREAM_LOG_FORMAT": "json",
    }


def _settings(stack: Stack, dsn: str, state: Path, prefix: str) -> Settings:
    return Settings(
        db_dsn=dsn,  # type: ignore[arg-type]
        kafka_bootstrap=f"127.0.0.1:{stack.ports.kafka}",
        mqtt_url=f"mqtt://127.0.0.1:{stack.ports.mqtt}",  # type: ignore[arg-type]
        topic_prefix=prefix,
        partitions=3,
        state_dir=state,
    )


def _pull(plant: str, tags: list[str]) -> dict[str, Any]:
    return {
        "plant": plant,
        "start": T0.isoformat(),
        "end": (T0 + timedelta(seconds=300)).isoformat(),
        "interval": "5s",
        "tags": tags,
    }


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen([sys.executable, "-m", "plantstream.cli", *args], env=env, stdout=out, stderr=out)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _up(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    def ready() -> bool:
        assert proc.poll() is None, f"{what} exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        return http(url + "/healthz", None)[0] == 200

    wait_until(ready, 60, f"{what} /healthz")


@pytest.fixture
def world(stack: Stack, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two nodes with published products, monitors running; the platform's config file."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    made: list[str] = []
    nodes: dict[str, Node] = {}
    try:
        for nid in ("steel", "fiber"):
            name = _db(stack)
            made.append(name)
            nodes[nid] = Node(nid, stack.dsn(name), tmp_path / nid / "products")
        steel, fiber = nodes["steel"], nodes["fiber"]
        testing.load(steel.dsn, SECONDS)
        testing.write(fiber.dsn, testing.fiber_records(SECONDS))
        sst = _settings(stack, steel.dsn, tmp_path / "steel" / "state", prefix)
        fst = _settings(stack, fiber.dsn, tmp_path / "fiber" / "state", prefix)

        def spec(name: str, field: str, access: str) -> P.ProductSpec:
            return P.ProductSpec.of(name, "1.0.0", field, access, "CC-BY-4.0", f"{name} product", "")

        P.publish(
            _pull("steel", GENERAL), spec("caster-open", "advanced-steel", "free"), settings=sst, root=steel.products
        )
        P.publish(
            _pull("steel", [*GENERAL, "mould.speed"]),
            spec("caster-speed", "advanced-steel", "member"),
            settings=sst,
            root=steel.products,
        )
        P.publish(
            _pull("steel", ["mould.level"]),
            spec("caster-paid", "advanced-steel", "paid"),
            settings=sst,
            root=steel.products,
        )
        P.publish(
            _pull("fiber", ["poy1.speed", "poy1.titer"]),
            spec("poy-spinning", "fibers-composites", "free"),
            settings=fst,
            root=fiber.products,
        )
        for node in nodes.values():
            port = free_port()
            node.url = f"http://127.0.0.1:{port}"
            cfg = tmp_path / f"monitor-{node.id}.yaml"
            cfg.write_text(
                yaml.safe_dump(
                    {
                        "tokens": {
                            OWNER: "owner",
                            CRED[node.id]: {"tier": "member", "name": "platform", "platform": True},
                        },
                        "anonymous_tier": "none",
                        "node_id": node.id,
                        "node_title": f"{node.id} node",
                        "products_dir": str(node.products),
                    }
                )
            )
            log = tmp_path / f"monitor-{node.id}.log"
            env = _env(stack, node.dsn, tmp_path / node.id / "state", node.products, prefix)
            node.proc = _spawn(["monitor", "--port", str(port), "--config", str(cfg)], env, log)
        for node in nodes.values():
            assert node.proc is not None
            _up(node.url, node.proc, tmp_path / f"monitor-{node.id}.log", f"{node.id} node")

        platform_db = f"pstest_{uuid.uuid4().hex[:10]}_platform"
        made.append(platform_db)
        pcfg = {
            "listen": {"host": "127.0.0.1", "port": free_port()},
            "database": {"dsn": stack.dsn(platform_db)},
            "harvest_interval_s": 3600,
            "harvest_timeout_s": 10,
            "nodes": [{"id": n.id, "url": n.url, "credential": CRED[n.id]} for n in nodes.values()],
            "levels": {
                "public": {"tier": "public", "access": ["free"]},
                "member": {"tier": "member", "access": ["free", "member", "paid"]},
                "small": {"tier": "member", "access": ["free", "member"], "quotas": {"bytes_per_day": SAM_BYTES}},
            },
            "members": [
                {"id": "mia", "level": "member", "token": MIA},
                {"id": "pat", "level": "public", "token": PAT},
                {"id": "sam", "level": "small", "token": SAM},
            ],
            # volume: with no earlier day, the minimum is the threshold; 1 byte makes a first download unusual.
            "alerts": {"denied_count": 5, "denied_window_s": 600, "volume_min_bytes": 1},
        }
        path = tmp_path / "platform.yaml"
        path.write_text(yaml.safe_dump(pcfg))
        yield {"nodes": nodes, "config": path, "cfg": pcfg, "dsn": stack.dsn(platform_db), "tmp": tmp_path}
    finally:
        for node in nodes.values():
            _stop(node.proc)
        for name in made:
            _drop(stack, name)


def _count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        head = audit.head(conn)
    return head.seq if head else 0


def test_two_nodes_and_a_platform(world: dict[str, Any]) -> None:
    nodes: dict[str, Node] = world["nodes"]
    dsn: str = world["dsn"]
    tmp: Path = world["tmp"]
    # The platform's database does not exist yet: --create-database makes it.
    plog = tmp / "platform.log"
    penv = {**os.environ, "PLANTSTREAM_LOG_FORMAT": "json"}
    penv.pop("PLANTSTREAM_PLATFORM_DSN", None)
    proc = _spawn(["platform", "serve", "--config", str(world["config"]), "--create-database"], penv, plog)
    url = f"http://127.0.0.1:{world['cfg']['listen']['port']}"
    try:
        _up(url, proc, plog, "platform")
        _run(world, nodes, dsn, url, proc)
    finally:
        _stop(proc)
    text = plog.read_text()
    for secret in (*CRED.values(), MIA, PAT, SAM, Stack().password()):
        assert secret not in text, "a secret reached the platform's log"


def _run(world: dict[str, Any], nodes: dict[str, Node], dsn: str, url: str, proc: subprocess.Popen[bytes]) -> None:
    # --- harvest and search ------------------------------------------------------------------------
    def harvested() -> list[dict[str, Any]] | None:
        code, body = jget(url + "/api/search", MIA)
        assert code == 200, body
        return body["results"] if body["count"] >= 4 else None

    try:
        results = wait_until(harvested, 60, "both catalogs harvested")
    except AssertionError as exc:
        with psycopg.connect(dsn, autocommit=True) as conn:
            states = {n.id: n.last_error for n in store.nodes(conn)}
        raise AssertionError(f"{exc}; harvest errors by node: {states}") from None
    assert results is not None
    found = {(r["ps:node"], r["name"]) for r in results}
    assert found == {
        ("steel", "caster-open"),
        ("steel", "caster-speed"),
        ("steel", "caster-paid"),
        ("fiber", "poy-spinning"),
    }
    assert all(r["ps:stale"] is False for r in results)
    code, body = jget(url + "/api/search?material_field=fibers-composites", PAT)
    assert code == 200 and [r["name"] for r in body["results"]] == ["poy-spinning"]
    # A public member finds what its tier may read (as the node's own catalog would show it).
    code, body = jget(url + "/api/search", PAT)
    assert code == 200 and {r["name"] for r in body["results"]} == {"caster-open", "caster-paid", "poy-spinning"}
    assert jget(url + "/api/products/steel/caster-speed/1.0.0", PAT)[0] == 404
    code, body = jget(url + "/api/search?grade=important", MIA)
    assert code == 200 and [(r["ps:node"], r["name"]) for r in body["results"]] == [("steel", "caster-speed")]
    code, body = jget(url + "/api/search?property=nonexistent-property", MIA)
    assert code == 200 and body["count"] == 0
    code, body = jget(url + "/api/search?grade=secret", MIA)
    assert code == 400 and body["field"] == "grade"
    assert jget(url + "/api/search", None)[0] == 401
    for bad, field in (
        ("steel/Caster/1.0.0", "name"),
        ("steel/caster-open/1.0", "version"),
        ("St eel/x/1.0.0", "node"),
    ):
        code, body = jget(f"{url}/api/products/{bad.replace(' ', '%20')}/files/x.parquet", MIA)
        assert code == 400 and body["field"] == field, (bad, body)
    code, body = jget(url + "/api/products/steel/caster-open/1.0.0/files/no/such.parquet", MIA)
    assert code == 404 and "lists no file" in body["detail"]
    assert jget(url + "/api/search", "not-a-member-token-at-all")[0] == 401

    # --- a member pulls through the platform: the bytes of a direct download at the node ------------
    code, entry = jget(url + "/api/products/steel/caster-speed/1.0.0", MIA)
    assert code == 200 and entry["ps:grade"] == "important" and entry["ps:access"] == "member"
    parquet = [d for d in entry["distribution"] if d["name"].endswith(".parquet")]
    assert parquet, entry["distribution"]
    steel = nodes["steel"]
    for dist in entry["distribution"]:
        path = dist["name"]
        code, hdrs, via_platform = http(f"{url}/api/products/steel/caster-speed/1.0.0/files/{path}", MIA)
        assert code == 200, via_platform[:500]
        code, _, direct = http(f"{steel.url}/api/products/caster-speed/1.0.0/files/{path}", OWNER)
        assert code == 200
        assert via_platform == direct, path
        assert hashlib.sha256(via_platform).hexdigest() == dist["sha256"] and len(via_platform) == dist["contentSize"]
        assert via_platform == (steel.products / "caster-speed" / "1.0.0" / path).read_bytes()
        assert AUDIT_HEADER in hdrs
    # A paid product for the same member: metered apart from the free ones.
    code, paid = jget(url + "/api/products/steel/caster-paid/1.0.0", MIA)
    paid_file = paid["distribution"][0]
    assert http(f"{url}/api/products/steel/caster-paid/1.0.0/files/{paid_file['name']}", MIA)[0] == 200

    # --- a public member and an important-grade product: the node refuses, the reason passes ---------
    node_before = _count(steel.dsn)
    first = parquet[0]["name"]
    code, hdrs, body = http(f"{url}/api/products/steel/caster-speed/1.0.0/files/{first}", PAT)
    assert code == 403, body
    problem = json.loads(body)
    assert problem["detail"], problem
    node_ref = hdrs[AUDIT_HEADER]
    assert _count(steel.dsn) > node_before  # the node decided (and recorded it)
    with psycopg.connect(dsn, autocommit=True) as conn:
        recs = audit.records(conn)
    decision = [r for r in recs if r.kind == "decision" and r.detail.get("by") == "node" and r.detail["status"] == 403]
    assert decision and decision[-1].detail["node_audit"] == node_ref
    assert decision[-1].detail["reason"] == problem["detail"]
    with psycopg.connect(steel.dsn, autocommit=True) as conn:
        seq, _, h = node_ref.partition(":")
        cited = conn.execute("SELECT hash, kind FROM audit_log WHERE seq = %s", (int(seq),)).fetchone()
        assert cited is not None and cited[0] == h and cited[1] == "decision"
        # The platform's record of the node's head proves nothing up to it was cut from the node's chain.
        assert audit.verify(conn, expect_head=node_ref).ok
    downloads = [r for r in recs if r.kind == "download"]
    assert downloads and all(r.detail["matches_catalog"] for r in downloads)

    # --- quota: 429 naming the limit, the node never asked ---------------------------------------
    node_before = _count(steel.dsn)
    code, open_entry = jget(url + "/api/products/steel/caster-open/1.0.0", SAM)
    assert code == 200
    big = next(d for d in open_entry["distribution"] if d["contentSize"] > SAM_BYTES)
    code, hdrs, body = http(f"{url}/api/products/steel/caster-open/1.0.0/files/{big['name']}", SAM)
    assert code == 429, body
    p = json.loads(body)
    assert p["field"] == "bytes_per_day" and p["detail"].startswith(f"bytes_per_day {SAM_BYTES} exceeded")
    assert int(hdrs["Retry-After"]) > 0
    assert _count(steel.dsn) == node_before

    # --- repeated refusals raise an alert ------------------------------------------------------------
    for _ in range(4):
        assert http(f"{url}/api/products/steel/caster-speed/1.0.0/files/{first}", PAT)[0] == 403
    with psycopg.connect(dsn, autocommit=True) as conn:
        alerts = store.alerts(conn, "pat")
        alert_recs = [r for r in audit.records(conn) if r.kind == "alert" and r.subject == "member/pat"]
    assert [a["rule"] for a in alerts] == ["denied"], alerts
    assert (
        len(alert_recs) == 1 and alert_recs[0].subject == "member/pat" and alert_recs[0].seq == alerts[0]["audit_seq"]
    )
    code, _, metrics = http(url + "/metrics", None)
    assert code == 200 and 'plantstream_platform_alerts_total{rule="denied"} 1.0' in metrics.decode()
    # mia's volume alert: raised once today, however many downloads followed the first.
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert [a["rule"] for a in store.alerts(conn, "mia")] == ["volume"]
        assert store.alerts(conn, "sam") == []
    assert 'plantstream_platform_alerts_total{rule="volume"} 1.0' in metrics.decode()

    code, me = jget(url + "/api/me", MIA)
    assert code == 200 and me["member"] == "mia" and me["tier"] == "member"
    assert (
        me["today"]["products"] == 2
        and me["today"]["bytes"] == sum(d["contentSize"] for d in entry["distribution"]) + paid_file["contentSize"]
    )

    # --- usage: per member and product, free and paid apart --------------------------------------
    from click.testing import CliRunner

    from plantstream.cli import cli

    res = CliRunner().invoke(
        cli, ["platform", "usage", "--config", str(world["config"]), "--dsn", dsn, "--member", "mia", "--json"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    day = report[0]["days"][0]
    speed_bytes = sum(d["contentSize"] for d in entry["distribution"])
    assert day["free"]["bytes"] == speed_bytes and day["paid"]["bytes"] == paid_file["contentSize"]
    assert day["products"] == 2 and day["free"]["downloads"] == len(entry["distribution"])
    assert report[0]["quotas"]["bytes_per_day"] > 0

    # --- a node goes down: its entries stay, marked stale; a download is a 502 ---------------------
    fiber = nodes["fiber"]
    _stop(fiber.proc)
    res = CliRunner().invoke(
        cli, ["platform", "harvest", "--config", str(world["config"]), "--dsn", dsn, "--node", "fiber"]
    )
    assert res.exit_code == 1 and "FAILED" in res.output, res.output
    code, body = jget(url + "/api/search?node=fiber", MIA)
    assert code == 200 and [(r["name"], r["ps:stale"]) for r in body["results"]] == [("poy-spinning", True)]
    poy = body["results"][0]["distribution"][0]["name"]
    code, _, body = http(f"{url}/api/products/fiber/poy-spinning/1.0.0/files/{poy}", MIA)
    assert code == 502 and b"cannot be reached" in body
    assert proc.poll() is None and http(url + "/healthz", None)[0] == 200
    res = CliRunner().invoke(cli, ["platform", "search", "--config", str(world["config"]), "--dsn", dsn, "--json"])
    assert res.exit_code == 0 and {r["name"] for r in json.loads(res.output)} >= {"poy-spinning", "caster-open"}

    # --- an edited audit row is found ----------------------------------------------------------------
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert audit.verify(conn).ok
        target = next(r for r in audit.records(conn) if r.kind == "download")
        conn.execute(
            "UPDATE audit_log SET detail = replace(detail, %s, %s) WHERE seq = %s",
            (f'"bytes":{target.detail["bytes"]}', f'"bytes":{target.detail["bytes"] - 1}', target.seq),
        )
        v = audit.verify(conn)
    assert not v.ok and v.first_bad == target.seq, v
    out = subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "audit", "verify", "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and f"record {target.seq}" in out.stderr, out
