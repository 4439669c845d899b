"""Dataset pulls over HTTP against a real PostgreSQL loaded through the sink core: start, poll,
download, tier withholding, who may see a pull, bad requests, the slot limit, the OpenAPI document."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from plantstream.access import Tier
from plantstream.config import Settings
from plantstream.datasets.api import ENGINE
from plantstream.domain.pullrequest import PullRecord, PullRequest, Requester
from plantstream.monitor import pulls
from plantstream.monitor.auth import MonitorConfig, TokenSpec
from plantstream.monitor.web import K_METRICS, K_PULLS, make_app
from plantstream.testing import datasets as testing
from plantstream.testing.monitor import EngineOf, Served, ServerThread
from plantstream.testing.plugin import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OWNER, MIA, PAT, SAM = "owner-token-0001", "member-token-mia", "public-token-pat", "public-token-sam"
TOKENS: dict[str, Tier | TokenSpec] = {
    OWNER: Tier.OWNER,
    MIA: TokenSpec(tier=Tier.MEMBER, name="mia"),
    PAT: TokenSpec(tier=Tier.PUBLIC, name="pat"),
    SAM: Tier.PUBLIC,  # no name: recorded under a hash prefix of the token
}
T0 = datetime.fromtimestamp(testing.T0_US / 1e6, UTC)
SECONDS = 600
CORE = {t.tag for t in testing.TAGS if t.grade.value == "core"}
IMPORTANT = {t.tag for t in testing.TAGS if t.grade.value == "important"}


def body(**kw: Any) -> dict[str, Any]:
    return {
        "plant": testing.PLANT,
        "start": T0.isoformat(),
        "end": (T0 + timedelta(seconds=SECONDS)).isoformat(),
        "interval": "5s",
        **kw,
    }


@pytest.fixture
def served(fresh_db: str, settings: Settings, tmp_path: Path) -> Iterator[Served]:
    testing.load(fresh_db, SECONDS, lot_s=60)
    cfg = MonitorConfig(tokens=TOKENS, anonymous_tier="none", datasets_dir=tmp_path / "datasets")
    with ServerThread(make_app(settings, cfg, kafka=False, engine=ENGINE)) as s:
        wait_until(lambda: s.get("/healthz", None)[0] == 200, 10, "monitor /healthz")
        yield s


def poll_done(s: Served, where: str, token: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status, st = s.get(where, token)
        assert status == 200, st
        return st if st["status"] != "running" else None

    st = wait_until(done, 60, f"pull {where} to finish")
    assert st is not None
    return st


def test_member_pull_start_poll_download(served: Served, tmp_path: Path) -> None:
    status, accepted, headers = served.post("/api/dataset-pulls", body(labels=True), MIA)
    assert status == 202, accepted
    where = headers["Location"]
    assert where == accepted["location"] == f"/api/dataset-pulls/{accepted['id']}"
    st = poll_done(served, where, MIA)
    assert st["status"] == "done", st
    assert (st["requester"], st["tier"]) == ("mia", "member")
    assert st["rows"] == SECONDS // 5 and st["snapshot"]
    # Withheld tags are counted, never named: the member's tier cannot see the names, so the pull
    # never learns them and even the owner reads counts in its record.
    assert st["withheld"] == [{"grade": "core", "count": len(CORE), "tags": None}]
    assert served.get(where, OWNER)[1]["withheld"] == [{"grade": "core", "count": len(CORE), "tags": None}]
    assert not any(t in str(st) for t in CORE)
    # The row table (data/); with labels the pull also writes the lot table (lots/).
    parquet = [f for f in st["files"] if f["path"].startswith("data/") and f["path"].endswith(".parquet")]
    assert len(parquet) == 1 and {f["path"] for f in st["files"]} >= {"croissant.json", "README.md"}
    assert [f["path"] for f in st["files"] if f["path"].startswith("lots/")] == ["lots/split=all/part-00000.parquet"]

    code, hdrs, data = served.raw(parquet[0]["url"], MIA)
    assert code == 200 and hdrs["Content-Type"] == "application/vnd.apache.parquet"
    assert hashlib.sha256(data).hexdigest() == parquet[0]["sha256"] and len(data) == parquet[0]["bytes"]
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == st["rows"]
    assert not CORE & set(table.column_names)  # the core-grade tag never reaches a member
    assert set(table.column_names) >= IMPORTANT and "mould.level" in table.column_names
    # The other files, with their own content types; neither names the withheld tag (the card
    # counts withheld tags per grade).
    code, hdrs, croissant = served.raw(f"{where}/files/croissant.json", MIA)
    assert code == 200 and hdrs["Content-Type"] == "application/ld+json"
    assert parquet[0]["sha256"] in croissant.decode()
    code, hdrs, card = served.raw(f"{where}/files/README.md", MIA)
    assert code == 200 and hdrs["Content-Type"].startswith("text/markdown")
    assert "## Withheld tags" in card.decode() and f"| core | {len(CORE)} |" in card.decode()
    assert not any(t in croissant.decode() or t in card.decode() for t in CORE)
    # Output lives under datasets_dir/<pull id>.
    assert (tmp_path / "datasets" / str(accepted["id"]) / "croissant.json").is_file()

    # Nothing outside the record's file list is reachable, however the path is spelled.
    (tmp_path / "secret.txt").write_text("not yours")
    for evil in (
        "../../secret.txt",
        "..%2F..%2Fsecret.txt",
        "%2e%2e/%2e%2e/secret.txt",
        "data/../../../secret.txt",
        "/etc/passwd",
        "data",
    ):
        code, _, leaked = served.raw(f"{where}/files/{evil}", OWNER)
        assert code == 404 and b"not yours" not in leaked, evil

    # Owners see every pull; another requester (public) sees none of it, like an absent pull.
    assert served.get(where, OWNER)[1]["status"] == "done"
    hidden, absent = served.get(where, PAT), served.get("/api/dataset-pulls/999999", PAT)
    assert hidden[0] == absent[0] == 404 and hidden[1] == absent[1]
    assert served.raw(parquet[0]["url"], PAT)[0] == 404
    assert served.get(where, SAM)[0] == 404
    assert served.get("/api/dataset-pulls/not-a-number", OWNER)[0] == 404
    # The audit listing shows the requester's name, never a token.
    listing = served.get("/api/dataset-pulls", OWNER)[1]
    assert [p["fields"]["requester"] for p in listing["pulls"]] == ["mia"]
    assert MIA not in str(listing)


def test_public_pull_and_unnamed_token(served: Served) -> None:
    status, accepted, _ = served.post("/api/dataset-pulls", body(), SAM)
    assert status == 202, accepted
    where = accepted["location"]
    st = poll_done(served, where, SAM)
    assert st["status"] == "done"
    assert st["requester"].startswith("token-") and SAM not in st["requester"]
    assert {(w["grade"], w["count"], w["tags"]) for w in st["withheld"]} == {
        ("core", len(CORE), None),
        ("important", len(IMPORTANT), None),
    }
    # Another public requester cannot see it; its own requester and the owner can.
    assert served.get(where, PAT)[0] == 404
    assert served.get(where, OWNER)[0] == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"start": None}, "start"),
        ({"interval": "1ms", "row_cap": 1000}, "interval"),
        ({"gap": {"rule": "cubic"}}, "gap.rule"),
        ({"bogus": 1}, "bogus"),
        ({"tags": ["mould.level", "no.such.tag"]}, "tags"),  # found in the database, still a 422
        ({"start": "2020-01-01T00:00:00Z", "end": "2020-01-02T00:00:00Z"}, "start"),  # empty range
    ],
)
def test_bad_requests_answer_422_naming_the_field(
    served: Served, tmp_path: Path, payload: dict[str, Any], field: str
) -> None:
    b = {k: v for k, v in body(**payload).items() if v is not None}
    status, problem, headers = served.post("/api/dataset-pulls", b, MIA)
    assert status == 422, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["field"] == field and field.split(".")[0] in problem["detail"]
    assert not any((tmp_path / "datasets").glob("*/croissant.json"))


def test_malformed_and_anonymous_posts(served: Served) -> None:
    status, problem, _ = served.post("/api/dataset-pulls", b"{not json", MIA)
    assert status == 400 and "JSON" in problem["detail"]
    status, problem, _ = served.post("/api/dataset-pulls", [1, 2], MIA)
    assert status == 422 and problem["field"] == "(request)"
    assert served.post("/api/dataset-pulls", body(), None)[0] == 401
    assert served.post("/api/dataset-pulls", body(), "wrong-token-xyz")[0] == 401


def test_slot_limit_and_live_progress(settings: Settings, fresh_db: str, tmp_path: Path) -> None:
    """The runner's slot limits (429 naming the limit: in total and per token), the pull
    connections' statement_timeout and progress while running, with the pull itself stubbed
    (a real pull of this size ends before it can be observed)."""
    testing.load(fresh_db, SECONDS, lot_s=60)
    release = threading.Event()
    ids = iter(range(4242, 4300))
    timeouts: list[str] = []

    def slow_pull(req: PullRequest, who: Requester, **kw: Any) -> PullRecord:
        import psycopg

        # The DSN the pull connects with (its own and its helper connections) is bounded.
        with psycopg.connect(kw["dsn"]) as conn:
            row = conn.execute("SHOW statement_timeout").fetchone()
            assert row is not None
            timeouts.append(str(row[0]))
        pull_id = next(ids)
        kw["on_begin"](pull_id)
        kw["on_resolved"](None)
        p = pulls.Progress(rows=500, cells=3000, readings=3100, seconds=2.0)
        kw["progress"](p)
        assert release.wait(30)
        now = datetime.now(tz=UTC)
        return PullRecord(
            id=pull_id,
            requester=who.name,
            tier=who.tier.value,
            db_user="x",
            db_role="x",
            started_at=now,
            finished_at=now,
            status="complete",
            request=req.canonical(),
            snapshot="s",
            watermark="w",
            location=None,
            files=[],
            rows=500,
            cells=3000,
            withheld=[],
            error=None,
        )

    cfg = MonitorConfig(
        tokens=TOKENS,
        anonymous_tier="none",
        datasets_dir=tmp_path / "ds",
        max_concurrent_pulls=2,
        max_pulls_per_token=1,
        pull_statement_timeout_s=42,
    )
    app = make_app(settings, cfg, kafka=False, engine=ENGINE)
    real = app[K_PULLS]
    app[K_PULLS] = pulls.PullRunner(
        real.settings,
        tmp_path / "ds",
        max_concurrent=2,
        metrics=app[K_METRICS],
        engine=EngineOf(slow_pull),
        max_per_token=1,
    )
    with ServerThread(app) as s:
        status, accepted, _ = s.post("/api/dataset-pulls", body(), MIA)
        assert status == 202 and accepted == {
            "id": 4242,
            "status": "running",
            "location": "/api/dataset-pulls/4242",
        }
        assert timeouts == ["42s"]
        # The same token again: its own limit, named.
        status, problem, headers = s.post("/api/dataset-pulls", body(), MIA)
        assert status == 429 and headers["Retry-After"] == "30"
        assert "max_pulls_per_token" in problem["detail"] and "at most 1 per token" in problem["detail"]
        # Another token takes the second slot; a third finds the monitor full.
        assert s.post("/api/dataset-pulls", body(), OWNER)[0] == 202
        status, problem, headers = s.post("/api/dataset-pulls", body(), PAT)
        assert status == 429 and headers["Retry-After"] == "30"
        assert "max_concurrent_pulls" in problem["detail"] and "at most 2" in problem["detail"]
        st = s.get("/api/dataset-pulls/4242", MIA)[1]
        assert st["status"] == "running" and st["progress"]["rows"] == 500
        assert st["progress"]["rows_per_s"] == 250.0 and st["progress"]["cells_per_s"] == 1500.0
        assert st["progress"]["expected_rows"] == SECONDS // 5
        assert s.get("/api/dataset-pulls/4242", PAT)[0] == 404
        release.set()
        wait_until(lambda: app[K_PULLS].running == 0, 10, "the slots to free")
        assert s.post("/api/dataset-pulls", body(), MIA)[0] == 202  # the token's slot is free again
        wait_until(lambda: app[K_PULLS].running == 0, 10, "the third pull to end")
        _, text = s.get("/metrics", None)
        assert 'plantstream_monitor_dataset_pulls_total{status="done"} 3.0' in text
        assert "plantstream_monitor_dataset_pulls_running 0.0" in text


def test_openapi_documents_the_pull_routes(served: Served) -> None:
    status, doc = served.get("/openapi.json", None)
    assert status == 200
    try:
        from openapi_spec_validator import validate
    except ImportError:  # structural checks only
        assert doc["openapi"].startswith("3.1") and isinstance(doc["paths"], dict)
    else:
        validate(doc)
    post = doc["paths"]["/api/dataset-pulls"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/PullRequest"
    assert {"202", "422", "429"} <= set(post["responses"])
    schema = doc["components"]["schemas"]["PullRequest"]
    assert {"plant", "start", "end"} <= set(schema["required"]) and "tag_gaps" in schema["properties"]
    assert "get" in doc["paths"]["/api/dataset-pulls"]  # the listing is still there
    status_op = doc["paths"]["/api/dataset-pulls/{id}"]["get"]
    assert status_op["parameters"][0] == {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "pull id",
        "schema": {"type": "integer"},
    }
    files = doc["paths"]["/api/dataset-pulls/{id}/files/{path}"]["get"]
    assert {p["name"] for p in files["parameters"] if p["in"] == "path"} == {"id", "path"}
    assert "application/vnd.apache.parquet" in files["responses"]["200"]["content"]


def test_a_monitor_embedded_without_a_pull_engine_answers_503(
    fresh_db: str, settings: Settings, tmp_path: Path
) -> None:
    testing.load(fresh_db, 60, lot_s=60)
    cfg = MonitorConfig(tokens=TOKENS, anonymous_tier="none", datasets_dir=tmp_path / "datasets")
    with ServerThread(make_app(settings, cfg, kafka=False)) as s:
        wait_until(lambda: s.get("/healthz", None)[0] == 200, 10, "monitor /healthz")
        status, problem, _ = s.post("/api/dataset-pulls", body(), MIA)
    assert status == 503 and "pull engine" in problem["detail"], problem
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())
