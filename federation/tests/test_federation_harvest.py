"""The harvest schedule against nodes that are down or answer nonsense: recorded, retried sooner
than the interval, nothing crashes; the platform keeps serving. Real PostgreSQL, real HTTP servers
on loopback (the "nodes" here are hostile ones: one refuses connections, one lies about its name,
one sends no JSON)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from aiohttp import web

from plantstream import audit
from plantstream.federation import store
from plantstream.federation.config import PlatformConfig
from plantstream.federation.web import make_app
from plantstream.testing.monitor import Served, ServerThread
from plantstream.testing.plugin import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
TOKEN = "member-token-mia-000001"


def hostile() -> web.Application:
    async def liar(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer credential-liar-01"
        return web.json_response({"identifier": "somebody-else", "dataset": []})

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/liar/api/catalog", liar)
    app.router.add_get("/garbage/api/catalog", garbage)
    return app


@pytest.fixture
def nodes() -> Iterator[Served]:
    with ServerThread(hostile()) as s:
        yield s


def test_nodes_down_or_lying_are_recorded_and_retried(fresh_db: str, nodes: Served) -> None:
    cfg = PlatformConfig.model_validate(
        {
            "harvest_interval_s": 3600,
            "nodes": [
                {"id": "down", "url": f"http://127.0.0.1:{free_port()}", "credential": "credential-down-01"},
                {"id": "liar", "url": f"{nodes.url}/liar", "credential": "credential-liar-01"},
                {"id": "garbage", "url": f"{nodes.url}/garbage", "credential": "credential-garbage"},
            ],
            "levels": {"member": {"tier": "member", "access": ["free"]}},
            "members": [{"id": "mia", "level": "member", "token": TOKEN}],
        }
    )
    with ServerThread(make_app(cfg, fresh_db)) as platform:
        wait_until(lambda: platform.get("/healthz", None)[0] == 200, 30, "platform /healthz")

        def states() -> dict[str, store.NodeState] | None:
            with psycopg.connect(fresh_db, autocommit=True) as conn:
                got = {n.id: n for n in store.nodes(conn)}
            # The first retry comes 5 s after the first failure, well before the 1 h interval.
            return got if got and all(n.failures >= 2 for n in got.values()) else None

        got = wait_until(states, 30, "every node failed twice (first harvest and the first retry)")
        assert got is not None
        assert "cannot reach" in (got["down"].last_error or "")
        assert "names its node 'somebody-else', configured as 'liar'" in (got["liar"].last_error or "")
        assert "not JSON" in (got["garbage"].last_error or "")
        assert all(n.stale and n.last_ok_at is None and n.entries == 0 for n in got.values())
        # Still serving: health, search (empty), metrics with the failures counted.
        assert platform.get("/healthz", None)[0] == 200
        status, body = platform.get("/api/search", TOKEN)
        assert status == 200 and body == {"count": 0, "results": []}
        status, metrics = platform.get("/metrics", None)
        assert 'plantstream_platform_harvests_total{node="down",outcome="failed"}' in metrics
        assert 'plantstream_platform_node_up{node="liar"} 0.0' in metrics
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        recs: list[Any] = [r for r in audit.records(conn) if r.kind == "harvest"]
        assert audit.verify(conn).ok
    assert len(recs) >= 6 and not any(r.detail["ok"] for r in recs)
    assert {r.subject for r in recs} == {"node/down", "node/liar", "node/garbage"}
    # Credentials never reach the chain.
    assert not any("credential-" in r.detail_text for r in recs)
