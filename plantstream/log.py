"""Structured logging: one JSON object per line (or key=value for humans), secrets masked.

``log.info("msg", extra={"kv": {...}})`` or the ``event()`` helper attach fields. Anything that
looks like a URL with a password or a ``password=`` pair is masked before it is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

_SECRET = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)|((?:password|passwd|secret|token)\s*[=:]\s*)(\S+)", re.I)


_SECRET_KEY = re.compile(r"pass(word|wd)?$|secret|token|credential|private_key|jaas", re.I)


def redact_value(key: str, value: Any) -> Any:
    """A structured field, masked: whole values under secret-looking keys, URLs and ``password=``
    pairs inside strings, recursively through dicts and lists (a config dumped into a log line)."""
    if isinstance(value, str):
        return "***" if _SECRET_KEY.search(key) and value else redact(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(key, v) for v in value]
    return value


def redact(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return f"{m.group(1)}***{m.group(3)}"
        return f"{m.group(4)}***"

    return _SECRET.sub(sub, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        kv = getattr(record, "kv", None)
        if kv:
            out.update({k: redact_value(k, v) for k, v in kv.items()})
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        kv = getattr(record, "kv", None) or {}
        extra = " ".join(f"{k}={redact_value(k, v)}" for k, v in kv.items())
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname[0]} {record.name}: {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def setup(level: str | None = None, fmt: str | None = None) -> None:
    fmt = fmt or os.environ.get("PLANTSTREAM_LOG_FORMAT", "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("PLANTSTREAM_LOG_LEVEL", "INFO")).upper())
    for noisy in ("asyncua", "aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **kv: Any) -> None:
    logger.log(level, msg, extra={"kv": kv})


class Throttle:
    """Say a recurring problem once per interval, with how often it happened meanwhile."""

    def __init__(self, interval_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def should(self, key: str) -> int:
        """Return the number of suppressed repeats (>= 0) when it is time to log, else -1."""
        now = time.monotonic()
        self._count[key] = self._count.get(key, 0) + 1
        if now - self._last.get(key, -1e18) >= self.interval_s:
            self._last[key] = now
            n = self._count[key] - 1
            self._count[key] = 0
            return n
        return -1
