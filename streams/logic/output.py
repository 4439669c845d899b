"""Cutting outputs into messages that fit the broker's maximum message size.

A take's clean readings are coalesced per stream and its aggregates per equipment, so in a
catch-up one output can grow to many megabytes; a broker refuses such a message and, before this
existed, that stopped offset commits for good. :func:`split_encode` encodes a run of items and
cuts it into consecutive parts of at most ``max_bytes`` each (order kept: per-tag order holds in
``clean``). A single item that does not fit on its own is returned separately for the caller to
dead-letter; it is never dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from plantstream.contract import Aggregate
from plantstream.producers.codec import ReadingBatch, encode_aggregates, encode_readings

_COLUMNS = ("tag", "unit", "ts_us", "value", "quality", "status_code", "seq", "server_ts_us", "lot", "reason")


@dataclass(slots=True)
class Part:
    lo: int  # items [lo, hi) of the input
    hi: int
    data: bytes


def split_encode(n: int, encode: Callable[[int, int], bytes], max_bytes: int) -> tuple[list[Part], list[int]]:
    """Encode items ``[0, n)`` as consecutive parts of at most ``max_bytes`` each.

    Returns the parts in order and the indices of single items larger than ``max_bytes``. The
    whole run is encoded first (the common case: it fits); a run that does not is cut into as many
    even pieces as its size suggests (10 % slack), and a piece still too large is cut again.
    """
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    parts: list[Part] = []
    too_big: list[int] = []

    def go(lo: int, hi: int) -> None:
        data = encode(lo, hi)
        if len(data) <= max_bytes:
            parts.append(Part(lo, hi, data))
            return
        if hi - lo == 1:
            too_big.append(lo)
            return
        pieces = max(2, min(hi - lo, math.ceil(len(data) / (max_bytes * 0.9))))
        step = math.ceil((hi - lo) / pieces)
        for a in range(lo, hi, step):
            go(a, min(a + step, hi))

    if n > 0:
        go(0, n)
    return parts, too_big


def slice_batch(batch: ReadingBatch, lo: int, hi: int) -> ReadingBatch:
    """Rows ``[lo, hi)`` of ``batch`` as a batch of the same stream."""
    out = ReadingBatch(batch.plant, batch.equipment, batch.origin, batch.source)
    for name in _COLUMNS:
        setattr(out, name, getattr(batch, name)[lo:hi])
    return out


def fit_readings(batch: ReadingBatch, max_bytes: int) -> tuple[list[tuple[bytes, int]], list[ReadingBatch]]:
    """Encoded messages (bytes, readings) of ``batch`` that each fit ``max_bytes``, and the single
    readings that cannot fit alone (as one-row batches)."""
    n = len(batch)
    if n == 0:
        return [], []
    whole = batch

    def enc(lo: int, hi: int) -> bytes:
        return encode_readings(whole if lo == 0 and hi == n else slice_batch(whole, lo, hi))

    parts, too_big = split_encode(n, enc, max_bytes)
    return [(p.data, p.hi - p.lo) for p in parts], [slice_batch(batch, i, i + 1) for i in too_big]


def fit_aggregates(aggs: Sequence[Aggregate], max_bytes: int) -> tuple[list[bytes], list[Aggregate]]:
    """Encoded aggregate messages that each fit ``max_bytes``, and aggregates too large alone."""
    parts, too_big = split_encode(len(aggs), lambda lo, hi: encode_aggregates(list(aggs[lo:hi])), max_bytes)
    return [p.data for p in parts], [aggs[i] for i in too_big]
