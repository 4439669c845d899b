"""The platform's HTTP server (aiohttp, like the monitor's).

Every ``/api/*`` route needs a member token (``Authorization: Bearer``; no query-string tokens:
query strings end up in proxy logs). ``/healthz`` and ``/metrics`` carry no data and are open.

| route | what |
|---|---|
| ``GET /api/me`` | the member, its level (tier, access levels, quotas) and today's usage |
| ``GET /api/search`` | harvested entries of every node the member's tier may read: ``material_field``, ``spec``, ``grade``, ``property``, ``start``/``end`` (overlap), ``access``, ``q`` (text), ``node`` |
| ``GET /api/products/{node}/{name}/{version}`` | the entry as the node published it, with ``ps:node`` and ``ps:stale`` |
| ``GET /api/products/{node}/{name}/{version}/files/{path}`` | the file, streamed from the node as the member (never stored here); the node decides |

Errors are ``application/problem+json`` (``status``, ``title``, ``detail``; ``field`` names a bad
parameter or the quota hit). Bad parameters are 400, an unknown product or file 404, the node's
refusal 403 with the node's reason, a quota 429 with ``Retry-After``, a node that cannot be reached
or answers otherwise 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import PoolTimeout

from plantstream.domain.catalog import AUDIT_HEADER, NAME_RE, SemVer, product_path

from . import store
from .config import Member, PlatformConfig
from .db import Db
from .harvest import Harvester
from .logic import FilterError, SearchFilter
from .metrics import Metrics
from .service import Platform, Refusal, Ticket

log = logging.getLogger(__name__)
audit_log = logging.getLogger("plantstream.federation.audit")

K_CONFIG = web.AppKey("config", PlatformConfig)
K_DB = web.AppKey("db", Db)
K_METRICS = web.AppKey("metrics", Metrics)
K_PLATFORM = web.AppKey("platform", Platform)
K_HARVESTER = web.AppKey("harvester", Harvester)
K_SESSION = web.AppKey("session", aiohttp.ClientSession)
K_TASKS: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("tasks", list)
K_MEMBER = web.RequestKey("member", Member)

CHUNK = 64 * 1024
MAX_QUERY = 4096
_NODE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# "=" for Hive-style partition folders (data/split=train/...); the catalog's manifest decides the rest.
_PATH_RE = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")
# Headers of the node's answer passed on to the member.
PASS_HEADERS = ("Content-Type", "Content-Encoding", "Repr-Digest", "ETag", "Last-Modified")


class ApiError(Exception):
    def __init__(
        self, status: int, title: str, detail: str = "", field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.field, self.headers = status, title, detail, field, headers or {}


def problem(status: int, title: str, detail: str = "", field: str | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"status": status, "title": title, "detail": detail}
    if field:
        body["field"] = field
    return web.Response(
        body=json.dumps(body), status=status, content_type="application/problem+json", headers=headers or None
    )


def _bad(param: str, why: str) -> ApiError:
    return ApiError(400, "Bad Request", f"parameter {param!r}: {why}", field=param)


def _platform(request: web.Request) -> Platform:
    return request.app[K_PLATFORM]


def _member(request: web.Request) -> Member:
    return request[K_MEMBER]


# --- middleware ----------------------------------------------------------------------------------


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    t0 = time.monotonic()
    status, who = 500, "-"
    try:
        if len(request.query_string) > MAX_QUERY:
            raise ApiError(400, "Bad Request", f"query string longer than {MAX_QUERY} bytes")
        if request.path.startswith("/api/"):
            token = _bearer(request)
            member = _platform(request).authenticate(token)
            if member is None:
                who = "(refused)" if token else "anonymous"
                raise ApiError(401, "Unauthorized", "a member token is required (Authorization: Bearer <token>)")
            request[K_MEMBER] = member
            who = member.id
        resp = await handler(request)
        status = resp.status
        return resp
    except ApiError as exc:
        status = exc.status
        return problem(exc.status, exc.title, exc.detail, exc.field, **exc.headers)
    except FilterError as exc:
        status = 400
        return problem(400, "Bad Request", str(exc), exc.param)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status >= 400:
            return problem(exc.status, exc.reason, "")
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499
        raise
    except (psycopg.OperationalError, PoolTimeout) as exc:
        status = 503
        log.warning("platform database unavailable: %s", type(exc).__name__)
        return problem(
            503, "Service Unavailable", "the platform database is unavailable; try again", **{"Retry-After": "5"}
        )
    except Exception:
        log.exception("unexpected failure on %s", request.match_info.route.resource or request.path)
        return problem(500, "Internal Server Error")
    finally:
        if request.path.startswith("/api/"):
            route = request.match_info.route.resource
            audit_log.info(
                "api",
                extra={
                    "kv": {
                        "who": who,
                        "method": request.method,
                        "route": route.canonical if route is not None else "(unmatched)",
                        "status": status,
                        "ms": round((time.monotonic() - t0) * 1000, 1),
                    }
                },
            )


def _bearer(request: web.Request) -> str | None:
    h = request.headers.get("Authorization", "")
    if h[:7].lower() == "bearer ":
        return h[7:].strip() or None
    return None


# --- handlers -----------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data, default=str), status=status, content_type="application/json")


def _entry_doc(h: store.Harvested) -> dict[str, Any]:
    doc = dict(h.doc)
    doc["ps:node"] = h.node
    doc["ps:stale"] = h.stale
    doc["ps:harvestedAt"] = h.harvested_at.isoformat()
    base = (
        f"/api/products/{quote(h.node, safe='')}{product_path(h.entry.name, h.entry.version)[len('/api/products') :]}"
    )
    doc["ps:platformUrl"] = base
    return doc


async def h_healthz(request: web.Request) -> web.Response:
    try:
        await request.app[K_DB].run(lambda conn: conn.execute("SELECT 1").fetchone())
    except Exception as exc:
        return _json({"ok": False, "database": type(exc).__name__}, 503)
    return _json({"ok": True})


async def h_metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[K_METRICS].registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def h_me(request: web.Request) -> web.Response:
    m = _member(request)
    p = _platform(request)
    lv = p.level(m)
    used = await p.db.run(store.day_usage, m.id, store.now().date())
    return _json(
        {
            "member": m.id,
            "level": m.level,
            "tier": lv.tier,
            "access": [a.value for a in lv.access],
            "quotas": lv.quotas.model_dump(),
            "today": {"products": len(used.products), "cells": used.cells, "bytes": used.bytes},
        }
    )


async def h_search(request: web.Request) -> web.Response:
    f = SearchFilter.parse({k: v for k, v in request.query.items()})
    hits = await _platform(request).search(f, _member(request))
    return _json({"count": len(hits), "results": [_entry_doc(h) for h in hits]})


def _product_params(request: web.Request) -> tuple[str, str, str]:
    node, name, version = (request.match_info[k] for k in ("node", "name", "version"))
    if not _NODE_RE.match(node):
        raise _bad("node", f"{node[:80]!r} is not a node id")
    if not NAME_RE.match(name):
        raise _bad("name", f"{name[:80]!r} is not a product name")
    try:
        version = str(SemVer.parse(version))
    except ValueError as exc:
        raise _bad("version", str(exc)) from None
    return node, name, version


async def h_product(request: web.Request) -> web.Response:
    node, name, version = _product_params(request)
    h = await _platform(request).entry(node, name, version, _member(request))
    if h is None:
        raise ApiError(404, "Not Found", f"no product {name} {version} at node {node}")
    return _json(_entry_doc(h))


async def h_file(request: web.Request) -> web.StreamResponse:
    node, name, version = _product_params(request)
    path = request.match_info["path"]
    if len(path) > 300 or not _PATH_RE.match(path) or any(p in (".", "..") for p in path.split("/")):
        raise _bad("path", "is not a file path of a product")
    p = _platform(request)
    cfg = request.app[K_CONFIG]
    admitted = await p.admit(_member(request), node, name, version, path)
    if isinstance(admitted, Refusal):
        raise _refusal(admitted)
    try:
        return await _broker(request, p, cfg, admitted)
    finally:
        p.release(admitted)


def _refusal(r: Refusal, node_audit: str | None = None) -> ApiError:
    titles = {403: "Forbidden", 404: "Not Found", 429: "Too Many Requests", 502: "Bad Gateway"}
    headers = {"Retry-After": str(r.retry_after)} if r.retry_after else {}
    if node_audit:
        headers[AUDIT_HEADER] = node_audit
    return ApiError(r.status, titles.get(r.status, "Error"), r.reason, r.limit, headers)


async def _reason(resp: aiohttp.ClientResponse) -> str:
    """The node's stated reason: a Problem's detail, else the start of its body."""
    raw = await resp.content.read(4096)
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict):
            return str(doc.get("detail") or doc.get("title") or doc.get("reason") or "")[:500]
    except ValueError:
        pass
    return raw.decode("utf-8", "replace")[:500]


async def _broker(request: web.Request, p: Platform, cfg: PlatformConfig, t: Ticket) -> web.StreamResponse:
    node = cfg.node(t.harvested.node)
    if node is None:  # harvested earlier, no longer configured
        await p.node_decided(t, 404, "node is no longer registered", None)
        raise ApiError(404, "Not Found", f"node {t.harvested.node} is no longer registered")
    url = node.url + product_path(t.harvested.entry.name, t.harvested.entry.version) + "/files/" + quote(t.file.path)
    # identity: the member gets the node's bytes exactly, and their SHA-256 is the catalog's.
    headers = {
        "Authorization": f"Bearer {node.credential.get_secret_value()}",
        "Accept-Encoding": "identity",
        **t.node_headers,
    }
    session = request.app[K_SESSION]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=cfg.node_timeout_s)
    try:
        async with session.get(url, headers=headers, timeout=timeout) as r:
            node_audit = r.headers.get(AUDIT_HEADER)
            if r.status != 200:
                reason = await _reason(r)
                rec = await p.node_decided(t, r.status, reason, node_audit)
                if r.status == 403:
                    raise _refusal(Refusal(403, reason or "refused by the node"), node_audit)
                if r.status == 404:
                    raise _refusal(Refusal(404, f"node {node.id}: {reason or 'not found'}"), node_audit)
                raise _refusal(Refusal(502, f"node {node.id} answered HTTP {r.status}: {reason}"), node_audit)
            rec = await p.node_decided(t, 200, "", node_audit)
            out = web.StreamResponse(status=200)
            for k in PASS_HEADERS:
                if k in r.headers:
                    out.headers[k] = r.headers[k]
            if r.content_length is not None:
                out.content_length = r.content_length
            else:
                out.enable_chunked_encoding()
            out.headers[AUDIT_HEADER] = rec.ref  # the platform's decision record
            sha = hashlib.sha256()
            n, complete = 0, False
            try:
                await out.prepare(request)
                # Chunk by chunk: the bytes pass through memory once and are never written here.
                while True:
                    try:
                        chunk = await r.content.read(CHUNK)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        # The answer has started: the member learns of the break by the connection
                        # closing before Content-Length / the last chunk, never by a false end.
                        log.warning("node %s broke off a download after %d bytes: %s", node.id, n, type(exc).__name__)
                        raise ConnectionResetError("node broke off the download") from None
                    if not chunk:
                        break
                    sha.update(chunk)
                    n += len(chunk)
                    await out.write(chunk)  # the member gone: ConnectionResetError, recorded below
                complete = r.content_length is None or n == r.content_length
                await out.write_eof()
            finally:
                try:
                    # Shielded: a cancelled handler (member gone) still meters and records what went out.
                    await asyncio.shield(p.downloaded(t, n, sha.hexdigest(), complete, node_audit, rec.ref))
                except Exception:
                    log.exception("download of %s could not be metered or recorded", t.subject)
            return out
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = f"node {node.id} cannot be reached: {type(exc).__name__}"
        await p.node_decided(t, 502, reason, None)
        raise ApiError(502, "Bad Gateway", reason) from None


# --- the application ----------------------------------------------------------------------------


def make_app(cfg: PlatformConfig, dsn: str, *, harvest: bool = True) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=64 * 1024)
    metrics = Metrics()
    db = Db(dsn, cfg.database.pool_size)
    app[K_CONFIG] = cfg
    app[K_DB] = db
    app[K_METRICS] = metrics
    app[K_PLATFORM] = Platform(cfg, db, metrics)
    app[K_HARVESTER] = Harvester(cfg, db, metrics)
    app[K_TASKS] = []
    app.router.add_get("/healthz", h_healthz)
    app.router.add_get("/metrics", h_metrics)
    app.router.add_get("/api/me", h_me)
    app.router.add_get("/api/search", h_search)
    app.router.add_get("/api/products/{node}/{name}/{version}", h_product)
    # No HEAD: it would broker (and meter) a download whose bytes nobody receives.
    app.router.add_get("/api/products/{node}/{name}/{version}/files/{path:.+}", h_file, allow_head=False)
    app.cleanup_ctx.append(_lifecycle(harvest))
    return app


def _lifecycle(harvest: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        db = app[K_DB]
        await asyncio.to_thread(db.open)
        await db.run(store.migrate)
        await db.run(store.sync_config, app[K_CONFIG])
        app[K_SESSION] = aiohttp.ClientSession(auto_decompress=False)
        if harvest:
            app[K_TASKS].append(asyncio.create_task(app[K_HARVESTER].run(), name="harvester"))
        yield
        for task in app[K_TASKS]:
            task.cancel()
        for task in app[K_TASKS]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app[K_SESSION].close()
        await asyncio.to_thread(db.close)

    return ctx
