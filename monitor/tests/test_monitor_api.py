"""The HTTP API against a real PostgreSQL loaded through the real sink, including withholding by tier."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from typing import Any

import jsonschema
import pytest

from plantstream.datasets.api import ENGINE
from plantstream.testing.monitor import MEMBER, OWNER, PUBLIC, TAGS, TOKENS_ENV, Served, ServerThread, value_at
from plantstream.testing.plugin import free_port, wait_until

pytestmark = pytest.mark.integration

CORE = {t[1] for t in TAGS if t[4].value == "core"}
IMPORTANT = {t[1] for t in TAGS if t[4].value == "important"}
ALL = {t[1] for t in TAGS}


def _tags(api: Served, token: str) -> set[str]:
    status, body = api.get("/api/tags", token)
    assert status == 200, body
    return {t["tag"] for t in body["tags"]}


def test_tokens_are_required_and_checked(api: Served) -> None:
    assert api.get("/api/me", None)[0] == 401
    assert api.get("/api/me", "not-a-token-at-all")[0] == 401
    for token, tier in ((OWNER, "owner"), (MEMBER, "member"), (PUBLIC, "public")):
        status, me = api.get("/api/me", token)
        assert status == 200 and me["tier"] == tier
    # The query-string form (EventSource cannot send headers) maps to the same tier.
    assert api.get("/api/me", PUBLIC, header=False)[1]["tier"] == "public"
    # Open, data-free endpoints.
    assert api.get("/healthz", None)[0] == 200
    assert api.get("/openapi.json", None)[0] == 200


def test_tags_withheld_per_tier(api: Served) -> None:
    assert _tags(api, OWNER) == ALL
    assert _tags(api, MEMBER) == ALL - CORE
    assert _tags(api, PUBLIC) == ALL - CORE - IMPORTANT
    _, body = api.get("/api/tags?plant=steel&equipment=acme/duisburg/steelmaking/caster1/strand", OWNER)
    strand = {t["tag"]: t for t in body["tags"]}
    assert set(strand) == {"caster1.casting_speed", "caster1.cooling_water_flow", "caster1.strand_temperature"}
    assert strand["caster1.casting_speed"]["unit"] == "m/min" and strand["caster1.casting_speed"]["grade"] == "core"
    assert strand["caster1.casting_speed"]["spec_property"] == "casting_speed"


def test_equipment_tree_counts_only_visible_tags(api: Served) -> None:
    def counts(token: str) -> dict[str, int]:
        out: dict[str, int] = {}

        def walk(nodes: list[dict[str, Any]]) -> None:
            for n in nodes:
                out[n["path"]] = n["tags"]
                walk(n["children"])

        for p in api.get("/api/equipment", token)[1]["plants"]:
            walk(p["roots"])
        return out

    owner, public = counts(OWNER), counts(PUBLIC)
    assert {p["plant"] for p in api.get("/api/equipment", OWNER)[1]["plants"]} == {"steel", "chemical", "fiber"}
    strand = "acme/duisburg/steelmaking/caster1/strand"
    assert owner[strand] == 3 and public[strand] == 2
    assert (
        owner["acme/duisburg/steelmaking/caster1/mould"] == 1 and public["acme/duisburg/steelmaking/caster1/mould"] == 0
    )


def test_latest_values_exact_and_withheld(api: Served) -> None:
    status, body = api.get("/api/latest?plant=steel", OWNER)
    assert status == 200
    got = {v["tag"]: v for v in body["values"]}
    steel = [(k, t) for k, t in enumerate(TAGS) if t[0] == "steel"]
    assert set(got) == {t[1] for _, t in steel}
    for k, t in steel:
        assert got[t[1]]["value"] == value_at(599, k)  # the last of 10 min of 1 Hz readings
        assert got[t[1]]["quality"] == "good"
    public = {v["tag"] for v in api.get("/api/latest?plant=steel", PUBLIC)[1]["values"]}
    assert public == {t[1] for _, t in steel if t[4].value == "general"}
    assert api.get("/api/latest", OWNER)[0] == 400  # plant is required, and the error says so
    assert "plant" in api.get("/api/latest", OWNER)[1]["detail"]


def test_history_downsampled_on_server(api: Served) -> None:
    status, h = api.get("/api/history?plant=steel&tag=caster1.casting_speed&start=-15m&points=20", OWNER)
    assert status == 200, h
    assert h["bucket_s"] == 60 and h["unit"] == "m/min"  # 15 min / 20 points -> 45 s -> next nice width
    assert 10 <= len(h["buckets"]) <= 12  # 10 min of data in 1 min buckets (edges may split one)
    assert sum(b["count"] for b in h["buckets"]) == 600
    assert sum(b["bad_count"] for b in h["buckets"]) == sum(1 for i in range(600) if i % 97 == 5)
    for b in h["buckets"]:
        assert b["min"] <= b["mean"] <= b["max"]
    # A withheld tag is indistinguishable from an absent one.
    hidden = api.get("/api/history?plant=steel&tag=caster1.casting_speed", PUBLIC)
    absent = api.get("/api/history?plant=steel&tag=no.such.tag", PUBLIC)
    assert hidden[0] == absent[0] == 404
    assert hidden[1]["title"] == absent[1]["title"]
    assert api.get("/api/history?plant=steel&tag=caster1.casting_speed&start=yesterday", OWNER)[0] == 400


def test_lots_specs_and_limits(api: Served) -> None:
    cur = api.get("/api/lots/current", PUBLIC)[1]["lots"]
    assert {(c["plant"], c["lot"]) for c in cur} == {("steel", "H240117"), ("chemical", "B-7731"), ("fiber", "D-0412")}
    tl = api.get("/api/lots?plant=steel&equipment=acme/duisburg/steelmaking&start=-1h", OWNER)[1]
    assert [s["lot"] for s in tl["segments"]] == ["H240117"] and tl["segments"][0]["end"] is None
    specs = {s["spec_id"]: s for s in api.get("/api/specs", PUBLIC)[1]["specs"]}
    speed = [lim for lim in specs["EN10025-2:S355J2"]["limits"] if lim["property"] == "casting_speed"]
    assert speed and speed[0]["basis"] == "process"
    lim = api.get("/api/limits?plant=steel&tag=caster1.casting_speed", OWNER)[1]
    assert (lim["lot"], lim["spec_id"]) == ("H240117", "EN10025-2:S355J2")
    assert (lim["min"], lim["max"]) == (speed[0]["min"], speed[0]["max"])
    # The core tag's limits are as withheld as the tag itself.
    assert api.get("/api/limits?plant=steel&tag=caster1.casting_speed", PUBLIC)[0] == 404
    # A tag without a spec property has no band.
    flow = api.get("/api/limits?plant=steel&tag=caster1.cooling_water_flow", PUBLIC)[1]
    assert flow["min"] is None and flow["max"] is None and flow["lot"] == "H240117"


def test_deviations_withheld_per_tier(api: Served) -> None:
    owner = {d["id"]: d for d in api.get("/api/deviations", OWNER)[1]["deviations"]}
    public = {d["id"] for d in api.get("/api/deviations", PUBLIC)[1]["deviations"]}
    assert set(owner) == {"dev-core-1", "dev-gen-1", "dev-lab-1"}
    assert public == {"dev-gen-1", "dev-lab-1"}  # the core tag's excursion is withheld; lab results are lot-level
    d = owner["dev-core-1"]
    assert (d["tag"], d["lot"], d["peak"], d["limit_min"], d["limit_max"]) == (
        "caster1.casting_speed",
        "H240117",
        1.71,
        0.9,
        1.6,
    )
    # Newest first.
    starts = [datetime.fromisoformat(x["start"]) for x in api.get("/api/deviations", OWNER)[1]["deviations"]]
    assert starts == sorted(starts, reverse=True)


def test_dataset_pulls_owner_only(api: Served, loaded_db: Any) -> None:
    import psycopg

    with psycopg.connect(loaded_db[0], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dataset_pulls (requester, tier, db_user, db_role, request) "
            "VALUES ('alice', 'member', session_user, 'plantstream_member', '{\"tags\": [\"reactor.level\"]}')"
        )
    status, body = api.get("/api/dataset-pulls", OWNER)
    assert status == 200 and body["available"] is True
    assert [(p["fields"]["requester"], p["fields"]["status"]) for p in body["pulls"]] == [("alice", "running")]
    assert api.get("/api/dataset-pulls", PUBLIC)[1] == {"available": False, "pulls": []}


def test_openapi_document_is_valid_and_typed(api: Served) -> None:
    status, doc = api.get("/openapi.json", None)
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/api/tags", "/api/latest", "/api/history", "/api/lots", "/api/specs", "/api/deviations"):
        ref = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.split("/")[-1] in doc["components"]["schemas"]
    # Real responses validate against the published schemas.
    schemas = doc["components"]["schemas"]
    for path, model in (("/api/tags", "TagList"), ("/api/history?plant=steel&tag=caster1.casting_speed", "History")):
        schema = {**schemas[model], "components": {"schemas": schemas}}
        body = api.get(path, OWNER)[1]
        jsonschema.validate(body, json.loads(json.dumps(schema)), resolver=_resolver(schema))


def _resolver(schema: dict[str, Any]) -> Any:
    return jsonschema.RefResolver("", schema)


def test_metrics_count_api_latency(api: Served) -> None:
    api.get("/api/tags", OWNER)
    status, text = api.get("/metrics", None)
    assert status == 200
    assert 'plantstream_monitor_api_seconds_count{route="/api/tags",status="2xx"}' in text
    assert "plantstream_monitor_clients 0.0" in text


def test_database_down_gives_503_not_a_crash(settings: Any) -> None:
    from pydantic import SecretStr

    from plantstream.monitor.auth import MonitorConfig
    from plantstream.monitor.web import make_app

    dead = settings.model_copy(update={"db_dsn": SecretStr(f"postgresql://nobody@127.0.0.1:{free_port()}/none")})
    with ServerThread(make_app(dead, MonitorConfig(), kafka=False, engine=ENGINE)) as served:
        status, body = served.get("/api/tags", None)  # no tokens configured: anonymous is public
        assert status == 503 and body["title"] == "database unavailable"
        assert served.get("/healthz", None)[0] == 200


def test_cli_serves_with_env_tokens(loaded_db: Any, settings_env: dict[str, str]) -> None:
    port = free_port()
    env = {**settings_env, "PLANTSTREAM_MONITOR_TOKENS": TOKENS_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "plantstream.cli", "monitor", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        served = Served(f"http://127.0.0.1:{port}", None, None)

        def up() -> bool:
            try:
                return bool(served.get("/healthz", None)[0] == 200)
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                return False

        wait_until(up, 20, "plantstream monitor to listen")
        assert served.get("/api/me", PUBLIC)[1]["tier"] == "public"
        assert served.get("/api/me", None)[0] == 401  # tokens configured: anonymous refused
        assert "caster1.casting_speed" not in json.dumps(served.get("/api/tags", PUBLIC)[1])
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.returncode in (0, -15), proc.stderr.read().decode() if proc.stderr else ""
