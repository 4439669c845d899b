"""The monitor's HTTP server (aiohttp): JSON API, SSE live stream, static page, /metrics, /openapi.json.

aiohttp because it is already a dependency (via faust-streaming), serves streaming responses
natively and runs the Kafka bridge and the API in one event loop; the OpenAPI document is
generated from the same route table and pydantic models the handlers use, so it cannot drift.

Access: every ``/api/*`` route needs a token mapped to a tier (see ``auth``); ``/``, ``/static``,
``/openapi.json``, ``/healthz`` and ``/metrics`` carry no plant data and are open. Query
strings are never logged (tokens may travel in them).

Errors are ``application/problem+json`` ``Problem`` bodies: 400 (bad parameter, named), 401
(token), 404 (unknown *or withheld* tag or pull), 422 (a dataset request that cannot be served,
with the ``field`` to fix), 429 (every pull slot taken), 503 (database unreachable; the live
stream keeps working without a database).

Dataset pulls: ``POST /api/dataset-pulls`` validates the request, waits up to
``pull_answer_wait_s`` for the database checks (unknown tag, empty range: 422 at once), then
answers 202 with a ``Location`` to poll while the pull runs on a background thread (see ``pulls``).

Dataset products (issue 18): ``/api/catalog`` and ``/api/products/...`` serve this node's published
products as JSON-LD and files; who may see and use what is decided in ``products`` (tier in the
database, then access level), and every request, decision and download is a record of the
hash-chained audit log, cited by the ``X-Plantstream-Audit`` header of the answer.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from plantstream import audit as chain  # the hash-chained audit log (``audit`` is the API log)
from plantstream.access import Tier
from plantstream.config import Settings, layered
from plantstream.domain.catalog import AUDIT_HEADER, CATALOG_PATH, catalog_jsonld
from plantstream.domain.catalog import CONTEXT as CATALOG_CONTEXT
from plantstream.domain.pullrequest import (
    PullEngine,
    PullRecord,
    PullRequest,
    Requester,
    RequestError,
    validate_request,
)
from plantstream.monitor import models as M
from plantstream.monitor import products, pulls, store
from plantstream.monitor.auth import Authenticator, Identity, MonitorConfig, token_of, visible_grades
from plantstream.monitor.feed import KafkaFeed
from plantstream.monitor.hub import END, GradeBook, Hub
from plantstream.monitor.metrics import Metrics
from plantstream.producers.topics import Topics

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 15.0
GONE_CHECK_S = 1.0  # how soon a stream whose client went away gives its place (SSE caps) back
MAX_POINTS = 5000  # the default of history_max_points (the OpenAPI text names it)
MAX_QUERY = 4096  # bytes of query string an API request may carry
MAX_VALUE = 512  # characters of one query parameter
SSE_KINDS = frozenset({"aggregates", "deviation", "lot"})

K_SETTINGS = web.AppKey("settings", Settings)
K_CONFIG = web.AppKey("config", MonitorConfig)
K_AUTH = web.AppKey("auth", Authenticator)
K_HUB = web.AppKey("hub", Hub)
K_METRICS = web.AppKey("metrics", Metrics)
K_POOL: web.AppKey[ConnectionPool[Any]] = web.AppKey("pool", ConnectionPool)
K_FEED = web.AppKey("feed", KafkaFeed)
K_PULLS = web.AppKey("pulls", pulls.PullRunner)
K_INFLIGHT: web.AppKey[dict[str, int]] = web.AppKey("inflight", dict)
# Audit records are written (the API pool is read-only): a small pool of its own.
K_AUDIT_POOL: web.AppKey[ConnectionPool[Any]] = web.AppKey("audit_pool", ConnectionPool)
K_AUDIT_READY: web.AppKey[dict[str, bool]] = web.AppKey("audit_ready", dict)
K_PRODUCTS_DIR = web.AppKey("products_dir", Path)
K_TIER = web.RequestKey("tier", Tier)
K_WHO = web.RequestKey("who", Identity)
audit = logging.getLogger("plantstream.monitor.audit")
PULLS_URL = "/api/dataset-pulls"


class BadParam(ValueError):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"query parameter {name!r}: {why}")


class LimitError(ValueError):
    """A request beyond a configured bound: 422 naming the limit (config key) and its value."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(detail)
        self.limit = limit


