"""Dataset pulls started over HTTP: a bounded set of background threads running the
``PullEngine`` the entry point handed over (the datasets stage's), their live progress, and who may see what.

Contract:

* At most ``max_concurrent`` pulls run at once per monitor; ``start`` raises ``Busy`` beyond that
  (HTTP 429). A pull holds a slot from ``start`` until its thread ends, whatever the outcome.
* Each pull writes into ``<root>/<pull id>/`` (files are renamed into place only when complete,
  by the datasets stage). The record in ``dataset_pulls`` is the truth once a pull has ended;
  the in-memory job only adds live progress while it runs.
* A pull is visible to the owner tier and to the requester who started it (by requester name);
  to anybody else it does not exist (404, like a withheld tag).
* Files are served only if the record lists them AND they resolve inside ``root``: a record
  cannot point the monitor at any other file (path traversal, or a location outside the root).
* ``close()`` cancels running pulls between windows (recorded as 'failed') and joins the threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from plantstream.access import Tier
from plantstream.config import Settings
from plantstream.domain.pullrequest import (
    Progress,
    PullCancelled,
    PullEngine,
    PullRecord,
    PullRequest,
    Requester,
    RequestError,
)
from plantstream.monitor import models as M
from plantstream.monitor.auth import Identity
from plantstream.monitor.metrics import Metrics

log = logging.getLogger(__name__)

JobState = Literal["starting", "running", "done", "failed", "rejected"]
__all__ = ["Busy", "NoEngine", "Progress", "PullCancelled", "PullJob", "PullRunner", "file_of", "may_see"]

KEEP_FINISHED = 256  # finished jobs kept in memory (the database keeps every record anyway)
RETRY_AFTER_S = 30  # what a 429 tells a client to wait; pulls take tens of seconds at least
audit = logging.getLogger("plantstream.monitor.audit")

# Registered or de-facto media types of what a pull writes.
CONTENT_TYPES = {
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/ld+json",  # croissant.json is JSON-LD
    ".md": "text/markdown; charset=utf-8",
}


class Busy(Exception):
    """Every pull slot of this monitor (or of this token) is taken; the message says which."""


class NoEngine(Exception):
    """The monitor runs without a pull engine (embedded without the datasets stage): HTTP 503."""


def bounded_settings(settings: Settings, statement_timeout_s: float) -> Settings:
    """``settings`` whose DSN sets ``statement_timeout`` on every connection a pull opens (the
    pull's own and its snapshot helpers all connect with this DSN), added to any ``options``."""
    from pydantic import SecretStr

    params = conninfo_to_dict(settings.dsn)
    opts = f"{params.get('options') or ''} -c statement_timeout={int(statement_timeout_s * 1000)}".strip()
    dsn = make_conninfo(settings.dsn, options=opts)
    return settings.model_copy(update={"db_dsn": SecretStr(dsn)})


@dataclasses.dataclass(eq=False)
class PullJob:
    request: PullRequest
    requester: Requester
    key: str = ""  # the token's key (per-token concurrency)
    started_at: datetime = dataclasses.field(default_factory=lambda: datetime.now(tz=UTC))
    pull_id: int | None = None
    state: JobState = "starting"
    progress: Progress | None = None
    record: PullRecord | None = None
    error: BaseException | None = None
    # Set when the record exists (or the pull ended before it could be made).
    began: threading.Event = dataclasses.field(default_factory=threading.Event)
    # Set when the request passed the database checks, or the pull ended.
    answered: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)

    def _on_begin(self, pull_id: int) -> None:
        self.pull_id = pull_id
        self.state = "running"
        self.began.set()

    def _on_resolved(self, plan: object) -> None:
        self.answered.set()

    def _on_progress(self, p: Progress) -> None:
        # A copy: the pull keeps mutating its own object while readers serialize this one.
        self.progress = dataclasses.replace(p)


