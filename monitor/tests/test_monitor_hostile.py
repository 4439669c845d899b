"""A hostile client: a public token walks every route, the live stream and the error paths and never
receives a core or important tag's name or value; oversized, malformed and extreme parameters get
4xx, never 5xx, and the server keeps serving others meanwhile (real PostgreSQL, real HTTP)."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantstream.config import Settings
from plantstream.datasets.api import ENGINE
from plantstream.monitor import web
from plantstream.monitor.auth import MonitorConfig
from plantstream.monitor.hub import Event
from plantstream.testing.monitor import (
    OWNER,
    PUBLIC,
    TAGS,
    TOKENS,
    Served,
    ServerThread,
    SseReader,
    value_at,
)
from plantstream.testing.plugin import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HIDDEN = sorted(t[1] for t in TAGS if t[4].value in ("core", "important"))
HIDDEN_K = [k for k, t in enumerate(TAGS) if t[4].value in ("core", "important")]
# Every value a hidden tag was ever given (the general tags' ranges do not overlap these), and
# the hidden deviation's peak.
HIDDEN_VALUES = {value_at(i, k) for k in HIDDEN_K for i in range(600)} | {1.71}
GENERAL = [t for t in TAGS if t[4].value == "general"]
EQUIPMENT = sorted({t[2] for t in TAGS} | {"acme/duisburg/steelmaking/caster1", "acme", "acme/antwerp/pta"})
PLANTS = ("steel", "chemical", "fiber", "nowhere")


def numbers(x: Any) -> Iterator[float]:
    if isinstance(x, bool):
        return
    if isinstance(x, int | float):
        yield float(x)
    elif isinstance(x, dict):
        for v in x.values():
            yield from numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from numbers(v)


def assert_clean(
    what: str, body: bytes | str, headers: dict[str, str] | None = None, values: bool = True, asked: str = ""
) -> None:
    """No hidden tag's name (unless the request itself carried it: an echo of the caller's own
    text, answered the same for an absent tag) and, in JSON, no hidden tag's value."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text += json.dumps(headers or {})
    asked = urllib.parse.unquote(asked)
    leaked = [t for t in HIDDEN if t in text and t not in asked]
    assert not leaked, f"{what}: hidden tag name(s) {leaked} in {text[:500]}"
    if values and text.lstrip().startswith(("{", "[")):
        try:
            doc = json.loads(text[: len(text) - len(json.dumps(headers or {}))])
        except ValueError:
            return
        bad = [v for v in numbers(doc) if v in HIDDEN_VALUES]
        assert not bad, f"{what}: hidden tag value(s) {bad[:5]}"


