"""The node's dataset products over HTTP (issue 18) against a real PostgreSQL and a real monitor on
loopback: the catalog per tier (JSON-LD that parses back), downloads decided by tier in the
database and by access level, platform credentials, the audit chain, hostile names and paths."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from plantstream import audit
from plantstream.access import Tier
from plantstream.config import ConfigError, Settings
from plantstream.datasets import products as P
from plantstream.datasets.api import ENGINE
from plantstream.domain.catalog import (
    ACCESS_HEADER,
    AUDIT_HEADER,
    CATALOG_PATH,
    MEMBER_HEADER,
    TIER_HEADER,
    parse_catalog,
    product_path,
)
from plantstream.monitor import products as MP
from plantstream.monitor.auth import Identity, MonitorConfig, TokenSpec, parse_tokens_env
from plantstream.monitor.web import make_app
from plantstream.testing import datasets as testing
from plantstream.testing.monitor import Served, ServerThread
from plantstream.testing.plugin import wait_until

# The pure tests at the end need no service; the others carry this.
integration = pytest.mark.integration

OWNER, MIA, PAT, HUB, HUB_LITE = (
    "owner-token-0001",
    "member-token-mia",
    "public-token-pat",
    "platform-token-hub",
    "platform-token-lite",
)
TOKENS: dict[str, Tier | TokenSpec] = {
    OWNER: TokenSpec(tier=Tier.OWNER, name="olga"),
    MIA: TokenSpec(tier=Tier.MEMBER, name="mia"),
    PAT: TokenSpec(tier=Tier.PUBLIC, name="pat"),
    HUB: TokenSpec(tier=Tier.MEMBER, name="hub", platform=True),
    HUB_LITE: TokenSpec(tier=Tier.PUBLIC, name="hub-lite", platform=True),  # a platform limited to public data
}
T0 = datetime.fromtimestamp(testing.T0_US / 1e6, UTC)
GENERAL = sorted(t.tag for t in testing.TAGS if t.grade.value == "general")
IMPORTANT = sorted(t.tag for t in testing.TAGS if t.grade.value == "important")
# name -> (tags (None: all, core among them), access)
PRODUCTS: dict[str, tuple[list[str] | None, str]] = {
    "caster-open": (GENERAL, "free"),
    "caster-member": (GENERAL + IMPORTANT, "member"),
    "caster-paid": (IMPORTANT, "paid"),
    "caster-core": (None, "free"),
}


@dataclass
class Node:
    served: Served
    dsn: str
    root: Path
    products: dict[str, P.Product]

    def call(
        self, path: str, token: str | None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.served.url + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str, token: str | None, headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
        status, hdrs, body = self.call(path, token, headers)
        return status, json.loads(body), hdrs.get(AUDIT_HEADER, "")

    def data_file(self, name: str) -> str:
        return next(f.path for f in self.products[name].files if f.path.endswith(".parquet"))


@pytest.fixture
def node(fresh_db: str, settings: Settings, tmp_path: Path) -> Iterator[Node]:
    testing.load(fresh_db, 300, lot_s=60)
    root = tmp_path / "products"
    published = {}
    for name, (tags, access) in PRODUCTS.items():
        req: dict[str, Any] = {
            "plant": testing.PLANT,
            "start": T0.isoformat(),
            "end": (T0 + timedelta(seconds=300)).isoformat(),
            "interval": "10s",
            **({"tags": tags} if tags else {}),
        }
        spec = P.ProductSpec.of(name, "1.0.0", "advanced-steel", access, "CC-BY-4.0", f"Caster 1 ({name})")
        published[name] = P.publish(req, spec, settings=settings, root=root, publisher="olga")
    assert {n: p.grade for n, p in published.items()} == {
        "caster-open": "general",
        "caster-member": "important",
        "caster-paid": "important",
        "caster-core": "core",
    }
    cfg = MonitorConfig(tokens=TOKENS, anonymous_tier="none", products_dir=root, node_id="steel-node")
    with ServerThread(make_app(settings, cfg, kafka=False, engine=ENGINE)) as s:
        wait_until(lambda: s.get("/healthz", None)[0] == 200, 10, "monitor /healthz")
        yield Node(s, fresh_db, root, published)


def names_in_catalog(node: Node, token: str, headers: dict[str, str] | None = None) -> list[str]:
    status, doc, ref = node.json(CATALOG_PATH, token, headers)
    assert status == 200, doc
    assert ref, "every catalog answer cites the node's decision record"
    node_id, entries = parse_catalog(doc)
    assert node_id == "steel-node"
    return [e.name for e in entries]


@integration
@pytest.mark.timeout(240)
def test_catalog_per_tier_is_jsonld_that_parses_back(node: Node) -> None:
    assert names_in_catalog(node, OWNER) == ["caster-core", "caster-member", "caster-open", "caster-paid"]
    # Core never leaves the node; the public sees general-grade products only.
    assert names_in_catalog(node, MIA) == ["caster-member", "caster-open", "caster-paid"]
    assert names_in_catalog(node, PAT) == ["caster-open"]

    status, doc, _ = node.json(CATALOG_PATH, MIA)
    assert "sc:DataCatalog" in doc["@type"] and "dcat:Catalog" in doc["@type"]
    _, entries = parse_catalog(doc)
    by_name = {e.name: e for e in entries}
    member = by_name["caster-member"]
    rec = node.products["caster-member"]
    assert (member.version, member.grade.value, member.access.value, member.license) == (
        "1.0.0",
        "important",
        "member",
        "CC-BY-4.0",
    )
    assert member.snapshot == rec.snapshot and member.rows == rec.rows and member.bytes == rec.bytes
    assert {(f.path, f.sha256, f.bytes) for f in member.files} == {(f.path, f.sha256, f.bytes) for f in rec.files}
    assert member.temporal_start == "2025-06-01T00:00:00Z" and member.temporal_end == "2025-06-01T00:05:00Z"

    # Each entry links its Croissant file and quality report; both are served, byte for byte.
    entry = next(d for d in doc["dataset"] if d["name"] == "caster-member")
    base = node.served.url
    for link, fname in ((entry["ps:croissant"], "croissant.json"), (entry["ps:quality"], "quality.json")):
        assert link.startswith(base + product_path("caster-member", "1.0.0"))
        status, hdrs, body = node.call(link.removeprefix(base), MIA)
        assert status == 200, body
        assert body == (Path(rec.location) / fname).read_bytes()
        assert hdrs[AUDIT_HEADER]
    assert json.loads(node.call(entry["ps:croissant"].removeprefix(base), MIA)[2])["name"] == "caster-member"

    # One product as a JSON-LD Dataset, the same entry.
    status, one, _ = node.json(product_path("caster-member", "1.0.0"), MIA)
    assert status == 200 and one["@id"] == entry["@id"] and "@context" in one
    assert type(member).from_jsonld(one) == member


@integration
@pytest.mark.timeout(240)
def test_downloads_check_tier_in_the_database_then_access(node: Node) -> None:
    member_file = node.data_file("caster-member")
    paid_file = node.data_file("caster-paid")
    url = product_path("caster-member", "1.0.0") + "/files/" + member_file

    status, hdrs, body = node.call(url, MIA)
    assert status == 200
    rec = next(f for f in node.products["caster-member"].files if f.path == member_file)
    assert hashlib.sha256(body).hexdigest() == rec.sha256 and len(body) == rec.bytes
    assert hdrs["Content-Type"] == "application/vnd.apache.parquet" and hdrs[AUDIT_HEADER]

    # The public tier may not read an important-grade product: 403 with the reason.
    status, problem, ref = node.json(url, PAT)
    assert status == 403 and "tier public may not read" in problem["detail"] and ref
    # ... nor its description; a core product does not exist for anyone but the owner.
    assert node.json(product_path("caster-member", "1.0.0"), PAT)[0] == 403
    core = product_path("caster-core", "1.0.0")
    for token in (MIA, PAT):
        status, problem, _ = node.json(core, token)
        assert status == 404 and problem["detail"] == "no such product on this node"
        assert node.json(core + "/files/" + node.data_file("caster-core"), token)[0] == 404
    assert node.call(core + "/files/" + node.data_file("caster-core"), OWNER)[0] == 200

    # A member may read the paid product's grade but not use paid access.
    paid = product_path("caster-paid", "1.0.0")
    assert node.json(paid, MIA)[0] == 200
    status, problem, _ = node.json(paid + "/files/" + paid_file, MIA)
    assert status == 403 and "paid access" in problem["detail"] and "free, member" in problem["detail"]
    assert node.call(paid + "/files/" + paid_file, OWNER)[0] == 200

    # The tier check is the database's: a tag raised to core after publishing hides the product from
    # members although its recorded grade still says important.
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        conn.execute("UPDATE tags SET grade = 'core' WHERE tag = %s", (IMPORTANT[0],))
    status, problem, _ = node.json(url, MIA)
    assert status == 403 and "decided by the database" in problem["detail"]
    assert names_in_catalog(node, MIA) == ["caster-open"]
    assert node.call(url, OWNER)[0] == 200

    # Files stream from disk: a range request gets exactly the bytes asked for.
    status, hdrs, part = node.call(url, OWNER, {"Range": "bytes=0-9"})
    assert status == 206 and part == body[:10]


@integration
@pytest.mark.timeout(240)
def test_platform_headers_only_from_a_platform_credential(node: Node) -> None:
    paid = product_path("caster-paid", "1.0.0") + "/files/" + node.data_file("caster-paid")
    member = product_path("caster-member", "1.0.0") + "/files/" + node.data_file("caster-member")
    as_paid_member = {MEMBER_HEADER: "acme-materials", TIER_HEADER: "member", ACCESS_HEADER: "free,member,paid"}
    as_public = {MEMBER_HEADER: "walk-in", TIER_HEADER: "public", ACCESS_HEADER: "free"}

    # The platform speaks for a paying member: paid data is served.
    status, _, body = node.call(paid, HUB, as_paid_member)
    assert status == 200, body
    # ... for a public member: an important-grade product is refused.
    status, problem, _ = node.json(member, HUB, as_public)
    assert status == 403 and "tier public" in problem["detail"]
    assert names_in_catalog(node, HUB, as_public) == ["caster-open"]
    # Without headers the platform is its own tier (harvesting): member, free and member access.
    assert names_in_catalog(node, HUB) == ["caster-member", "caster-open", "caster-paid"]
    assert node.json(paid, HUB)[0] == 403
    # A platform credential of the public tier cannot assert more than its own tier.
    status, problem, _ = node.json(member, HUB_LITE, as_paid_member)
    assert status == 403 and "tier public" in problem["detail"]

    # A token that is not a platform credential may not send the headers at all: 400, fail closed.
    for token in (MIA, OWNER):
        status, problem, ref = node.json(paid, token, as_paid_member)
        assert status == 400 and MEMBER_HEADER in problem["detail"] and ref
        assert node.json(CATALOG_PATH, token, {TIER_HEADER: "member"})[0] == 400
    # Partial or malformed assertions are refused too.
    for bad in (
        {MEMBER_HEADER: "acme"},
        {TIER_HEADER: "member", ACCESS_HEADER: "paid"},
        {**as_paid_member, TIER_HEADER: "owner"},
        {**as_paid_member, ACCESS_HEADER: "free,gold"},
        {**as_paid_member, MEMBER_HEADER: "bad member id"},
    ):
        status, problem, _ = node.json(paid, HUB, bad)
        assert status == 400, (bad, problem)


@integration
@pytest.mark.timeout(240)
def test_every_request_decision_and_download_is_audited(node: Node) -> None:
    url = product_path("caster-open", "1.0.0") + "/files/" + node.data_file("caster-open")
    status, hdrs, body = node.call(url, HUB, {MEMBER_HEADER: "acme", TIER_HEADER: "public", ACCESS_HEADER: "free"})
    assert status == 200
    ref = hdrs[AUDIT_HEADER]
    denied = node.json(product_path("caster-paid", "1.0.0") + "/files/x.parquet", PAT)[2]

    def downloads() -> list[audit.AuditRecord]:
        with psycopg.connect(node.dsn) as conn:
            return [r for r in audit.records(conn) if r.kind == "download"]

    # The download record is written once the bytes are sent.
    wait_until(downloads, 10, "the download record")
    with psycopg.connect(node.dsn) as conn:
        recs = audit.records(conn)
        verdict = audit.verify(conn)
    assert verdict.ok and verdict.records == len(recs)
    by_ref = {r.ref: r for r in recs}
    decision = by_ref[ref]
    assert decision.kind == "decision" and decision.detail["outcome"] == "allow"
    assert decision.actor == "hub/acme" and decision.subject == f"caster-open@1.0.0/{node.data_file('caster-open')}"
    asked = next(r for r in recs if r.seq == decision.detail["request"])
    assert asked.kind == "request" and asked.detail["member"] == "acme" and asked.detail["tier"] == "public"
    dl = downloads()[-1]
    assert dl.detail["decision"] == decision.seq and dl.detail["outcome"] == "complete"
    assert dl.detail["sha256"] == hashlib.sha256(body).hexdigest()
    refused = by_ref[denied]
    assert refused.detail["outcome"] == "deny" and refused.detail["status"] == 403 and refused.actor == "pat"
    # The publishes are in the same chain.
    assert [r.subject for r in recs if r.kind == "publish"] == [f"{n}@1.0.0" for n in PRODUCTS]

    # An edited record is found.
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        conn.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = %s", (decision.seq,))
        verdict = audit.verify(conn)
    assert not verdict.ok and verdict.first_bad == decision.seq


@integration
@pytest.mark.timeout(240)
def test_bad_names_versions_and_paths_get_4xx(node: Node, tmp_path: Path) -> None:
    (node.root / "secret.txt").write_text("not a product file")
    (tmp_path / "secret.txt").write_text("not a product file")
    base = product_path("caster-open", "1.0.0")
    targets = [
        "/api/products/caster-open/1.0",
        "/api/products/caster-open/v1.0.0",
        "/api/products/caster-open/9.9.9",
        "/api/products/Caster-Open/1.0.0",
        "/api/products/" + "x" * 400 + "/1.0.0/croissant.json",
        "/api/products/caster-open/1.0.0%00/quality.json",
        "/api/products/..%2F..%2Fsecret.txt/1.0.0",
        "/api/products/caster-open/..%2F..%2F/files/secret.txt",
        base + "/files/../../secret.txt",
        base + "/files/..%2F..%2Fsecret.txt",
        base + "/files/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        base + "/files/data/../../../secret.txt",
        base + "/files//etc/passwd",
        base + "/files/data",
        base + "/files/secret.txt",
        base + "/files/%00",
        base + "/files/" + "a/" * 300 + "b",
    ]
    for target in targets:
        for token in (OWNER, PAT):
            status, _, body = node.call(target, token)
            assert 400 <= status < 500, (target, status, body[:200])
            assert b"not a product file" not in body
    assert node.call(base + "/files/x", None)[0] == 401
    assert node.call(base + "/files/x", "wrong-token-000")[0] == 401
    # The owner is still served afterwards.
    assert node.call(base + "/croissant.json", OWNER)[0] == 200


@integration
@pytest.mark.timeout(240)
def test_openapi_documents_the_product_routes(node: Node) -> None:
    status, doc = node.served.get("/openapi.json", None)
    assert status == 200
    for path in (
        CATALOG_PATH,
        "/api/products/{name}/{version}",
        "/api/products/{name}/{version}/croissant.json",
        "/api/products/{name}/{version}/quality.json",
        "/api/products/{name}/{version}/files/{path}",
    ):
        responses = doc["paths"][path]["get"]["responses"]
        assert {"200", "400", "401"} <= set(responses), path
        assert "application/ld+json" in responses["200"]["content"] or path.endswith(("quality.json", "{path}"))
        if path != CATALOG_PATH:
            assert "404" in responses and "403" in responses, path
    from openapi_spec_validator import validate

    validate(doc)


# --- pure: who is asking, and the order of the checks ------------------------------------------------


def test_tokens_env_names_platform_credentials() -> None:
    toks = parse_tokens_env("tok-owner-1=owner,tok-hub-0001=member:hub:platform,tok-mia-0001=member:mia")
    assert toks["tok-hub-0001"] == TokenSpec(tier=Tier.MEMBER, name="hub", platform=True)
    assert toks["tok-mia-0001"] == TokenSpec(tier=Tier.MEMBER, name="mia")
    with pytest.raises(ConfigError, match="third part may only be 'platform'"):
        parse_tokens_env("tok-hub-0001=member:hub:admin")


def test_caller_rules() -> None:
    hub = Identity(Tier.MEMBER, "hub", key="k", platform=True)
    mia = Identity(Tier.MEMBER, "mia", key="m")
    full = {MEMBER_HEADER: "acme", TIER_HEADER: "member", ACCESS_HEADER: "free, paid"}
    c = MP.caller_of(hub, full)
    assert (c.tier, sorted(c.access), c.member, c.actor) == (Tier.MEMBER, ["free", "paid"], "acme", "hub/acme")
    assert MP.caller_of(hub, {}).access == MP.DEFAULT_ACCESS[Tier.MEMBER]
    assert MP.caller_of(mia, {}).tier is Tier.MEMBER
    # Never above the credential's own tier.
    lite = Identity(Tier.PUBLIC, "lite", key="l", platform=True)
    assert MP.caller_of(lite, full).tier is Tier.PUBLIC
    with pytest.raises(MP.HeaderError) as e:
        MP.caller_of(mia, {ACCESS_HEADER: "paid"})
    assert e.value.header == ACCESS_HEADER
    with pytest.raises(MP.HeaderError) as e:
        MP.caller_of(hub, {**full, TIER_HEADER: "owner"})
    assert e.value.header == TIER_HEADER
    assert MP.valid_key("caster-open", "1.0.0")
    assert not any(
        MP.valid_key(n, v) for n, v in (("caster", "1.0"), ("Caster", "1.0.0"), ("c", "01.0.0"), ("..", "1.0.0"))
    )