class ApiError(Exception):
    """An error answer a handler chooses (status, title, detail, extra headers)."""

    def __init__(self, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers or {}


# --- parameters --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    description: str
    required: bool = False
    schema: str = "string"  # string | integer | boolean
    location: str = "query"  # query | path


def _q(request: web.Request, name: str, required: bool = False) -> str | None:
    v = request.query.get(name)
    if v is None or v == "":
        if required:
            raise BadParam(name, "is required")
        return None
    return v


def parse_time(text: str, now: datetime, name: str) -> datetime:
    """ISO-8601 (naive = UTC), ``now``, or relative ``-15m`` / ``-2h`` / ``-30s`` / ``-1d``."""
    if text == "now":
        return now
    if len(text) > 64:
        raise BadParam(name, "is longer than 64 characters")
    if text.startswith("-") and text[-1:] in "smhd" and text[1:-1].replace(".", "", 1).isdigit() and text.isascii():
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
        try:
            return now - timedelta(seconds=float(text[1:-1]) * mult)
        except (OverflowError, ValueError):
            # e.g. -1000000d: before year 1, which neither Python nor the answer can represent.
            raise BadParam(name, f"{text!r} reaches before year 1") from None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadParam(name, f"{text!r} is not ISO-8601, 'now' or relative like -15m") from None
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise BadParam(name, f"{text!r} is out of range in UTC") from None


def _int(request: web.Request, name: str, default: int, lo: int, hi: int, limit: str = "") -> int:
    v = _q(request, name)
    if v is None:
        return default
    try:
        n = int(v)
    except ValueError:
        raise BadParam(name, f"{v!r} is not an integer") from None
    if not lo <= n <= hi:
        raise BadParam(name, f"must be between {lo} and {hi}" + (f" ({limit})" if limit else ""))
    return n


# --- handlers ----------------------------------------------------------------------------------


def _tier(request: web.Request) -> Tier:
    tier = request[K_TIER]
    assert isinstance(tier, Tier)
    return tier


def _grades(request: web.Request) -> list[str]:
    grades: list[str] = visible_grades(_tier(request))
    return grades


async def _db(request: web.Request, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    pool = request.app[K_POOL]

    def run() -> Any:
        with pool.connection() as conn:
            return fn(conn, *args, **kw)

    return await asyncio.to_thread(run)


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=model.model_dump_json(), status=status, content_type="application/json")


async def h_me(request: web.Request) -> web.Response:
    return _json(M.Me(tier=_tier(request).value, grades=_grades(request)))


async def h_equipment(request: web.Request) -> web.Response:
    return _json(await _db(request, store.equipment_tree, _grades(request), _q(request, "plant")))


async def h_tags(request: web.Request) -> web.Response:
    plant, eq = _q(request, "plant"), _q(request, "equipment")
    if eq and not plant:
        raise BadParam("plant", "is required with 'equipment'")
    return _json(M.TagList(tags=await _db(request, store.tags, _grades(request), plant, eq)))


async def h_latest(request: web.Request) -> web.Response:
    plant = _q(request, "plant", True)
    eq = _q(request, "equipment") or ""
    assert plant is not None
    if not eq:
        # The whole plant: every root of its equipment tree.
        tree: M.EquipmentTree = await _db(request, store.equipment_tree, _grades(request), plant)
        values: list[M.Latest] = []
        for pt in tree.plants:
            for root in pt.roots:
                values += (await _db(request, store.latest, _grades(request), plant, root.path)).values
        return _json(M.LatestList(plant=plant, values=values))
    return _json(await _db(request, store.latest, _grades(request), plant, eq))


async def h_history(request: web.Request) -> web.Response:
    now = datetime.now(tz=UTC)
    plant, tag = _q(request, "plant", True), _q(request, "tag", True)
    start = parse_time(_q(request, "start") or "-15m", now, "start")
    end = parse_time(_q(request, "end") or "now", now, "end")
    if end <= start:
        raise BadParam("end", "must be after start")
    cfg = request.app[K_CONFIG]
    if (end - start).total_seconds() > cfg.history_max_range_s:
        raise LimitError(
            "history_max_range_s",
            f"end - start is {end - start}; this monitor serves at most {cfg.history_max_range_s:g} s "
            "(history_max_range_s) per history request",
        )
    points = _int(request, "points", min(600, cfg.history_max_points), 1, cfg.history_max_points, "history_max_points")
    good_only = (_q(request, "good_only") or "false").lower() in ("1", "true", "yes")
    return _json(await _db(request, store.history, _grades(request), plant, tag, start, end, points, good_only))


async def h_lots(request: web.Request) -> web.Response:
    now = datetime.now(tz=UTC)
    plant, eq = _q(request, "plant", True), _q(request, "equipment", True)
    start = parse_time(_q(request, "start") or "-24h", now, "start")
    end = parse_time(_q(request, "end") or "now", now, "end")
    return _json(await _db(request, store.timeline, plant, eq, start, end))


async def h_current_lots(request: web.Request) -> web.Response:
    return _json(await _db(request, store.current_lots, _q(request, "plant")))


async def h_specs(request: web.Request) -> web.Response:
    return _json(await _db(request, store.specs, _q(request, "spec_id")))


async def h_limits(request: web.Request) -> web.Response:
    plant, tag = _q(request, "plant", True), _q(request, "tag", True)
    return _json(await _db(request, store.tag_limits, _grades(request), plant, tag, _q(request, "lot")))


async def h_deviations(request: web.Request) -> web.Response:
    now = datetime.now(tz=UTC)
    since = _q(request, "since")
    return _json(
        await _db(
            request,
            store.deviations,
            _grades(request),
            _q(request, "plant"),
            parse_time(since, now, "since") if since else None,
            _int(request, "limit", 200, 1, 5000),
        )
    )


async def h_pulls(request: web.Request) -> web.Response:
    # Pull records name datasets and their tag selections: the data owner's business only.
    if _tier(request) is not Tier.OWNER:
        return _json(M.DatasetPullList(available=False, pulls=[]))
    return _json(await _db(request, store.dataset_pulls, _int(request, "limit", 100, 1, 1000)))


def _who(request: web.Request) -> Identity:
    who = request[K_WHO]
    assert isinstance(who, Identity)
    return who


_NOT_FOUND = ApiError(404, "not found", "no such dataset pull")


async def h_pull_start(request: web.Request) -> web.Response:
    """Validate a pull request, start it in the background, answer 202 with where to poll."""
    who = _who(request)
    if who.anonymous:
        # A pull is recorded under its requester; an anonymous caller has no name to record.
        raise ApiError(401, "unauthorized", "dataset pulls need a token", {"WWW-Authenticate": "Bearer"})
    try:
        body = await request.json(loads=_loads)
    except ValueError as exc:
        raise ApiError(400, "bad request", f"the body is not JSON: {exc}") from None
    except RecursionError:
        # json nests arrays by recursion: "[[[[..." a hundred thousand deep raised a 500.
        raise ApiError(400, "bad request", "the body is not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise RequestError("(request)", "the body must be a JSON object of pull request fields")
    req = validate_request(body)
    await _check_pull_bounds(request, req, who)
    runner = request.app[K_PULLS]
    try:
        job = runner.start(req, Requester(name=who.name, tier=who.tier), who.key)
    except pulls.NoEngine as exc:
        raise ApiError(503, "pulls unavailable", str(exc)) from None
    except pulls.Busy as exc:
        raise ApiError(429, "too many pulls", str(exc), {"Retry-After": str(pulls.RETRY_AFTER_S)}) from None
    # The record exists within a connection's time; then give the database checks a bounded wait.
    await asyncio.to_thread(job.began.wait, 30.0)
    await asyncio.to_thread(job.answered.wait, request.app[K_CONFIG].pull_answer_wait_s)
    if job.pull_id is None:
        if isinstance(job.error, psycopg.OperationalError) or not job.finished.is_set():
            raise psycopg.OperationalError("the pull could not reach the database")
        raise ApiError(500, "pull failed", f"{type(job.error).__name__}: the pull could not start")
    if job.state == "rejected" and isinstance(job.error, RequestError):
        raise job.error
    where = f"{PULLS_URL}/{job.pull_id}"
    state: M.PullStatusName = "running" if job.state == "starting" else job.state
    resp = _json(M.DatasetPullAccepted(id=job.pull_id, status=state, location=where), 202)
    resp.headers["Location"] = where
    return resp


async def _check_pull_bounds(request: web.Request, req: PullRequest, who: Identity) -> None:
    """The server's own pull limits, and tag checks that make a withheld tag look absent.

    The datasets stage knows every tag's name (its catalog lists withheld tags so the record can
    say what was left out), so a lower tier asking for a core tag by name would get a different
    answer than for a tag that does not exist. Checked here against the tier's visible tags first,
    with the very wording the stage uses for an absent tag."""
    cfg = request.app[K_CONFIG]
    max_cells = cfg.pull_max_cells.get(who.tier)
    if max_cells is None:
        raise ApiError(
            403, "forbidden", f"tier {who.tier.value} may not pull datasets on this monitor (pull_max_cells)"
        )
    rows = req.n_rows
    if rows > cfg.pull_max_rows:
        raise RequestError(
            "interval",
            f"interval {req.interval} over {req.end - req.start} gives {rows} rows, above this monitor's "
            f"pull_max_rows {cfg.pull_max_rows}: use a coarser interval or a shorter range",
        )
    visible: list[M.Tag] = await _db(request, store.tags, _grades(request), req.plant, req.equipment)
    names = {t.tag for t in visible}
    if not visible and who.tier is not Tier.OWNER:
        if req.equipment:
            raise RequestError("equipment", f"no tags under equipment {req.equipment!r} of plant {req.plant!r}")
        raise RequestError("plant", f"no tags are registered for plant {req.plant!r}")
    if req.tags:
        unknown = [t for t in req.tags if t not in names]
        if unknown and who.tier is not Tier.OWNER:
            scope = f" under equipment {req.equipment!r}" if req.equipment else ""
            raise RequestError("tags", f"unknown tag(s) {unknown} in plant {req.plant!r}{scope}")
    selected = set(req.tags) if req.tags else names
    bad_gaps = sorted(set(req.tag_gaps) - selected)
    if bad_gaps and who.tier is not Tier.OWNER:
        raise RequestError("tag_gaps", f"gap rules for tag(s) not in the selection: {bad_gaps}")
    cells = rows * max(1, len(selected & names))
    if cells > max_cells:
        raise RequestError(
            "interval",
            f"{rows} rows x {len(selected & names)} tags = {cells} cells, above this monitor's pull_max_cells "
            f"for tier {who.tier.value} ({max_cells}): use a coarser interval, a shorter range or fewer tags",
        )


def _loads(text: str) -> Any:
    import json

    return json.loads(text)


def _pull_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:  # "²".isdigit() is True
        raise _NOT_FOUND
    return int(text)


async def _visible_record(request: web.Request, pull_id: int) -> PullRecord:
    job = request.app[K_PULLS].get(pull_id)
    rec = job.record if job is not None and job.finished.is_set() else None
    if rec is None:
        rec = await _db(request, store.dataset_pull, pull_id)
    if rec is None or not pulls.may_see(_who(request), rec.requester):
        raise _NOT_FOUND
    return rec


async def h_pull_status(request: web.Request) -> web.Response:
    pull_id = _pull_id(request)
    job = request.app[K_PULLS].get(pull_id)
    if job is not None and not job.finished.is_set():
        if not pulls.may_see(_who(request), job.requester.name):
            raise _NOT_FOUND
        return _json(pulls.status_of_job(job))
    rec = await _visible_record(request, pull_id)
    return _json(pulls.status_of_record(rec, request.app[K_PULLS].root, PULLS_URL, _who(request).tier))


async def h_pull_file(request: web.Request) -> web.StreamResponse:
    """A file of a finished pull, streamed; only files its record lists, only under datasets_dir."""
    rec = await _visible_record(request, _pull_id(request))
    found = pulls.file_of(rec, request.app[K_PULLS].root, request.match_info["path"])
    if found is None:
        raise ApiError(404, "not found", "no such file in this pull (or the pull is not done)")
    path, ctype, sha = found
    digest = base64.b64encode(bytes.fromhex(sha)).decode()
    return web.FileResponse(
        path,
        headers={
            "Content-Type": ctype,
            "Content-Disposition": f'attachment; filename="{path.name}"',
            "Repr-Digest": f"sha-256=:{digest}:",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
        },
    )


# --- dataset products (issue 18): the node's catalog and downloads ----------------------------------

PRODUCT_URL = "/api/products/{name}/{version}"
_TITLES = {400: "bad request", 403: "forbidden", 404: "not found"}


@dataclass(frozen=True, slots=True)
class ProductCall:
    caller: products.Caller
    found: products.Found | None
    file: tuple[Path, Any] | None
    decision: chain.AuditRecord


async def _audit(
    request: web.Request, kind: str, actor: str, subject: str, detail: dict[str, Any]
) -> chain.AuditRecord:
    pool, ready = request.app[K_AUDIT_POOL], request.app[K_AUDIT_READY]

    def run() -> chain.AuditRecord:
        with pool.connection() as conn:
            if not ready.get("ensured"):
                chain.ensure(conn)
                ready["ensured"] = True
            return chain.append(conn, kind, products.safe_text(actor), products.safe_text(subject, 400), detail)

    rec: chain.AuditRecord = await asyncio.to_thread(run)
    return rec


async def _product_call(request: web.Request, what: str, *, use: bool, path: str | None = None) -> ProductCall:
    """Audit the request, decide (see ``products``), audit the decision. Refused: ApiError with the
    reason and the decision record's AUDIT_HEADER. No record, no answer: an audit write that fails
    is a 503 (fail closed)."""
    who = _who(request)
    name, version = request.match_info.get("name"), request.match_info.get("version")
    subject = "catalog" if name is None else f"{name}@{version}" + (f"/{path}" if path else "")
    try:
        caller: products.Caller | None = products.caller_of(who, request.headers)
        bad: str | None = None
    except products.HeaderError as exc:
        caller, bad = None, str(exc)
    ident = caller.describe() if caller else {"token": who.name, "token_tier": who.tier.value, "platform": who.platform}
    actor = caller.actor if caller else who.name
    asked = await _audit(request, "request", actor, subject, {"what": what, **ident})
    found: products.Found | None = None
    file: tuple[Path, Any] | None = None
    if caller is None:
        decision = products.Decision(False, 400, bad or "bad member headers")
    elif name is None or version is None:
        decision = products.Decision(True, 200, "allowed")
    elif not products.valid_key(name, version):
        decision = products.Decision(False, 404, "no such product on this node")
    else:
        try:
            found = await _db(request, products.find, caller.tier, name, version)
        except products.SchemaMissing as exc:
            raise ApiError(503, "products unavailable", str(exc)) from None
        decision = products.decide(caller, found, use=use)
        if decision.allowed and path is not None and found is not None:
            file = products.file_of(found, request.app[K_PRODUCTS_DIR], path)
            if file is None:
                decision = products.Decision(False, 404, "no such file in this product")
    detail: dict[str, Any] = {
        "request": asked.seq,
        "outcome": "allow" if decision.allowed else "deny",
        "status": decision.status,
        "reason": decision.reason,
        "tier": caller.tier.value if caller else None,
    }
    if found is not None:
        detail.update(grade=found.entry.grade.value, access=found.entry.access.value, snapshot=found.entry.snapshot)
    decided = await _audit(request, "decision", actor, subject, detail)
    if not decision.allowed:
        raise ApiError(
            decision.status, _TITLES.get(decision.status, "refused"), decision.reason, {AUDIT_HEADER: decided.ref}
        )
    assert caller is not None
    return ProductCall(caller, found, file, decided)


def _base_url(request: web.Request) -> str:
    cfg = request.app[K_CONFIG]
    return (cfg.public_url or f"{request.scheme}://{request.host}").rstrip("/")


def _jsonld(doc: dict[str, Any], ref: str) -> web.Response:
    import json

    return web.Response(
        body=json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(),
        content_type="application/ld+json",
        headers={AUDIT_HEADER: ref, "Cache-Control": "private, no-cache"},
    )


async def h_catalog(request: web.Request) -> web.Response:
    """The products the caller's tier may read (the database decides), as a JSON-LD DataCatalog."""
    call = await _product_call(request, "catalog", use=False)
    try:
        entries = await _db(request, products.visible, call.caller.tier)
    except products.SchemaMissing as exc:
        raise ApiError(503, "products unavailable", str(exc)) from None
    cfg = request.app[K_CONFIG]
    return _jsonld(catalog_jsonld(cfg.node_id, cfg.node_title, entries, _base_url(request)), call.decision.ref)


async def h_product(request: web.Request) -> web.Response:
    call = await _product_call(request, "describe", use=False)
    assert call.found is not None
    return _jsonld({"@context": CATALOG_CONTEXT, **call.found.entry.to_jsonld(_base_url(request))}, call.decision.ref)


async def _send_product_file(request: web.Request, call: ProductCall, subject: str) -> web.StreamResponse:
    """Stream a product file from disk (sendfile, never read whole into memory), then record the
    download with how it ended."""
    assert call.file is not None
    path, entry = call.file
    digest = base64.b64encode(bytes.fromhex(entry.sha256)).decode()
    resp = web.FileResponse(
        path,
        headers={
            "Content-Type": entry.media_type,
            "Content-Disposition": f'attachment; filename="{path.name}"',
            "Repr-Digest": f"sha-256=:{digest}:",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
            AUDIT_HEADER: call.decision.ref,
        },
    )
    outcome = "head" if request.method == "HEAD" else "complete"
    try:
        await resp.prepare(request)
    except (ConnectionResetError, asyncio.CancelledError):
        outcome = "interrupted"
        raise
    finally:
        await asyncio.shield(
            _audit(
                request,
                "download",
                call.caller.actor,
                subject,
                {
                    "decision": call.decision.seq,
                    "path": entry.path,
                    "bytes": entry.bytes,
                    "sha256": entry.sha256,
                    "outcome": outcome,
                    "range": request.headers.get("Range", "")[:100] or None,
                },
            )
        )
    return resp


async def h_product_croissant(request: web.Request) -> web.StreamResponse:
    call = await _product_call(request, "croissant", use=False, path="croissant.json")
    return await _send_product_file(request, call, f"{call.found.entry.key if call.found else '?'}/croissant.json")


async def h_product_quality(request: web.Request) -> web.StreamResponse:
    call = await _product_call(request, "quality", use=False, path="quality.json")
    return await _send_product_file(request, call, f"{call.found.entry.key if call.found else '?'}/quality.json")


async def h_product_file(request: web.Request) -> web.StreamResponse:
    """A data file of a product: the tier (in the database), the access level, the manifest."""
    rel = request.match_info["path"]
    call = await _product_call(request, "download", use=True, path=rel)
    return await _send_product_file(request, call, f"{call.found.entry.key if call.found else '?'}/{rel}")


async def h_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``hello`` then ``aggregates`` / ``deviation`` / ``lot``; a comment every 15 s."""
    hub, cfg, who = request.app[K_HUB], request.app[K_CONFIG], _who(request)
    plants = [p for p in (_q(request, "plants") or "").split(",") if p]
    kinds = [k for k in (_q(request, "kinds") or "").split(",") if k]
    if len(plants) > 64:
        raise BadParam("plants", "names at most 64 plants")
    unknown = sorted(set(kinds) - SSE_KINDS)
    if unknown:
        raise BadParam("kinds", f"unknown event kind(s) {unknown}; expected some of {sorted(SSE_KINDS)}")
    # Caps before the stream opens: each client holds a queue of up to client_queue events.
    if len(hub.subscribers) >= cfg.sse_max_clients:
        raise ApiError(
            503,
            "too many live clients",
            f"this monitor serves at most {cfg.sse_max_clients} live streams (sse_max_clients); retry later",
            {"Retry-After": "30"},
        )
    if hub.clients_of(who.key) >= cfg.sse_max_per_token:
        raise ApiError(
            429,
            "too many live streams for this token",
            f"a token may hold at most {cfg.sse_max_per_token} live streams at once (sse_max_per_token)",
            {"Retry-After": "30"},
        )
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    sub = hub.subscribe(_tier(request), plants or None, kinds or None, who.key)
    try:
        feed = request.app.get(K_FEED)
        hello = M.Me(tier=sub.tier.value, grades=visible_grades(sub.tier)).model_dump_json()
        state = feed.state if feed is not None else "off"
        await resp.write(f'retry: 2000\nevent: hello\ndata: {hello[:-1]},"kafka":"{state}"}}\n\n'.encode())
        quiet_since = time.monotonic()
        while True:
            try:
                data = await asyncio.wait_for(sub.queue.get(), GONE_CHECK_S)
            except TimeoutError:
                # A quiet stream notices a closed connection only when it writes, so look at the
                # transport: a client that went away must not keep its place until the heartbeat.
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                if time.monotonic() - quiet_since < HEARTBEAT_S:
                    continue
                data = b": keep-alive\n\n"
            if data == END:
                break
            await resp.write(data)
            quiet_since = time.monotonic()
    except ConnectionResetError:  # the browser went away
        pass
    finally:
        hub.unsubscribe(sub)
    return resp


async def h_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi())


async def h_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[K_METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def h_health(request: web.Request) -> web.Response:
    feed = request.app.get(K_FEED)
    return web.json_response(
        {
            "status": "ok",
            "kafka": feed.state if feed is not None else "off",
            "clients": len(request.app[K_HUB].subscribers),
            "grades_known": len(request.app[K_HUB].grades),
        }
    )


async def h_index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


# --- the route table (also the OpenAPI source) -------------------------------------------------

P_PLANT = Param("plant", "plant id, e.g. steel")
P_PLANT_REQ = Param("plant", "plant id, e.g. steel", True)
P_EQ = Param("equipment", "ISA-95 equipment path; the whole subtree is included")
P_START = Param("start", "ISO-8601, 'now' or relative (-15m, -2h, -1d)")
P_END = Param("end", "ISO-8601, 'now' or relative")


P_NAME = Param("name", "product name", True, "string", "path")
P_VERSION = Param("version", "semantic version MAJOR.MINOR.PATCH", True, "string", "path")
_PRODUCT_ERRORS: tuple[tuple[int, str], ...] = (
    (400, "member headers from a token that is not a platform credential, or malformed"),
    (401, "missing or unknown token"),
    (403, "the caller's tier may not read the product's grade, or may not use its access level (named)"),
    (404, "no such product or file (a core-grade product, to anyone but the owner)"),
    (503, "database unavailable"),
)


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    model: type[BaseModel] | None
    params: tuple[Param, ...] = ()
    tag: str = "api"
    method: str = "get"
    body: type[BaseModel] | None = None  # JSON request body (validation schema)
    status: int = 200
    # Error answers documented for this route (None: the GET set 400, 401, 404, 503).
    errors: tuple[tuple[int, str], ...] | None = None
    media: tuple[str, ...] = ()  # non-JSON success media types (file downloads)


ROUTES: tuple[Route, ...] = (
    Route("/api/me", h_me, "The caller's tier and the data grades it may read", M.Me),
    Route("/api/equipment", h_equipment, "Equipment tree per plant (ISA-95)", M.EquipmentTree, (P_PLANT,)),
    Route("/api/tags", h_tags, "Tags with units, grades and spec properties", M.TagList, (P_PLANT, P_EQ)),
    Route(
        "/api/latest", h_latest, "Latest value of every tag below an equipment path", M.LatestList, (P_PLANT_REQ, P_EQ)
    ),
    Route(
        "/api/history",
        h_history,
        "One tag over a time range, downsampled on the server (count, bad count, min, max, mean, last per bucket)",
        M.History,
        (
            P_PLANT_REQ,
            Param("tag", "tag name", True),
            P_START,
            P_END,
            Param(
                "points",
                f"maximum number of buckets, default 600, at most history_max_points ({MAX_POINTS} unless configured)",
                schema="integer",
            ),
            Param("good_only", "only good-quality readings", schema="boolean"),
        ),
        errors=(
            (400, "bad parameter (named), including points above history_max_points"),
            (401, "missing or unknown token"),
            (404, "not found (or withheld from this tier)"),
            (422, "a limit was hit: 'field' names it (history_max_range_s, api_statement_timeout_s)"),
            (503, "database unavailable"),
        ),
    ),
    Route(
        "/api/lots",
        h_lots,
        "Lot timeline: process segments on an equipment subtree",
        M.LotTimeline,
        (P_PLANT_REQ, Param("equipment", "equipment path", True), P_START, P_END),
    ),
    Route("/api/lots/current", h_current_lots, "Lots currently on each equipment", M.CurrentLots, (P_PLANT,)),
    Route(
        "/api/specs",
        h_specs,
        "Material specs in force, with lab and process limits",
        M.SpecList,
        (Param("spec_id", "one spec"),),
    ),
    Route(
        "/api/limits",
        h_limits,
        "Process limits of the active (or given) lot's material for a tag, in the tag's unit",
        M.TagLimits,
        (P_PLANT_REQ, Param("tag", "tag name", True), Param("lot", "lot id (default: the lot active now)")),
    ),
    Route(
        "/api/deviations",
        h_deviations,
        "Deviations, newest first",
        M.DeviationList,
        (
            P_PLANT,
            Param("since", "ISO-8601 or relative"),
            Param("limit", "at most this many (default 200)", schema="integer"),
        ),
    ),
    Route(
        "/api/dataset-pulls",
        h_pulls,
        "Dataset pulls (owner tier; empty without a dataset_pulls table)",
        M.DatasetPullList,
    ),
    Route(
        PULLS_URL,
        h_pull_start,
        "Start a dataset pull as the caller (tier and requester name from the token); poll the Location",
        M.DatasetPullAccepted,
        method="post",
        body=PullRequest,
        status=202,
        errors=(
            (400, "the body is not JSON"),
            (401, "missing or unknown token (anonymous callers cannot pull)"),
            (403, "the caller's tier has no pull allowance (pull_max_cells)"),
            (413, "the body is larger than the server accepts"),
            (422, "the request cannot be served (including pull_max_rows, pull_max_cells); 'field' names what to fix"),
            (
                429,
                "a pull slot limit (max_pulls_per_token or max_concurrent_pulls, named) is reached; retry after Retry-After seconds",
            ),
            (503, "database unavailable"),
        ),
    ),
    Route(
        PULLS_URL + "/{id}",
        h_pull_status,
        "A dataset pull's status: progress while running; files, hashes, snapshot and withheld tags when done "
        "(owners and the requester only)",
        M.DatasetPullStatus,
        (Param("id", "pull id", True, "integer", "path"),),
        errors=(
            (401, "missing or unknown token"),
            (404, "no such pull, or not the caller's"),
            (503, "database unavailable"),
        ),
    ),
    Route(
        PULLS_URL + "/{id}/files/{path:.+}",
        h_pull_file,
        "Download a file of a finished pull (a path from its 'files', e.g. data/split=all/part-00000.parquet)",
        None,
        (
            Param("id", "pull id", True, "integer", "path"),
            Param("path", "file path as listed in the pull's files (may contain '/')", True, "string", "path"),
        ),
        errors=(
            (401, "missing or unknown token"),
            (404, "no such file, pull not done, or not the caller's"),
            (503, "database unavailable"),
        ),
        media=tuple(sorted(set(pulls.CONTENT_TYPES.values()))),
    ),
    Route(
        CATALOG_PATH,
        h_catalog,
        "The node's dataset products the caller's tier may read (the database decides), as a JSON-LD "
        "schema.org DataCatalog / dcat:Catalog; a platform credential may speak for a member (headers)",
        M.JsonLdDocument,
        errors=_PRODUCT_ERRORS[:2] + _PRODUCT_ERRORS[-1:],
        media=("application/ld+json",),
    ),
    Route(
        PRODUCT_URL,
        h_product,
        "One product version as a JSON-LD schema.org Dataset / dcat:Dataset (files, Croissant, quality report)",
        M.JsonLdDocument,
        (P_NAME, P_VERSION),
        errors=_PRODUCT_ERRORS,
        media=("application/ld+json",),
    ),
    Route(
        PRODUCT_URL + "/croissant.json",
        h_product_croissant,
        "The product's Croissant 1.0 file",
        None,
        (P_NAME, P_VERSION),
        errors=_PRODUCT_ERRORS,
        media=("application/ld+json",),
    ),
    Route(
        PRODUCT_URL + "/quality.json",
        h_product_quality,
        "The product's data-quality report (GB/T 36344 dimensions)",
        None,
        (P_NAME, P_VERSION),
        errors=_PRODUCT_ERRORS,
        media=(products.QUALITY_MEDIA,),
    ),
    Route(
        PRODUCT_URL + "/files/{path:.+}",
        h_product_file,
        "Download a file of a product (a path of its distribution); checks the tier in the database, then the "
        "product's access level against the caller's; the answer carries X-Plantstream-Audit",
        None,
        (P_NAME, P_VERSION, Param("path", "file path as listed in the product's distribution", True, "string", "path")),
        errors=_PRODUCT_ERRORS,
        media=tuple(sorted(set(products.MEDIA_TYPES.values()))),
    ),
    Route(
        "/api/stream",
        h_stream,
        "Live events (text/event-stream): hello, aggregates (LiveAggregates), deviation (LiveDeviation), lot (LiveLot)",
        None,
        (
            Param("plants", "comma-separated plants (default all, at most 64)"),
            Param("kinds", "comma-separated event kinds: aggregates, deviation, lot"),
        ),
        errors=(
            (400, "bad parameter (named)"),
            (401, "missing or unknown token"),
            (429, "this token holds sse_max_per_token streams already; retry after Retry-After seconds"),
            (503, "this monitor holds sse_max_clients streams already; retry after Retry-After seconds"),
        ),
    ),
)


_PATH_PARAM = re.compile(r"\{(\w+):[^}]+\}")


def openapi() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(m, "serialization") for m in M.API_MODELS]
    models += [(r.body, "validation") for r in ROUTES if r.body is not None]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {}
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    default_errors = (
        (400, "bad parameter"),
        (401, "missing or unknown token"),
        (404, "not found (or withheld from this tier)"),
        (503, "database unavailable"),
    )
    for r in ROUTES:
        ok: dict[str, Any]
        if r.media and r.model is not None:  # JSON-LD documents
            ref = {"schema": {"$ref": f"#/components/schemas/{r.model.__name__}"}}
            ok = {"description": "OK", "content": {m: ref for m in r.media}}
        elif r.media:
            ok = {
                "description": "the file",
                "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in r.media},
            }
        elif r.model is None:
            ok = {"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
        else:
            ok = {
                "description": "Accepted" if r.status == 202 else "OK",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{r.model.__name__}"}}},
            }
        if r.status == 202:
            ok["headers"] = {"Location": {"description": "where to poll the status", "schema": {"type": "string"}}}
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": r.handler.__name__.removeprefix("h_"),
            "parameters": [
                {
                    "name": p.name,
                    "in": p.location,
                    "required": p.required,
                    "description": p.description,
                    "schema": {"type": p.schema},
                }
                for p in r.params
            ],
            "responses": {
                str(r.status): ok,
                **{str(code): {"description": why, "content": problem} for code, why in r.errors or default_errors},
            },
        }
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{r.body.__name__}"}}},
            }
        paths.setdefault(_PATH_PARAM.sub(r"{\1}", r.path), {})[r.method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "plantstream monitor",
            "version": "1",
            "description": "Live monitoring for process engineers. Tag grades (core/important/general) "
            "are withheld by tier; a withheld tag is indistinguishable from an absent one.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "queryToken": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
        "security": [{"bearer": []}, {"queryToken": []}],
    }


# --- middleware --------------------------------------------------------------------------------


def _problem(status: int, title: str, detail: str = "", field: str | None = None) -> web.Response:
    body = M.Problem(status=status, title=title, detail=detail, field=field).model_dump_json(exclude_none=True)
    return web.Response(body=body, status=status, content_type="application/problem+json")


@web.middleware
async def middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    metrics = request.app[K_METRICS]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    t0 = time.perf_counter()
    status = 500
    api = request.path.startswith("/api/")
    who: Identity | None = None
    counted: str | None = None  # the token key whose in-flight count this request holds
    outcome = "error"
    try:
        if api:
            who = request.app[K_AUTH].identify(
                token_of(request.headers.get("Authorization"), request.query.get("token"))
            )
            if who is None:
                status, outcome = 401, "refused"
                resp: web.StreamResponse = _problem(
                    401, "unauthorized", "a valid token is required (Bearer or ?token=)"
                )
                resp.headers["WWW-Authenticate"] = "Bearer"
                return resp
            request[K_TIER] = who.tier
            request[K_WHO] = who
            if route != "/api/stream":  # streams have their own caps
                inflight = request.app[K_INFLIGHT]
                limit = request.app[K_CONFIG].api_max_inflight_per_token
                if inflight.get(who.key, 0) >= limit:
                    status, outcome = 429, "refused"
                    # One token must not hold every database connection while others wait.
                    resp = _problem(
                        429,
                        "too many requests in progress for this token",
                        f"a token may have at most {limit} API requests in progress (api_max_inflight_per_token)",
                    )
                    resp.headers["Retry-After"] = "1"
                    return resp
                inflight[who.key] = inflight.get(who.key, 0) + 1
                counted = who.key
        try:
            if api:
                _check_query(request)
            resp = await handler(request)
        except BadParam as exc:
            resp = _problem(400, "bad request", str(exc))
        except LimitError as exc:
            resp = _problem(422, "limit exceeded", str(exc), exc.limit)
        except RequestError as exc:
            resp = _problem(422, "unprocessable dataset request", str(exc), exc.field)
        except ApiError as exc:
            resp = _problem(exc.status, exc.title, exc.detail)
            resp.headers.update(exc.headers)
        except store.UnknownTag as exc:
            resp = _problem(404, "not found", str(exc))
        except psycopg.errors.QueryCanceled:
            # statement_timeout: the request asked for more work than the monitor allows.
            timeout_s = request.app[K_CONFIG].api_statement_timeout_s
            resp = _problem(
                422,
                "limit exceeded",
                f"the query ran longer than {timeout_s:g} s (api_statement_timeout_s): narrow the range or ask fewer points",
                "api_statement_timeout_s",
            )
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable", extra={"kv": {"route": route, "error": type(exc).__name__}})
            resp = _problem(503, "database unavailable", "the monitor cannot reach the database; retry shortly")
        except psycopg.DataError as exc:
            # A value PostgreSQL cannot represent (e.g. a timestamp beyond its range): the caller's.
            log.info("bad parameter value", extra={"kv": {"route": route, "error": type(exc).__name__}})
            resp = _problem(400, "bad request", "a parameter value is out of the range the database can store")
        except web.HTTPException as exc:
            status = exc.status
            outcome = "ok" if exc.status < 400 else "refused"
            raise
        except ConnectionResetError:
            status, outcome = 499, "client gone"  # nginx's code for a client that went away
            raise
        except Exception:
            # Never a traceback, a query or an internal name in an answer; the log keeps them.
            log.exception("unexpected error", extra={"kv": {"route": route}})
            resp = _problem(500, "internal error", "the monitor failed on this request; it is logged")
        status = resp.status
        outcome = "ok" if status < 400 else "refused" if status < 500 else "error"
        return resp
    finally:
        if counted is not None:
            left = request.app[K_INFLIGHT][counted] - 1
            if left:
                request.app[K_INFLIGHT][counted] = left
            else:
                del request.app[K_INFLIGHT][counted]
        if route != "/api/stream":
            metrics.api_seconds.labels(route, f"{status // 100}xx").observe(time.perf_counter() - t0)
        if api:
            # The audit trail: the token's name (never the token), what was asked, how it ended.
            # No query string: it may carry the token.
            audit.info(
                "api call",
                extra={
                    "kv": {
                        "who": who.name if who is not None else "(refused)",
                        "tier": who.tier.value if who is not None else None,
                        "method": request.method,
                        "route": route,
                        "status": status,
                        "outcome": outcome,
                        "ms": round((time.perf_counter() - t0) * 1000, 1),
                    }
                },
            )


def _check_query(request: web.Request) -> None:
    """Refuse query strings no handler should have to think about: oversized, NUL bytes, lone
    surrogates (undecodable percent-escapes), which PostgreSQL or the encoder would reject later."""
    if len(request.query_string) > MAX_QUERY:
        raise BadParam("(query)", f"is longer than {MAX_QUERY} bytes")
    for name, value in request.query.items():
        if len(value) > MAX_VALUE:
            raise BadParam(name, f"is longer than {MAX_VALUE} characters")
        if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise BadParam(name, "contains a NUL byte or an undecodable character")


# --- application -------------------------------------------------------------------------------


def make_app(
    settings: Settings, cfg: MonitorConfig, kafka: bool = True, engine: PullEngine | None = None
) -> web.Application:
    """The monitor application. ``kafka=False`` serves the API without the live feed (tests);
    ``engine`` serves dataset pulls (the entry point passes the datasets stage's; without one a
    pull is answered 503)."""
    app = web.Application(middlewares=[middleware])
    metrics = Metrics()
    app[K_SETTINGS] = settings
    app[K_CONFIG] = cfg
    app[K_AUTH] = Authenticator(cfg)
    app[K_METRICS] = metrics
    app[K_INFLIGHT] = {}
    app[K_HUB] = Hub(GradeBook(), cfg.client_queue, metrics)
    app[K_PULLS] = pulls.PullRunner(
        pulls.bounded_settings(settings, cfg.pull_statement_timeout_s),
        cfg.datasets_dir or settings.state_dir / "datasets",
        cfg.max_concurrent_pulls,
        metrics,
        engine=engine,
        max_per_token=cfg.max_pulls_per_token,
    )
    app[K_AUDIT_READY] = {}
    app[K_PRODUCTS_DIR] = products_root(settings, cfg)
    for r in ROUTES:
        if r.method == "get":
            app.router.add_get(r.path, r.handler)
        else:
            app.router.add_route(r.method.upper(), r.path, r.handler)
    app.router.add_get("/openapi.json", h_openapi)
    app.router.add_get("/metrics", h_metrics)
    app.router.add_get("/healthz", h_health)
    app.router.add_get("/", h_index)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_audit_database)
    if kafka:
        app.cleanup_ctx.append(_kafka)
    app.on_shutdown.append(_end_streams)
    app.on_cleanup.append(_stop_pulls)
    return app


def products_root(settings: Settings, cfg: MonitorConfig) -> Path:
    """monitor YAML ``products_dir`` < ``PLANTSTREAM_PRODUCTS_DIR`` < default ``<state dir>/products``
    (no command-line option: the environment is the level publish and monitor share)."""
    import os

    env = os.environ.get(products.PRODUCTS_ENV)
    chosen = layered(env=Path(env) if env else None, file=cfg.products_dir, default=settings.state_dir / "products")
    assert chosen is not None
    return chosen


async def _audit_database(app: web.Application) -> AsyncIterator[None]:
    """The audit writer's own pool: the API's sessions are read-only."""
    timeout_ms = int(app[K_CONFIG].api_statement_timeout_s * 1000)
    pool: ConnectionPool[Any] = ConnectionPool(
        app[K_SETTINGS].dsn,
        min_size=0,
        max_size=2,
        open=False,
        timeout=5.0,
        kwargs={
            "autocommit": True,
            "options": f"-c statement_timeout={timeout_ms}",
            "application_name": "plantstream-monitor-audit",
            "connect_timeout": 5,
        },
        name="monitor-audit",
    )
    pool.open(wait=False)
    app[K_AUDIT_POOL] = pool
    yield
    await asyncio.to_thread(pool.close, 5.0)


async def _stop_pulls(app: web.Application) -> None:
    await asyncio.to_thread(app[K_PULLS].close, 30.0)


async def _database(app: web.Application) -> AsyncIterator[None]:
    cfg = app[K_CONFIG]
    pool = store.make_pool(app[K_SETTINGS].dsn, cfg.db_pool_size, cfg.api_statement_timeout_s)
    pool.open(wait=False)
    app[K_POOL] = pool
    refresher = asyncio.create_task(_refresh_grades(app))
    yield
    refresher.cancel()
    await asyncio.to_thread(pool.close, 5.0)


async def _refresh_grades(app: web.Application) -> None:
    """Reload the grade book from the tag registry (tags registered from readings, not the topic)."""
    pool, hub, every = app[K_POOL], app[K_HUB], app[K_CONFIG].grade_refresh_s

    def load() -> dict[tuple[str, str], str]:
        with pool.connection() as conn:
            grades: dict[tuple[str, str], str] = store.grade_map(conn)
            return grades

    while True:
        try:
            hub.grades.load_registry(await asyncio.to_thread(load))
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("grade reload failed; keeping the last", extra={"kv": {"error": type(exc).__name__}})
        await asyncio.sleep(every)


async def _kafka(app: web.Application) -> AsyncIterator[None]:
    s, hub = app[K_SETTINGS], app[K_HUB]
    feed = KafkaFeed(
        s.kafka_bootstrap,
        Topics(s.topic_prefix, s.partitions),
        hub.grades,
        hub.publish,
        asyncio.get_running_loop(),
        metrics=app[K_METRICS],
        forward_1m=app[K_CONFIG].forward_1m,
    )
    feed.start()
    app[K_FEED] = feed
    yield
    await asyncio.to_thread(feed.stop)


async def _end_streams(app: web.Application) -> None:
    app[K_HUB].close()
