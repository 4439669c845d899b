"""Harvesting the nodes' catalogs: ``GET <node>/api/catalog`` with the node credential, parsed with
``plantstream.domain.catalog.parse_catalog``, stored in the platform database, each attempt an
audit record (kind ``harvest``).

On a schedule (``harvest_interval_s``) inside ``plantstream platform serve`` and on demand
(``plantstream platform harvest``). A node that is down or answers nonsense is recorded (error,
consecutive failures), its last entries are kept and marked stale, and it is retried sooner than
the interval (5 s doubling, capped at the interval). Nothing a node sends stops the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from plantstream import audit
from plantstream.domain.catalog import CATALOG_PATH, ProductEntry, parse_catalog
from plantstream.log import event

from . import store
from .config import Node, PlatformConfig
from .db import Db
from .metrics import Metrics

log = logging.getLogger(__name__)
MAX_CATALOG_BYTES = 64 * 1024 * 1024
RETRY_FIRST_S = 5.0


@dataclass(frozen=True, slots=True)
class HarvestResult:
    node: str
    ok: bool
    entries: int
    error: str | None
    audit_ref: str


async def fetch_catalog(
    session: aiohttp.ClientSession, node: Node, timeout_s: float
) -> list[tuple[ProductEntry, dict[str, Any]]]:
    """The node's entries with their JSON-LD as given; ValueError says what was wrong."""
    headers = {"Authorization": f"Bearer {node.credential.get_secret_value()}", "Accept": "application/ld+json"}
    try:
        async with session.get(
            node.url + CATALOG_PATH, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as r:
            if r.status != 200:
                text = (await r.content.read(300)).decode("utf-8", "replace")
                raise ValueError(f"{CATALOG_PATH} answered HTTP {r.status}: {text}")
            body = await r.content.read(MAX_CATALOG_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ValueError(f"cannot reach {node.url}: {type(exc).__name__}: {exc}") from None
    if len(body) > MAX_CATALOG_BYTES:
        raise ValueError(f"catalog larger than {MAX_CATALOG_BYTES} bytes")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"catalog is not JSON: {exc}") from None
    node_id, entries = parse_catalog(doc)
    if node_id != node.id:
        raise ValueError(f"catalog names its node {node_id!r}, configured as {node.id!r}")
    docs = [d for d in doc.get("dataset", []) if isinstance(d, dict)]
    seen: set[str] = set()
    for e in entries:
        if e.key in seen:
            raise ValueError(f"catalog lists {e.key} twice")
        seen.add(e.key)
    return list(zip(entries, docs, strict=True))


async def harvest_node(
    session: aiohttp.ClientSession, node: Node, db: Db, timeout_s: float, metrics: Metrics | None = None
) -> HarvestResult:
    at = store.now()
    try:
        docs = await fetch_catalog(session, node, timeout_s)
    except ValueError as exc:
        error = str(exc)
        failures = await db.run(store.record_harvest_failed, node.id, error, at)
        rec = await db.run(
            audit.append,
            "harvest",
            "platform",
            f"node/{node.id}",
            {"ok": False, "url": node.url, "error": error[:500], "failures": failures},
        )
        event(log, "harvest failed; last entries kept, marked stale", logging.WARNING, node=node.id, error=error)
        if metrics:
            metrics.harvests.labels(node.id, "failed").inc()
            metrics.node_up.labels(node.id).set(0)
        return HarvestResult(node.id, False, 0, error, rec.ref)
    await db.run(store.record_harvest_ok, node.id, docs, at)
    rec = await db.run(
        audit.append,
        "harvest",
        "platform",
        f"node/{node.id}",
        {"ok": True, "url": node.url, "entries": len(docs), "products": sorted(e.key for e, _ in docs)[:1000]},
    )
    event(log, "harvested", node=node.id, entries=len(docs))
    if metrics:
        metrics.harvests.labels(node.id, "ok").inc()
        metrics.node_up.labels(node.id).set(1)
        metrics.entries.labels(node.id).set(len(docs))
    return HarvestResult(node.id, True, len(docs), None, rec.ref)


async def harvest_all(
    cfg: PlatformConfig, db: Db, only: str | None = None, metrics: Metrics | None = None
) -> list[HarvestResult]:
    nodes = [n for n in cfg.nodes if only is None or n.id == only]
    async with aiohttp.ClientSession() as session:
        return list(
            await asyncio.gather(*(harvest_node(session, n, db, cfg.harvest_timeout_s, metrics) for n in nodes))
        )


def retry_delay(failures: int, interval_s: float) -> float:
    """After the n-th consecutive failure: 5 s, 10 s, 20 s, ... capped at the interval."""
    if failures <= 0:
        return interval_s
    return min(interval_s, RETRY_FIRST_S * float(2 ** min(failures - 1, 20)))


class Harvester:
    """The schedule inside ``serve``: every node at its own due time; ``trigger()`` harvests all now."""

    def __init__(self, cfg: PlatformConfig, db: Db, metrics: Metrics) -> None:
        self.cfg, self.db, self.metrics = cfg, db, metrics
        self._wake = asyncio.Event()
        self._due: dict[str, float] = {n.id: 0.0 for n in cfg.nodes}
        self._failures: dict[str, int] = {n.id: 0 for n in cfg.nodes}
        self.rounds = 0

    def trigger(self) -> None:
        for k in self._due:
            self._due[k] = 0.0
        self._wake.set()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                now = time.monotonic()
                due = [n for n in self.cfg.nodes if self._due[n.id] <= now]
                if due:
                    await asyncio.gather(*(self._one(session, n) for n in due))
                    self.rounds += 1
                    continue
                wait = max(0.05, min(self._due.values()) - time.monotonic())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _one(self, session: aiohttp.ClientSession, node: Node) -> None:
        try:
            res = await harvest_node(session, node, self.db, self.cfg.harvest_timeout_s, self.metrics)
            self._failures[node.id] = 0 if res.ok else self._failures[node.id] + 1
        except Exception:  # the database away, say: log, count, and try again later
            log.exception("harvest of node %s could not be recorded", node.id)
            self._failures[node.id] += 1
            self.metrics.harvests.labels(node.id, "error").inc()
        self._due[node.id] = time.monotonic() + retry_delay(self._failures[node.id], self.cfg.harvest_interval_s)