class PullRunner:
    def __init__(
        self,
        settings: Settings,
        root: Path,
        max_concurrent: int = 1,
        metrics: Metrics | None = None,
        engine: PullEngine | None = None,
        max_per_token: int | None = None,
    ) -> None:
        self.settings = settings
        self.root = root
        self.max_concurrent = max_concurrent
        self.max_per_token = max_per_token or max_concurrent
        self.metrics = metrics
        self.engine = engine
        self._lock = threading.Lock()
        self._active: set[PullJob] = set()
        self._threads: list[threading.Thread] = []
        self._by_id: OrderedDict[int, PullJob] = OrderedDict()
        self._cancel = threading.Event()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._active)

    def start(self, request: PullRequest, requester: Requester, key: str = "") -> PullJob:
        """Start a pull on a background thread; Busy when every slot (or the token's) is taken."""
        if self.engine is None:
            raise NoEngine("this monitor was started without a dataset pull engine (the datasets stage)")
        job = PullJob(request, requester, key)
        with self._lock:
            if self._cancel.is_set():
                raise Busy("the monitor is shutting down")
            mine = sum(1 for j in self._active if j.key == key)
            if mine >= self.max_per_token:
                raise Busy(
                    f"this token already runs {mine} pull(s); at most {self.max_per_token} per token "
                    "(max_pulls_per_token)"
                )
            if len(self._active) >= self.max_concurrent:
                raise Busy(
                    f"{len(self._active)} pull(s) running; this monitor runs at most {self.max_concurrent} "
                    "(max_concurrent_pulls)"
                )
            self._active.add(job)
            th = threading.Thread(target=self._thread, args=(job,), name="dataset-pull", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [th]
        if self.metrics is not None:
            self.metrics.pulls_running.set(len(self._active))
        th.start()
        return job

    def get(self, pull_id: int) -> PullJob | None:
        with self._lock:
            return self._by_id.get(pull_id)

    def _thread(self, job: PullJob) -> None:
        def began(pull_id: int) -> None:
            with self._lock:
                self._by_id[pull_id] = job
                while len(self._by_id) > KEEP_FINISHED + self.max_concurrent:
                    self._by_id.popitem(last=False)
            job._on_begin(pull_id)

        engine = self.engine
        assert engine is not None  # start() refuses without one
        try:
            job.record = engine.run(
                job.request,
                job.requester,
                dsn=self.settings.dsn,
                progress=job._on_progress,
                out_root=self.root,
                on_begin=began,
                on_resolved=job._on_resolved,
                cancel=self._cancel,
                application_name="plantstream-monitor-pull",
            )
            job.state = "done"
        except RequestError as exc:
            job.state, job.error = "rejected", exc
        except Exception as exc:
            job.state, job.error = "failed", exc
            log.warning(
                "dataset pull failed",
                extra={"kv": {"pull": job.pull_id, "requester": job.requester.name, "error": type(exc).__name__}},
            )
        finally:
            if job.record is None and job.pull_id is not None:
                # Rejected and failed pulls are recorded too; keep the record for the status answer.
                with contextlib.suppress(psycopg.Error):
                    job.record = engine.record(self.settings.dsn, job.pull_id)
            with self._lock:
                self._active.discard(job)
                running = len(self._active)
            if self.metrics is not None:
                self.metrics.pulls.labels(job.state).inc()
                self.metrics.pulls_running.set(running)
            audit.info(
                "dataset pull",
                extra={
                    "kv": {
                        "who": job.requester.name,
                        "tier": job.requester.tier.value,
                        "pull": job.pull_id,
                        "outcome": job.state,
                        "error": type(job.error).__name__ if job.error is not None else None,
                    }
                },
            )
            job.began.set()
            job.answered.set()
            job.finished.set()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel running pulls (they stop between windows) and wait for their threads."""
        with self._lock:
            self._cancel.set()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))


# --- what the API shows --------------------------------------------------------------------------


def may_see(who: Identity, requester: str) -> bool:
    """Owners see every pull; anybody else only the pulls they started (never as anonymous)."""
    return who.tier is Tier.OWNER or (not who.anonymous and who.name == requester)


_STATUS: dict[str, M.PullStatusName] = {
    "running": "running",
    "complete": "done",
    "failed": "failed",
    "rejected": "rejected",
}


def progress_of(job: PullJob) -> M.PullProgress:
    p = job.progress or Progress()
    return M.PullProgress(
        readings=p.readings,
        rows=p.rows,
        cells=p.cells,
        seconds=round(p.seconds, 3),
        rows_per_s=round(p.rows / p.seconds, 1) if p.seconds > 0 else 0.0,
        cells_per_s=round(p.cells_per_s, 1),
        expected_rows=job.request.n_rows,
    )


def status_of_job(job: PullJob) -> M.DatasetPullStatus:
    """A pull of this monitor that has not ended yet."""
    assert job.pull_id is not None
    return M.DatasetPullStatus(
        id=job.pull_id,
        status="running",
        requester=job.requester.name,
        tier=job.requester.tier.value,
        started_at=job.started_at,
        request=job.request.canonical(),
        progress=progress_of(job),
    )


def withheld_for(withheld: list[dict[str, Any]]) -> list[M.WithheldGrade]:
    """What was left out, per grade: counts only. A pull's tier cannot see the names (migration
    0008), so they are not recorded; records made before it held one entry per tag, counted here."""
    counts: dict[str, int] = {}
    for w in withheld:
        grade = str(w.get("grade", "core"))
        counts[grade] = counts.get(grade, 0) + int(w.get("count", 1))
    return [M.WithheldGrade(grade=g, count=n, tags=None) for g, n in sorted(counts.items())]


def status_of_record(rec: PullRecord, root: Path, url_prefix: str, viewer: Tier = Tier.PUBLIC) -> M.DatasetPullStatus:
    """A recorded pull; files get download URLs only when complete and held under ``root``."""
    status = _STATUS.get(rec.status, "failed")
    held = status == "done" and files_dir(rec, root) is not None
    return M.DatasetPullStatus(
        id=rec.id,
        status=status,
        requester=rec.requester,
        tier=rec.tier,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
        request=rec.request,
        snapshot=rec.snapshot,
        watermark=rec.watermark,
        files=[
            M.PullFile(
                path=f.path,
                sha256=f.sha256,
                bytes=f.bytes,
                rows=f.rows,
                url=f"{url_prefix}/{rec.id}/files/{f.path}" if held else None,
            )
            for f in rec.files
        ],
        rows=rec.rows,
        cells=rec.cells,
        withheld=withheld_for(rec.withheld),
        error=rec.error,
    )


def files_dir(rec: PullRecord, root: Path) -> Path | None:
    """The pull's directory if it lies inside ``root`` (else None: not this monitor's to serve)."""
    if not rec.location:
        return None
    base, loc = root.resolve(), Path(rec.location).resolve()
    return loc if loc != base and loc.is_relative_to(base) and loc.is_dir() else None


def file_of(rec: PullRecord, root: Path, rel: str) -> tuple[Path, str, str] | None:
    """(absolute path, content type, sha256) of a file the record lists, inside the pull's
    directory under ``root``; None for anything else (unlisted, traversal, outside the root)."""
    if rec.status != "complete":
        return None
    entry = next((f for f in rec.files if f.path == rel), None)
    loc = files_dir(rec, root)
    if entry is None or loc is None:
        return None
    path = (loc / entry.path).resolve()
    if not path.is_relative_to(loc) or not path.is_file():
        return None
    return path, CONTENT_TYPES.get(path.suffix, "application/octet-stream"), entry.sha256
