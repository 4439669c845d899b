"""Partitions ahead of the data (plain PostgreSQL path; TimescaleDB makes chunks itself) and the
periodic maintenance: partitions ahead, settling finished days, retention."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg

from plantstream.contract import Aggregate
from plantstream.sinks.timescaledb.timesql import DAY_US, TS


class Span(Protocol):
    """A slice of one record (``record.payload[lo:hi]``), as the sink's bisection units are."""

    @property
    def kind(self) -> str: ...

    record: Any
    lo: int
    hi: int


class Partitions:
    def __init__(self) -> None:
        self.covered: set[tuple[str, int]] = set()  # (table, day) known to have a partition
        self.keep_days: dict[str, int] = {}  # retention per table, read at connect

    def load_retention(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute("SELECT table_name, extract(day FROM keep)::int FROM retention").fetchall()
        self.keep_days = {str(t): int(d) for t, d in rows}

    def ensure(self, conn: psycopg.Connection[Any], units: Sequence[Span]) -> None:
        """Partitions for the batch's time range, in a short transaction of their own (plain path)."""
        now_day = int(time.time() * 1e6) // DAY_US
        spans: dict[str, tuple[int, int]] = {}
        for u in units:
            p = u.record.payload
            if u.kind == "readings":
                ts = p.ts_us[u.lo : u.hi]
                _widen(spans, "readings", min(ts), max(ts))
            elif u.kind == "aggregates":
                for a in p[u.lo : u.hi]:
                    if isinstance(a, Aggregate) and isinstance(a.start_us, int):
                        _widen(spans, "aggregates_" + str(a.window), a.start_us, a.start_us)
        for table, (lo, hi) in spans.items():
            keep = self.keep_days.get(table)
            if keep is None:
                continue  # an unknown window: the write will reject it
            # Beyond retention or far ahead the rows go to the default partition instead of
            # creating partitions that retention drops again or that nobody will fill.
            lo_day = max(lo // DAY_US, now_day - keep)
            hi_day = min(hi // DAY_US, now_day + 31)
            missing = [d for d in range(lo_day, hi_day + 1) if (table, d) not in self.covered]
            if not missing:
                continue
            conn.execute(
                f"SELECT ps_ensure_partitions(%s, {TS.format('%s::bigint')}, {TS.format('%s::bigint')})",
                (table, missing[0] * DAY_US, (missing[-1] + 1) * DAY_US),
            )
            self.covered.update((table, d) for d in missing)

    @staticmethod
    def maintain(conn: psycopg.Connection[Any]) -> None:
        for table in ("readings", "aggregates_1s", "aggregates_1m"):
            conn.execute(
                "SELECT ps_ensure_partitions(%s, now() - interval '1 day', now() + interval '4 days')", (table,)
            )
            conn.execute("SELECT ps_settle_partitions(%s)", (table,))
            conn.execute("SELECT ps_apply_retention(%s)", (table,))


def _widen(spans: dict[str, tuple[int, int]], table: str, lo: int, hi: int) -> None:
    cur = spans.get(table)
    spans[table] = (lo, hi) if cur is None else (min(cur[0], lo), max(cur[1], hi))
