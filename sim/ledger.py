"""The simulator's ledger: one JSON line per value it served and per context event it published.

End-to-end tests compare what reached the database with this file, so it holds exactly what went
out: the value as written (``null`` for a bad-quality write, whose value OPC-UA discards), its
source timestamp in microseconds, and the transport. Buffered; flushed at least every second by
the serving loop (``maybe_flush``) and on ``close``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from plantstream.contract import ContextEvent, Value
from plantstream.producers.codec import context_to_dict


class Ledger:
    def __init__(self, path: str | Path, flush_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] | None = self.path.open("a", encoding="utf-8", buffering=1 << 20)
        self._interval = flush_interval_s
        self._last_flush = time.monotonic()
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
        self.lines = 0

    def reading(self, plant: str, tag: str, ts_us: int, value: Value | None, transport: str, good: bool) -> None:
        self._write(
            {"plant": plant, "tag": tag, "ts_us": ts_us, "value": value, "transport": transport,
             "quality": "good" if good else "bad"}
        )  # fmt: skip

    def event(self, ev: ContextEvent) -> None:
        body = context_to_dict(ev)
        self._write({"event": body.pop("kind"), **body})

    def _write(self, obj: dict[str, Any]) -> None:
        if self._f is None:
            raise ValueError(f"ledger {self.path} is closed")
        self._f.write(self._dumps(obj))
        self._f.write("\n")
        self.lines += 1

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()
            self._last_flush = time.monotonic()

    def maybe_flush(self) -> None:
        now = time.monotonic()
        if self._f is not None and now - self._last_flush >= self._interval:
            self._f.flush()
            self._last_flush = now

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            self._f.close()
            self._f = None


def read_ledger(path: str | Path) -> list[dict[str, Any]]:
    """All lines of a ledger file (a trailing partial line from a killed writer is skipped)."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                out.append(json.loads(line))
    return out
