"""The durable store-and-forward buffer: SQLite in WAL mode, on disk, append order.

Contract:

* :meth:`Buffer.append` commits encoded Kafka messages *and* the per-source sequence counters
  in one transaction. Only after it returns may a reading be acknowledged to its source; from
  then on it survives ``kill -9`` (and power loss with ``synchronous="full"``).
* Sequence numbers come from :meth:`Buffer.reserve`; the counter persisted with every append is
  never below any committed seq, so seq is strictly increasing per source across restarts
  (a crash may leave gaps, never repeats). A source's first seq in a new buffer is the clock in
  ns + 1 (a new epoch), so a lost buffer's successor numbers above its predecessor.
* Entries are read oldest-first (:meth:`read`) and removed only by :meth:`delete`, which the
  forwarder calls when Kafka acknowledged delivery.
* Caps: beyond ``max_bytes`` (sum of stored message bytes) or ``max_age_s`` the OLDEST entries are
  dropped; the dropped readings are counted (persisted) and logged.
* Memory does not grow with depth: nothing but counters is cached.
* Redelivery window: :meth:`append` also records identity keys of readings from sources that
  redeliver (MQTT QoS 1), in the same transaction; :meth:`seen` answers from the last
  ``recent_window`` keys per source, reloaded on open, so a copy redelivered after a reconnect or a
  ``kill -9`` is recognised instead of getting a new sequence number.
* A write that fails (disk full, I/O error) raises with nothing committed and is recorded in
  :attr:`Buffer.failing` until the same kind of write succeeds again (see the agent for what it
  does meanwhile: it stops acknowledging and retries).
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgpack

from plantstream.log import Throttle

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_us INTEGER NOT NULL,
    source TEXT NOT NULL,
    count INTEGER NOT NULL,
    size INTEGER NOT NULL,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB
);
CREATE TABLE IF NOT EXISTS seq (source TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS recent (id INTEGER PRIMARY KEY, source TEXT NOT NULL, key INTEGER NOT NULL);
"""


@dataclass(slots=True)
class Entry:
    """One Kafka message waiting in the buffer; ``count`` readings (0 for metadata)."""

    topic: str
    key: bytes | None
    value: bytes
    source: str
    count: int = 0
    headers: Headers | None = None

    @property
    def size(self) -> int:
        return len(self.value) + len(self.key or b"") + len(self.topic)


@dataclass(slots=True, frozen=True)
class Stored:
    id: int
    created_us: int
    entry: Entry


@dataclass(slots=True, frozen=True)
class Depth:
    entries: int
    readings: int
    bytes: int
    oldest_created_us: int | None


def _now_us() -> int:
    return time.time_ns() // 1000


# SQLite primary result codes that mean the storage, not the statement, failed (extended codes
# carry the primary one in the low byte): SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN.
_STORAGE_CODES = frozenset({10, 13, 14})


def is_storage_error(exc: BaseException) -> bool:
    """True for a disk full / disk I/O failure (the condition clears when space returns)."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _STORAGE_CODES
    msg = str(exc).lower()
    return "disk is full" in msg or "disk i/o" in msg


def error_kind(exc: BaseException) -> str:
    """What a failed write says about the storage: disk_full, io_error, cannot_open or sqlite_error."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return {13: "disk_full", 10: "io_error", 14: "cannot_open"}.get(code & 0xFF, "sqlite_error")
    msg = str(exc).lower()
    if "disk is full" in msg:
        return "disk_full"
    return "io_error" if "disk i/o" in msg else "sqlite_error"


@dataclass(slots=True)
class WriteFailure:
    """A kind of write (append, delete, expire, cap) that is failing right now."""

    kind: str  # error_kind()
    error: str
    since_us: int
    attempts: int = 1


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open: on SQLITE_FULL / IOERR SQLite may already have
    rolled it back itself, and a failing ROLLBACK must not hide the original error."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("rollback failed", extra={"kv": {"error": str(exc)}})


