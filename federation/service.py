"""What the platform decides, apart from HTTP: who a token is, search, and the steps of a brokered
download (admission with quotas, the audit records, metering, alert rules).

A download is three audit records in the platform chain: ``request`` (who asked for what),
``decision`` (who decided: the platform for a quota or a core-grade product, else the node, with
the node's own ``X-Plantstream-Audit`` record so each chain cites the other), and ``download``
(bytes streamed, their SHA-256 and whether it is the one the catalog lists).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from plantstream import audit
from plantstream.contract import Grade
from plantstream.domain.catalog import ACCESS_HEADER, MEMBER_HEADER, TIER_HEADER, FileEntry
from plantstream.log import event

from . import logic, store
from .config import Level, Member, PlatformConfig
from .db import Db
from .logic import SearchFilter
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 403, 404, 429
    reason: str
    limit: str | None = None
    retry_after: int | None = None


@dataclass(slots=True)
class Ticket:
    """An admitted download: what to ask the node, and what to record when it ends."""

    member: Member
    level: Level
    harvested: store.Harvested
    file: FileEntry
    subject: str
    cells: int
    day: Any
    request_ref: str
    node_headers: dict[str, str] = field(default_factory=dict)
    released: bool = False


def _token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Platform:
    def __init__(self, cfg: PlatformConfig, db: Db, metrics: Metrics) -> None:
        self.cfg, self.db, self.metrics = cfg, db, metrics
        # Compared as SHA-256 digests with hmac.compare_digest over every member, so the answer
        # time says nothing about how much of a token matched.
        self._tokens = [(_token_key(m.token.get_secret_value()), m) for m in cfg.members]
        self.inflight: dict[str, int] = {}

    # --- identity -------------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Member | None:
        if not token:
            return None
        key = _token_key(token)
        found: Member | None = None
        for k, m in self._tokens:
            if hmac.compare_digest(k, key):
                found = m
        return found

    def level(self, member: Member) -> Level:
        return self.cfg.levels[member.level]

    def node_headers(self, member: Member) -> dict[str, str]:
        """The contract headers the node decides by, with the platform's node credential."""
        lv = self.level(member)
        return {
            MEMBER_HEADER: member.id,
            TIER_HEADER: lv.tier,
            ACCESS_HEADER: ",".join(a.value for a in lv.access),
        }

    # --- catalog --------------------------------------------------------------------------------

    async def search(self, f: SearchFilter, member: Member | None = None) -> list[store.Harvested]:
        """Entries matching ``f``; for a member only those its tier may read, as a node's own
        catalog shows a tier (the node still decides every download)."""
        rows = await self.db.run(store.products)
        if member is not None:
            tier = self.level(member).data_tier
            rows = [h for h in rows if logic.tier_may_read(tier, h.entry.grade.value)]
        by_key = {(h.node, h.entry.name, h.entry.version): h for h in rows}
        hits = logic.search(((h.node, h.entry) for h in rows), f)
        return [by_key[(n, e.name, e.version)] for n, e in hits]

    async def entry(self, node: str, name: str, version: str, member: Member | None = None) -> store.Harvested | None:
        """The harvested entry; for a member whose tier may not read it, None (as if absent)."""
        h = await self.db.run(store.product, node, name, version)
        if (
            h is not None
            and member is not None
            and not logic.tier_may_read(self.level(member).data_tier, h.entry.grade.value)
        ):
            return None
        return h

    # --- a brokered download --------------------------------------------------------------------

    async def admit(self, member: Member, node: str, name: str, version: str, path: str) -> Ticket | Refusal:
        """Request record, then the platform's own checks (catalog, core grade, quotas) before the
        node is contacted. A refusal here is recorded as the platform's decision."""
        lv = self.level(member)
        subject = f"{node}/{name}@{version}/{path}"
        h = await self.entry(node, name, version)
        req = await self.db.run(
            audit.append,
            "request",
            f"member/{member.id}",
            subject,
            {"level": member.level, "tier": lv.tier, "access": [a.value for a in lv.access]},
        )
        if h is None:
            return await self._refuse(member, req, subject, Refusal(404, f"no product {name} {version} at node {node}"))
        file = next((f for f in h.entry.files if f.path == path), None)
        if file is None:
            return await self._refuse(
                member, req, subject, Refusal(404, f"product {name} {version} lists no file {path!r}")
            )
        if h.entry.grade is Grade.CORE:
            # Core grade never leaves its node through the platform, whatever the node would say.
            return await self._refuse(
                member, req, subject, Refusal(403, f"product {name} {version} is core grade: never shared")
            )
        day = store.now().date()
        used = await self.db.run(store.day_usage, member.id, day)
        cells = logic.product_cells(h.entry)
        over = logic.check_quota(
            lv.quotas, used, f"{node}/{name}@{version}", cells, file.bytes, self.inflight.get(member.id, 0)
        )
        if over is not None:
            retry = 1 if over.limit == "concurrent_pulls" else logic.seconds_to_midnight(store.now())
            return await self._refuse(member, req, subject, Refusal(429, str(over), over.limit, retry))
        self.inflight[member.id] = self.inflight.get(member.id, 0) + 1
        self.metrics.pulls_inflight.inc()
        return Ticket(member, lv, h, file, subject, cells, day, req.ref, self.node_headers(member))

    def release(self, t: Ticket) -> None:
        if not t.released:
            t.released = True
            self.inflight[t.member.id] = max(0, self.inflight.get(t.member.id, 1) - 1)
            self.metrics.pulls_inflight.dec()

    async def _refuse(self, member: Member, req: audit.AuditRecord, subject: str, r: Refusal) -> Refusal:
        outcome = {403: "refused", 404: "not_found", 429: "quota"}.get(r.status, "refused")
        await self.db.run(
            audit.append,
            "decision",
            "platform",
            subject,
            {"by": "platform", "status": r.status, "reason": r.reason, "limit": r.limit, "request": req.ref},
        )
        self.metrics.requests.labels(outcome).inc()
        if r.status in (403, 429):
            await self._denied(member, subject, r.status, r.reason)
        return r

    async def node_decided(self, t: Ticket, status: int, reason: str, node_audit: str | None) -> audit.AuditRecord:
        """The node's answer, recorded with its own audit reference; refusals feed the alert rule."""
        rec = await self.db.run(
            audit.append,
            "decision",
            f"node/{t.harvested.node}",
            t.subject,
            {
                "by": "node",
                "status": status,
                "reason": reason,
                "node_audit": node_audit,
                "request": t.request_ref,
            },
        )
        if status != 200:
            self.metrics.requests.labels("refused" if status == 403 else "node_error").inc()
            if status == 403:
                await self._denied(t.member, t.subject, status, reason)
        return rec

    async def downloaded(
        self, t: Ticket, nbytes: int, sha256: str, complete: bool, node_audit: str | None, decision_ref: str
    ) -> None:
        """Meter and record what was streamed; then the volume rule."""
        e = t.harvested.entry
        if nbytes > 0 or complete:
            await self.db.run(store.meter, t.member.id, t.harvested.node, e, t.day, nbytes, t.cells)
        charge = store.charge_of(e.access)
        self.metrics.bytes.labels(charge).inc(nbytes)
        self.metrics.requests.labels("ok" if complete else "incomplete").inc()
        await self.db.run(
            audit.append,
            "download",
            f"member/{t.member.id}",
            t.subject,
            {
                "bytes": nbytes,
                "sha256": sha256,
                "complete": complete,
                "matches_catalog": complete and sha256 == t.file.sha256 and nbytes == t.file.bytes,
                "charge": charge,
                "node_audit": node_audit,
                "decision": decision_ref,
            },
        )
        if complete and sha256 != t.file.sha256:
            event(
                log,
                "a node streamed other bytes than its catalog lists",
                logging.WARNING,
                subject=t.subject,
                sha256=sha256,
                listed=t.file.sha256,
            )
        await self._volume(t.member)

    # --- alert rules ----------------------------------------------------------------------------

    async def _denied(self, member: Member, subject: str, status: int, reason: str) -> None:
        now = store.now()
        await self.db.run(store.record_denial, member.id, now, subject.split("/", 1)[0], subject, status, reason)
        a = self.cfg.alerts
        since = now - timedelta(seconds=a.denied_window_s)
        times = await self.db.run(store.denials_since, member.id, since)
        alert = logic.denied_alert(member.id, times, now, a)
        if alert is None:
            return
        last = await self.db.run(store.last_alert, member.id, "denied")
        if last is not None and last >= since:
            return  # one alert per window, not one per further refusal
        await self._raise(alert, now)

    async def _volume(self, member: Member) -> None:
        now = store.now()
        today = now.date()
        used = await self.db.run(store.day_usage, member.id, today)
        history = await self.db.run(store.daily_bytes, member.id, today, self.cfg.alerts.volume_history_days)
        alert = logic.volume_alert(member.id, used.bytes, history, self.cfg.alerts)
        if alert is None:
            return
        last = await self.db.run(store.last_alert, member.id, "volume")
        if last is not None and last.date() == today:
            return  # once a day
        await self._raise(alert, now)

    async def _raise(self, alert: logic.Alert, now: datetime) -> None:
        rec = await self.db.run(
            store.record_alert, alert.member, alert.rule, {"message": alert.detail, **alert.values}, now
        )
        self.metrics.alerts.labels(alert.rule).inc()
        event(
            log,
            "alert",
            logging.WARNING,
            rule=alert.rule,
            member=alert.member,
            detail=alert.detail,
            audit=rec.ref,
        )
