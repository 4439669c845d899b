"""What every edge decoder checks before a sample may be acknowledged (pure, no I/O).

A sample either can be carried to the database or it cannot. One that cannot (a string with a
lone surrogate, an integer beyond 64 bits, a timestamp before 1970 or after year 9999, a reading too
large for any Kafka message) raises :class:`Uncarriable`: the decoder dead-letters it alone, with
the reason naming the field, and the message's other samples still deliver. Nothing that passes
here can make the batch encoder raise later, after the source was acknowledged.

A sample that can be carried but is suspect is KEPT, flagged bad with a reason (a bad value is
delivered flagged, never dropped): a non-finite float (NaN, +-Inf), or a timestamp outside the
window around the receiving clock (``timestamps`` in the edge config).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from plantstream.edge.batcher import BATCH_FIXED, READING_FIXED, Sample, reading_bytes, text_bytes
from plantstream.edge.config import EdgeConfig

# What the wire codec (msgpack) carries exactly: int64 and uint64 (Sparkplug UInt64).
INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1
# Exclusive upper bound: 10000-01-01T00:00:00Z in microseconds (what datetime, PostgreSQL and
# every downstream consumer can represent); the lower bound is the epoch (ts_us >= 0).
TS_END_US = 253_402_300_800_000_000
BAD = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Uncarriable(ValueError):
    """A sample no stage can carry; ``reason`` goes to the dead-letter header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-agent limits every decoder applies (see ``EdgeConfig.timestamps`` and ``batch.max_bytes``)."""

    max_past_us: int = 7 * 86400 * 1_000_000
    max_future_us: int = 600 * 1_000_000
    # Largest single reading (estimated, see batcher.reading_bytes, plus twice its equipment path)
    # that still fits one batch.
    max_reading_bytes: int = 1_000_000 - 4096

    @classmethod
    def of(cls, cfg: EdgeConfig) -> Limits:
        # Source ids are at most 64 ASCII characters (config._ID).
        room = batch_max_bytes(cfg) - BATCH_FIXED - 2 * text_bytes(cfg.plant) - 64
        w = cfg.timestamps
        return cls(round(w.max_past_s * 1e6), round(w.max_future_s * 1e6), room)


DEFAULT_LIMITS = Limits()


def batch_max_bytes(cfg: EdgeConfig) -> int:
    """Encoded size a batch (the Kafka message value) stays under: ``batch.max_bytes``, or the
    producer's ``message.max.bytes`` override if lower, less room for the key, headers and framing."""
    cap = cfg.batch.max_bytes
    prod = cfg.kafka.producer.get("message.max.bytes")
    if isinstance(prod, int | float | str) and not isinstance(prod, bool):
        with contextlib.suppress(ValueError):  # not a number: librdkafka refuses the config itself
            cap = min(cap, int(prod))
    return cap - 1024


def _text(field: str, s: str) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Uncarriable(
            f"{field}: string holds a lone surrogate (U+{ord(s[exc.start]):04X}) at index {exc.start}, "
            "not encodable as UTF-8"
        ) from None


def _int(n: int) -> str:
    # str() of an int of more than 4300 digits raises (CPython's int_max_str_digits).
    return str(n) if n.bit_length() <= 128 else f"of {n.bit_length()} bits"


def _iso(ts_us: int) -> str:
    # Integer arithmetic: ts_us / 1e6 rounds the last microsecond of 9999 up into year 10000.
    return (_EPOCH + timedelta(microseconds=ts_us)).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_ts(field: str, ts: object) -> int:
    """``ts`` as integer microseconds since the epoch in [1970, 10000); Uncarriable otherwise."""
    if type(ts) is not int:
        raise Uncarriable(f"{field}: timestamp is {type(ts).__name__}, not integer microseconds")
    if not 0 <= ts < TS_END_US:
        when = "before 1970" if ts < 0 else "after year 9999"
        raise Uncarriable(f"{field}: timestamp {_int(ts)} us is {when}, not representable")
    return ts


def vet(sample: Sample, received_us: int, limits: Limits = DEFAULT_LIMITS) -> Sample:
    """``sample`` if it is fine, a copy flagged bad (quality 2, reason) if suspect; raises
    :class:`Uncarriable` if it cannot be carried."""
    equipment, tag, ts, value, unit, quality, status, srv, reason = sample
    # Fast path, the common case (a finite float, ASCII names, no server timestamp, inside the
    # window): the MQTT path runs this for every reading, tens of thousands a second.
    if (
        type(value) is float
        and value - value == 0.0  # false for NaN and +-Inf
        and type(ts) is int
        and 0 <= received_us - limits.max_past_us <= ts <= received_us + limits.max_future_us
        and srv is None
        and reason is None
        and tag.isascii()
        and unit.isascii()
        and equipment.isascii()
        and len(tag) + len(unit) + 2 * len(equipment) < limits.max_reading_bytes - READING_FIXED
    ):
        return sample
    problems: list[str] = []
    if isinstance(value, bool):
        pass
    elif isinstance(value, float):
        if not math.isfinite(value) and (reason is None or quality != BAD):
            # (a bad sample whose reason already explains its NaN, e.g. a death, needs no second one)
            problems.append(f"value: not finite ({value})")
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise Uncarriable(f"value: integer {_int(value)} is beyond 64 bits")
    elif isinstance(value, str):
        _text("value", value)
    else:
        raise Uncarriable(f"value: {type(value).__name__} is not a number, bool or string")
    _text("tag", tag)
    _text("unit", unit)
    _text("equipment", equipment)
    check_ts("ts_us", ts)
    lo, hi = received_us - limits.max_past_us, received_us + limits.max_future_us
    if not lo <= ts <= hi:
        problems.append(_window("ts_us", ts, received_us, limits))
    if srv is not None:
        check_ts("server_ts_us", srv)
        if not lo <= srv <= hi:
            problems.append(_window("server_ts_us", srv, received_us, limits))
    if reason is not None:
        _text("reason", reason)
    size = reading_bytes(sample) + 2 * text_bytes(equipment)
    if size > limits.max_reading_bytes:
        raise Uncarriable(
            f"reading of about {size} bytes can never fit one Kafka message "
            f"(at most {limits.max_reading_bytes} bytes a reading with batch.max_bytes)"
        )
    if not problems:
        return sample
    why = "; ".join(problems) if reason is None else f"{reason}; {'; '.join(problems)}"
    return (equipment, tag, ts, value, unit, BAD, status, srv, why)


def _window(field: str, ts: int, received_us: int, limits: Limits) -> str:
    if ts < received_us:
        return (
            f"{field}: {_iso(ts)} is {(received_us - ts) / 1e6:.0f} s before the receiving clock "
            f"(window {limits.max_past_us / 1e6:.0f} s past)"
        )
    return (
        f"{field}: {_iso(ts)} is {(ts - received_us) / 1e6:.0f} s after the receiving clock "
        f"(window {limits.max_future_us / 1e6:.0f} s future)"
    )


def vet_all(samples: list[Sample], received_us: int, limits: Limits = DEFAULT_LIMITS) -> tuple[list[Sample], list[str]]:
    """(samples that can be carried, possibly flagged; reasons of those that cannot)."""
    ok: list[Sample] = []
    bad: list[str] = []
    for s in samples:
        try:
            ok.append(vet(s, received_us, limits))
        except Uncarriable as exc:
            bad.append(f"{s[1]!r}: {exc.reason}" if isinstance(s[1], str) and s[1].isascii() else exc.reason)
    return ok, bad