class Buffer:
    """Single-writer durable queue. Not thread-safe: use it from one thread (the agent loop)."""

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = 1 << 30,
        max_age_s: float = 7 * 86400,
        synchronous: Literal["full", "normal"] = "full",
        readonly: bool = False,
        recent_window: int = 20_000,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._drop_log = Throttle(30.0)
        self._drops_since_log = 0
        self.max_age_us = int(max_age_s * 1e6)
        self._sync = synchronous.upper()
        if readonly:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=5)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            self._open(readonly, recent_window)
        except BaseException:
            self._db.close()  # the caller may retry (disk full): no connection left behind
            raise

    def _open(self, readonly: bool, recent_window: int) -> None:
        if not readonly:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={self._sync}")
            self._db.executescript(_SCHEMA)
        self._seq: dict[str, int] = dict(self._db.execute("SELECT source, last FROM seq").fetchall())
        self._dirty_seq: set[str] = set()
        row = self._db.execute(
            "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(count), 0), COUNT(*) FROM entries"
        ).fetchone()
        self._bytes, self._readings, self._entries = int(row[0]), int(row[1]), int(row[2])
        self.dropped: dict[str, int] = {
            k: int(v) for k, v in self._db.execute("SELECT name, value FROM counters").fetchall()
        }
        self.recent_window = recent_window
        # Writes that failed (append/delete/expire/cap, by operation) in this process: the agent
        # reports them; nothing was committed by a failed write.
        self.write_failures: dict[str, int] = {}
        # Operations whose last attempt failed (cleared by the next one that succeeds).
        self.failing: dict[str, WriteFailure] = {}
        self._recent: dict[str, tuple[set[int], collections.deque[int]]] = {}
        if not readonly:
            rows = self._db.execute("SELECT source, key FROM recent ORDER BY id DESC LIMIT ?", (recent_window * 8,))
            for source, key in reversed(rows.fetchall()):
                self._remember(str(source), int(key))

    # --- write failures ------------------------------------------------------------------------

    def _failed(self, op: str, exc: BaseException) -> None:
        self.write_failures[op] = self.write_failures.get(op, 0) + 1
        f = self.failing.get(op)
        if f is None:
            self.failing[op] = WriteFailure(error_kind(exc), str(exc), _now_us())
        else:
            f.kind, f.error, f.attempts = error_kind(exc), str(exc), f.attempts + 1

    def _ok(self, op: str) -> None:
        if self.failing.pop(op, None) is not None:
            log.info("buffer writes work again", extra={"kv": {"operation": op, "path": str(self.path)}})

    # --- redelivery window -------------------------------------------------------------------

    def _remember(self, source: str, key: int) -> None:
        win = self._recent.get(source)
        if win is None:
            win = self._recent[source] = (set(), collections.deque())
        keys, order = win
        if key in keys:
            return
        keys.add(key)
        order.append(key)
        if len(order) > self.recent_window:
            keys.discard(order.popleft())

    def seen(self, source: str, key: int) -> bool:
        """True if a reading with this identity key was committed recently (see module doc)."""
        win = self._recent.get(source)
        return win is not None and key in win[0]

    # --- sequence numbers ------------------------------------------------------------------

    def reserve(self, source: str, n: int = 1) -> int:
        """First of ``n`` fresh sequence numbers for ``source``; persisted by the next append."""
        last = self._seq.get(source)
        if last is None:
            # A source this buffer never numbered (new, or its buffer was lost): a new epoch that
            # starts at the clock in ns, above every seq an earlier buffer could have used unless
            # that one averaged over 10^9 readings a second (streams' dedup would otherwise drop
            # the new readings as re-sends; see streams/logic/dedup.py). Fits int64 until 2262.
            last = time.time_ns()
        first = last + 1
        self._seq[source] = first + n - 1
        self._dirty_seq.add(source)
        return first

    def last_seq(self, source: str) -> int:
        return self._seq.get(source, 0)

    # --- append ----------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry], recent: Sequence[tuple[str, int]] = ()) -> None:
        """Commit ``entries`` (in order), the reserved seq counters and the ``recent`` (source,
        identity key) pairs; durable on return.

        Raises sqlite3.Error (e.g. disk full) with nothing committed; the caller must not
        acknowledge the readings then.
        """
        now = _now_us()
        rows = [
            (
                now,
                e.source,
                e.count,
                e.size,
                e.topic,
                e.key,
                e.value,
                msgpack.packb(e.headers, use_bin_type=True) if e.headers else None,
            )
            for e in entries
        ]
        seqs = [(s, self._seq[s]) for s in self._dirty_seq]
        try:
            self._insert(rows, seqs, recent)
        except sqlite3.Error as exc:
            self._failed("append", exc)
            raise
        self._ok("append")
        self._dirty_seq.clear()
        for source, key in recent:
            self._remember(source, key)
        for r in rows:
            self._bytes += r[3]
            self._readings += r[2]
        self._entries += len(rows)
        if self._bytes > self.max_bytes:
            # Committed already: a failure here must not raise, or the caller would take the
            # append as failed and commit the same entries again. The next append retries it.
            try:
                self._drop_oldest_over_cap()
            except sqlite3.Error as exc:
                self._failed("cap", exc)
                if self._drop_log.should("cap_failed") >= 0:
                    log.warning(
                        "buffer over max_bytes but dropping failed; retried later", extra={"kv": {"error": str(exc)}}
                    )
            else:
                self._ok("cap")
        else:
            self._ok("cap")  # under the cap now: nothing left to drop

    def _insert(
        self, rows: Sequence[tuple[object, ...]], seqs: Sequence[tuple[str, int]], recent: Sequence[tuple[str, int]]
    ) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                db.executemany(
                    "INSERT INTO entries (created_us, source, count, size, topic, key, value, headers) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            if seqs:
                db.executemany(
                    "INSERT INTO seq (source, last) VALUES (?, ?) "
                    "ON CONFLICT(source) DO UPDATE SET last = excluded.last",
                    seqs,
                )
            if recent:
                db.executemany("INSERT INTO recent (source, key) VALUES (?, ?)", recent)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _drop_oldest_over_cap(self) -> None:
        excess = self._bytes - self.max_bytes
        # Walk the oldest rows until enough bytes are covered; one DELETE by id range.
        freed = 0
        last_id = None
        for rid, size in self._db.execute("SELECT id, size FROM entries ORDER BY id"):
            freed += size
            last_id = rid
            if freed >= excess:
                break
        if last_id is not None:
            self._drop_where("id <= ?", (last_id,), "max_bytes")

    def expire(self, now_us: int | None = None) -> int:
        """Drop entries older than max_age (and redelivery keys beyond the window); returns readings dropped."""
        keep = self.recent_window * max(1, len(self._recent))
        cutoff = (now_us if now_us is not None else _now_us()) - self.max_age_us
        try:
            self._db.execute("DELETE FROM recent WHERE id <= (SELECT MAX(id) FROM recent) - ?", (keep,))
            n = self._drop_where("created_us < ?", (cutoff,), "max_age")
        except sqlite3.Error as exc:
            self._failed("expire", exc)
            raise
        self._ok("expire")
        return n

    def _drop_where(self, where: str, args: tuple[int, ...], reason: str) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            n, readings, size = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(size), 0) FROM entries WHERE {where}", args
            ).fetchone()
            if not n:
                db.execute("COMMIT")
                return 0
            db.execute(f"DELETE FROM entries WHERE {where}", args)
            key = f"dropped_{reason}"
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (key, readings),
            )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._bytes -= size
        self._readings -= readings
        self._entries -= n
        self.dropped[key] = self.dropped.get(key, 0) + readings
        # At the cap this happens on every append: say it once per interval, with the totals.
        self._drops_since_log += readings
        suppressed = self._drop_log.should(key)
        if suppressed >= 0:
            log.warning(
                "buffer full: dropped oldest entries",
                extra={
                    "kv": {
                        "reason": reason,
                        "readings_since_last_log": self._drops_since_log,
                        "drops_since_last_log": suppressed + 1,
                        "dropped_total": self.dropped[key],
                    }
                },
            )
            self._drops_since_log = 0
        return int(readings)

    # --- read / delete ---------------------------------------------------------------------

    def read(self, after_id: int = 0, limit: int = 500, max_bytes: int | None = None) -> list[Stored]:
        """Oldest-first entries with id > after_id."""
        out: list[Stored] = []
        total = 0
        for rid, created, source, count, topic, key, value, headers in self._db.execute(
            "SELECT id, created_us, source, count, topic, key, value, headers FROM entries "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ):
            hdrs = [(str(k), bytes(v)) for k, v in msgpack.unpackb(headers, raw=False)] if headers else None
            out.append(Stored(rid, created, Entry(topic, key, value, source, count, hdrs)))
            total += len(value)
            if max_bytes is not None and total >= max_bytes:
                break
        return out

    def delete(self, ids: Iterable[int]) -> int:
        """Remove delivered entries; unknown ids (already dropped) are ignored. Returns rows removed."""
        ids = list(ids)
        if not ids:
            return 0
        try:
            removed, readings, size = self._delete(ids)
        except sqlite3.Error as exc:
            self._failed("delete", exc)
            raise
        self._ok("delete")
        self._bytes -= size
        self._readings -= readings
        self._entries -= removed
        return removed

    def _delete(self, ids: list[int]) -> tuple[int, int, int]:
        db = self._db
        removed = size = readings = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                n, r, s = db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(size), 0) FROM entries WHERE id IN ({marks})",
                    chunk,
                ).fetchone()
                db.execute(f"DELETE FROM entries WHERE id IN ({marks})", chunk)
                removed += n
                readings += r
                size += s
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return int(removed), int(readings), int(size)

    # --- introspection ---------------------------------------------------------------------

    def depth(self) -> Depth:
        oldest = self._db.execute("SELECT created_us FROM entries ORDER BY id LIMIT 1").fetchone()
        return Depth(self._entries, self._readings, self._bytes, int(oldest[0]) if oldest else None)

    def live_depth(self) -> Depth:
        """Depth recounted from disk (for readers of another process's buffer)."""
        n, r, b = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(size), 0) FROM entries"
        ).fetchone()
        oldest = self._db.execute("SELECT created_us FROM entries ORDER BY id LIMIT 1").fetchone()
        return Depth(int(n), int(r), int(b), int(oldest[0]) if oldest else None)

    def seqs(self) -> dict[str, int]:
        return dict(self._seq)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