class Client:
    """Raw HTTP, so nothing in a client library normalizes the hostile requests away."""

    def __init__(self, served: Served) -> None:
        u = urllib.parse.urlsplit(served.url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80

    def send(
        self, method: str, target: str, token: str | None = PUBLIC, body: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            h = dict(headers)
            if token:
                h["Authorization"] = f"Bearer {token}"
            if body is not None:
                h.setdefault("Content-Type", "application/json")
            conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in h.items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            if r.getheader("Content-Type", "").startswith("text/event-stream"):
                return r.status, dict(r.getheaders()), b""  # a stream: its answer is its status
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()


@pytest.fixture
def hostile(loaded_db: tuple[str, int], settings: Settings) -> Iterator[tuple[Served, dict[str, Any]]]:
    """The monitor over the loaded database with an owner's pull (core tags) and a public pull."""
    cfg = MonitorConfig(tokens=TOKENS, anonymous_tier="none", datasets_dir=settings.state_dir / "datasets")
    with ServerThread(web.make_app(settings, cfg, kafka=False, engine=ENGINE)) as s:
        wait_until(lambda: s.get("/healthz", None)[0] == 200, 10, "monitor /healthz")
        wait_until(lambda: len(s.hub.grades) == len(TAGS), 20, "grades from the tag registry")
        t0 = datetime.fromtimestamp(loaded_db[1] / 1e6, UTC)
        req = {"plant": "steel", "start": t0.isoformat(), "end": (t0 + timedelta(minutes=9)).isoformat()}
        pulls = {}
        for who, token in (("owner", OWNER), ("public", PUBLIC)):
            status, accepted, _ = s.post("/api/dataset-pulls", {**req, "interval": "10s"}, token)
            assert status == 202, accepted

            def done(token: str = token, where: str = accepted["location"]) -> Any:
                st = s.get(where, token)[1]
                return st if st["status"] != "running" else None

            pulls[who] = wait_until(done, 60, f"the {who} pull")
            assert pulls[who]["status"] == "done", pulls[who]
        yield s, pulls


Req = tuple[str, str, bytes | None]


def walk(pulls: dict[str, Any]) -> dict[str, list[Req]]:
    """Requests per canonical route: (method, target, body)."""
    own, other = pulls["public"], pulls["owner"]
    tags = [t[1] for t in TAGS] + ["no.such.tag"]
    g = "GET"
    none: bytes | None = None  # GET bodies (typed, so every list is a list[Req])
    out: dict[str, list[Req]] = {
        "/api/me": [(g, "/api/me", none)],
        "/api/equipment": [(g, "/api/equipment", none)] + [(g, f"/api/equipment?plant={p}", none) for p in PLANTS],
        "/api/tags": [(g, "/api/tags", none)]
        + [(g, f"/api/tags?plant={p}&equipment={e}", none) for p in PLANTS for e in EQUIPMENT],
        "/api/latest": [(g, f"/api/latest?plant={p}", none) for p in PLANTS]
        + [(g, f"/api/latest?plant=steel&equipment={e}", none) for e in EQUIPMENT],
        "/api/history": [
            (g, f"/api/history?plant={t[0]}&tag={t[1]}&start=-20m{q}", none)
            for t in TAGS
            for q in ("", "&good_only=true", "&points=1")
        ]
        + [(g, f"/api/history?plant=steel&tag={t}", none) for t in tags],
        "/api/lots": [(g, f"/api/lots?plant={p}&equipment={e}&start=-1h", none) for p in PLANTS for e in EQUIPMENT],
        "/api/lots/current": [(g, "/api/lots/current", none)],
        "/api/catalog": [(g, "/api/catalog", none)],
        "/api/products/{name}/{version}": [(g, "/api/products/caster/1.0.0", none), (g, "/api/products/x/1.0", none)],
        "/api/products/{name}/{version}/croissant.json": [(g, "/api/products/caster/1.0.0/croissant.json", none)],
        "/api/products/{name}/{version}/quality.json": [(g, "/api/products/caster/1.0.0/quality.json", none)],
        "/api/products/{name}/{version}/files/{path}": [(g, "/api/products/caster/1.0.0/files/../x", none)],
        "/api/specs": [(g, "/api/specs", none)],
        "/api/limits": [(g, f"/api/limits?plant={t[0]}&tag={t[1]}", none) for t in TAGS]
        + [(g, f"/api/limits?plant=steel&tag={t}&lot=H240117", none) for t in tags],
        "/api/deviations": [(g, "/api/deviations", none), (g, "/api/deviations?plant=steel&since=-1d", none)],
        "/api/dataset-pulls": [
            (g, "/api/dataset-pulls", none),
            ("POST", "/api/dataset-pulls", json.dumps({**own["request"], "tags": [HIDDEN[0]]}).encode()),
            ("POST", "/api/dataset-pulls", json.dumps({**own["request"], "tag_gaps": {HIDDEN[0]: {}}}).encode()),
            ("POST", "/api/dataset-pulls", b"{not json"),
        ],
        "/api/dataset-pulls/{id}": [
            (g, f"/api/dataset-pulls/{own['id']}", none),
            (g, f"/api/dataset-pulls/{other['id']}", none),
            (g, "/api/dataset-pulls/999999", none),
        ],
        "/api/dataset-pulls/{id}/files/{path}": [
            (g, f"/api/dataset-pulls/{p['id']}/files/{f['path']}", none) for p in (own, other) for f in p["files"]
        ],
        "/api/stream": [(g, "/api/stream", none), (g, "/api/stream?plants=steel&kinds=aggregates", none)],
        "/openapi.json": [(g, "/openapi.json", none)],
        "/metrics": [(g, "/metrics", none)],
        "/healthz": [(g, "/healthz", none)],
        "/": [(g, "/", none)],
        "/static": [(g, f"/static/{f}", none) for f in ("index.html", "monitor.js", "monitor.css")],
    }
    return out


def test_public_token_walks_every_route_and_sees_nothing_hidden(hostile: tuple[Served, dict[str, Any]]) -> None:
    served, pulls = hostile
    client = Client(served)
    assert served.app is not None
    routes = {r.resource.canonical for r in served.app.router.routes() if r.resource is not None}
    plan = walk(pulls)
    assert set(plan) == routes, "a route the walk does not cover (add it): " + str(routes ^ set(plan))
    seen: dict[int, int] = {}
    for route, requests in plan.items():
        for method, target, body in requests:
            status, headers, data = client.send(method, target, PUBLIC, body)
            seen[status] = seen.get(status, 0) + 1
            assert status < 500, (target, status, data[:300])
            # Spec tables are material standards, not tag data: their numbers may equal readings.
            asked = target + (body or b"").decode()
            assert_clean(f"{method} {target} -> {status}", data, headers, route != "/api/specs", asked)
    assert seen.get(200, 0) > 50 and seen.get(404, 0) > 5  # the walk did reach data and error paths
    # The public pull's status counts what it withheld, and its own files are served.
    own = served.get(f"/api/dataset-pulls/{pulls['public']['id']}", PUBLIC)[1]
    assert {w["grade"]: w["count"] for w in own["withheld"]} == {"core": 2, "important": 1}  # of steel
    assert all(w["tags"] is None for w in own["withheld"])
    assert any(f["url"] and f["path"].endswith(".parquet") for f in own["files"])


def test_withheld_answers_exactly_like_absent(hostile: tuple[Served, dict[str, Any]]) -> None:
    served, pulls = hostile
    client = Client(served)
    for hidden in HIDDEN:
        plant = next(t[0] for t in TAGS if t[1] == hidden)
        for path in ("/api/history", "/api/limits"):
            a = client.send("GET", f"{path}?plant={plant}&tag={hidden}")
            b = client.send("GET", f"{path}?plant={plant}&tag=zz.absent")
            assert a[0] == b[0] == 404
            assert a[2].replace(hidden.encode(), b"X") == b[2].replace(b"zz.absent", b"X")
    # Someone else's pull, an absent pull and its files: one answer.
    a = client.send("GET", f"/api/dataset-pulls/{pulls['owner']['id']}")
    b = client.send("GET", "/api/dataset-pulls/999999")
    assert a[0] == b[0] == 404 and a[2] == b[2]
    # The public pull's own card is served and counts what was withheld without naming it.
    card = client.send("GET", f"/api/dataset-pulls/{pulls['public']['id']}/files/README.md")
    assert card[0] == 200 and b"| core | 2 |" in card[2]
    assert_clean("the public pull's card", card[2])


def test_live_stream_filters_every_event(hostile: tuple[Served, dict[str, Any]]) -> None:
    served, _ = hostile
    assert served.loop is not None
    public = SseReader(served.url, f"/api/stream?token={PUBLIC}")
    owner = SseReader(served.url, f"/api/stream?token={OWNER}")
    try:
        wait_until(lambda: public.of("hello") and owner.of("hello"), 10, "hello events")
        assert public.of("hello")[0]["grades"] == ["general"]
        events: list[Event] = []
        cast: list[tuple[str, str, str]] = [(t[0], t[1], t[2]) for t in TAGS] + [("steel", "mystery.tag", "acme/x")]
        for k, (plant, tag, eq) in enumerate(cast):
            v = value_at(3, k) if k < len(TAGS) else 1.71
            item = {"plant": plant, "equipment": eq, "tag": tag, "window": "1s", "start_us": 1, "count": 1}
            events.append(Event("aggregates", plant, [{**item, "min": v, "max": v, "mean": v, "last": v}]))
            events.append(Event("deviation", plant, [{"id": f"d{k}", "plant": plant, "tag": tag, "peak": v}], True))
        # One event mixing hidden and general items: only the general item may go out.
        mixed = [{"plant": "steel", "tag": t, "last": 410.5} for t in ("caster1.casting_speed", GENERAL[0][1])]
        events.append(Event("aggregates", "steel", mixed))
        events.append(Event("lot", "steel", [{"plant": "steel", "lot": "H2", "kind": "lot_start"}], True))
        events.append(Event("deviation", "steel", [{"id": "end-marker", "plant": "steel", "tag": None}], True))
        served.loop.call_soon_threadsafe(served.hub.publish, events)
        wait_until(lambda: any(d.get("id") == "end-marker" for d in public.of("deviation")), 10, "the marker")
        wait_until(lambda: any(d.get("id") == "end-marker" for d in owner.of("deviation")), 10, "the owner marker")
        for kind, data in public.events:
            assert_clean(f"SSE {kind}", json.dumps(data))
        got = {it["tag"] for d in public.of("aggregates") for it in d["items"]}
        assert got == {t[1] for t in GENERAL}
        assert {d.get("tag") for d in public.of("deviation")} == {t[1] for t in GENERAL} | {None}
        assert public.of("lot") and len(public.of("lot")) == len(owner.of("lot"))
        # The owner got the hidden ones, so the filter (not a broken publish) kept them from the public.
        assert {it["tag"] for d in owner.of("aggregates") for it in d["items"]} >= set(HIDDEN)
    finally:
        public.close()
        owner.close()


def test_oversized_and_malformed_requests_get_4xx(hostile: tuple[Served, dict[str, Any]]) -> None:
    served, _ = hostile
    client = Client(served)
    cases: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", "/api/tags?plant=" + "a" * 5000, {}, None),
        ("GET", "/api/tags?plant=" + "a" * 20000, {}, None),
        ("GET", "/api/tags?" + "&".join(f"p{i}=1" for i in range(2000)), {}, None),
        ("GET", "/api/tags?plant=%00steel", {}, None),
        ("GET", "/api/history?plant=steel&tag=%25&start=%", {}, None),
        ("GET", "/api/me", {"X-Big": "x" * 20000}, None),
        ("POST", "/api/dataset-pulls", {}, b"[" * 100000 + b"]" * 100000),
        ("POST", "/api/dataset-pulls", {}, b'{"plant": "' + b"x" * 3_000_000 + b'"}'),
        ("POST", "/api/dataset-pulls", {"Content-Type": "text/plain"}, b"\xff\xfe"),
        (
            "POST",
            "/api/dataset-pulls",
            {},
            json.dumps({"plant": "steel", "start": "0001-01-01", "end": "9999-12-31"}).encode(),
        ),
        (
            "POST",
            "/api/dataset-pulls",
            {},
            json.dumps({"plant": "steel", "start": "-1d", "end": "now", "row_cap": 10**30}).encode(),
        ),
        ("GET", "/api/dataset-pulls/" + "9" * 40, {}, None),
        ("GET", "/api/dataset-pulls/1/files/" + "../" * 200, {}, None),
        ("DELETE", "/api/tags", {}, None),
    ]
    for method, target, headers, body in cases:
        status, _, data = client.send(method, target, PUBLIC, body, **headers)
        assert 400 <= status < 500, (method, target[:80], status, data[:300])
        assert_clean(target[:80], data)
    # Undecodable percent-escapes become U+FFFD: an unknown plant, an empty answer, never a 5xx.
    for target in ("/api/tags?plant=%ed%a0%80", "/api/tags?plant=%ff%fe", "/api/latest?plant=%ff&equipment=%c0%af"):
        status, _, data = client.send("GET", target)
        assert status < 500 and status in (200, 400), (target, status, data[:300])
    assert client.send("GET", "/api/me")[0] == 200  # still serving


EXTREME = [
    "",
    "-1000000d",
    "-99999999999999999999999999999d",
    "-1e309d",
    "-0s",
    "-.s",
    "now",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01",
    "9999-12-31T23:59:59.999999-14:00",
    "2025-02-30",
    "1" * 70,
    "99999999999999999999999999",
    "-1",
    "0",
    "NaN",
    "1e3",
    "٣",
    "'; DROP TABLE tags; --",
    "\\",
    "%",
    "_",
    "a/../b",
    "//",
    *HIDDEN,
    "steel",
    "acme/duisburg/steelmaking/caster1",
]
NAMES = sorted({p.name for r in web.ROUTES for p in r.params} | {"token", "bogus"})
ROUTES = [r.path for r in web.ROUTES if r.method == "get" and "{" not in r.path]
RAW = ["%ff", "%00", "%ed%a0%80", "%", "%%41", "&&&", "=", "a=%zz", ";", "%F0%9F%92%A9"]
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    route=st.sampled_from(ROUTES),
    params=st.dictionaries(st.sampled_from(NAMES), st.one_of(st.sampled_from(EXTREME), text), max_size=6),
    raw=st.lists(st.sampled_from(RAW), max_size=3),
    pull_id=st.one_of(text, st.integers()),
    valid=st.booleans(),
)
def test_fuzzed_parameters_never_get_5xx_and_others_keep_being_served(
    hostile: tuple[Served, dict[str, Any]],
    route: str,
    params: dict[str, str],
    raw: list[str],
    pull_id: Any,
    valid: bool,
) -> None:
    if valid:
        # Reach past the required-parameter checks: fuzz the rest on top of a servable request.
        params = {"plant": "steel", "tag": GENERAL[0][1], "equipment": "acme/duisburg", **params}
    served, pulls = hostile
    client = Client(served)
    stop = threading.Event()
    others: list[int] = []

    def owner_meanwhile() -> None:
        # Another user of the monitor at the same time as the hostile requests.
        while True:
            others.append(client.send("GET", "/api/latest?plant=steel", OWNER)[0])
            if stop.wait(0.02):
                return

    th = threading.Thread(target=owner_meanwhile, daemon=True)
    th.start()
    try:
        query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote) + "".join(f"&{r}" for r in raw)
        status, _, data = client.send("GET", f"{route}?{query}")
        assert status < 500, (route, query, status, data[:300])
        assert_clean(f"{route}?{query}", data, None, route != "/api/specs", query)
        target = "/api/dataset-pulls/" + urllib.parse.quote(str(pull_id), safe="")
        status, _, data = client.send("GET", target)
        assert status < 500, (target, status)
        if status == 200:  # only the caller's own pull, however its id is spelled
            assert int(str(pull_id)) == pulls["public"]["id"], (target, data[:200])
        assert_clean(target, data, None, True, target)
    finally:
        stop.set()
        th.join(10)
    assert others and set(others) == {200}, others
