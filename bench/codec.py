"""The reading hot path without services: ``python -m plantstream.bench.codec [--readings N]``.

Three timings over the same batches, each the best of ``--rounds`` rounds taken in turn (on a
shared VM other work only ever slows a round down, so the fastest is the least disturbed; the
timings alternate so that none runs all its rounds in one slow stretch):

* ``encode``: :func:`~plantstream.producers.codec.encode_readings` (the edge's and streams' output);
* ``decode``: :func:`~plantstream.producers.codec.decode_readings` (every consumer's input);
* ``copy_encode``: the sink's binary COPY encoding of the same rows
  (:func:`~plantstream.sinks.timescaledb.copybin.encode_parts`, 5,000 rows a part as the sink writes).

Two shapes: ``float`` (float values, no lot or server time: the common case) and ``mixed``
(float, int, bool and str values, status codes, server times and lots). Prints one JSON line of
readings/s per timing and shape.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from plantstream.contract import Origin, Value
from plantstream.producers.codec import ReadingBatch, decode_readings, encode_readings
from plantstream.sinks.timescaledb.copybin import ReadingColumns, encode_parts

PER_BATCH = 500
TAGS = 10
_PG_EPOCH_US = 946_684_800_000_000


def batches(readings: int, mixed: bool = False) -> list[ReadingBatch]:
    """``readings`` in batches of 500 (10 tags interleaved, 10 ms apart); ``mixed``: every value
    type, status codes, server times and lots."""
    out: list[ReadingBatch] = []
    t0 = 1_700_000_000_000_000
    for start in range(0, readings, PER_BATCH):
        b = ReadingBatch("steel", f"acme/site/area/line/u{start // PER_BATCH % 8}", Origin.OPCUA, "bench")
        for i in range(start, min(readings, start + PER_BATCH)):
            k = i % TAGS
            value: Value = 1500.0 + (i % 97) * 0.5
            if mixed:
                value = (value, i, i % 2 == 0, f"state{i % 5}")[k % 4]
            b.tag.append(f"caster.t{k}")
            b.unit.append("degC" if k % 2 else "mm")
            b.ts_us.append(t0 + (i // TAGS) * 10_000)
            b.value.append(value)
            b.quality.append(0 if not mixed or i % 7 else 2)
            b.status_code.append(None if not mixed or i % 3 else 0x80310000)
            b.seq.append(i)
            b.server_ts_us.append(None if not mixed or i % 2 else t0 + i)
            b.lot.append(None if not mixed else f"L{i // 1000}")
            b.reason.append(None)
        out.append(b)
    return out


def columns(bs: list[ReadingBatch]) -> ReadingColumns:
    """The rows the sink would COPY for ``bs`` (tag and lot ids made up, as the registry gives them)."""
    cols = ReadingColumns()
    ids: dict[str, int] = {}
    lots: dict[str | None, int | None] = {None: None}
    for b in bs:
        cols.tag_id.extend(ids.setdefault(t, len(ids) + 1) for t in b.tag)
        cols.ts_us.extend(b.ts_us)
        cols.value.extend(b.value)
        cols.quality.extend(b.quality)
        cols.status_code.extend(b.status_code)
        cols.seq.extend(b.seq)
        cols.server_ts_us.extend(b.server_ts_us)
        cols.lot_id.extend(lots.setdefault(lot, len(lots)) for lot in b.lot)
    return cols


def _rate(n: int, fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _shape(
    readings: int,
    rounds: int,
    mixed: bool,
    encode: Callable[[ReadingBatch], bytes],
    decode: Callable[[bytes], ReadingBatch],
    copy_parts: Callable[[ReadingColumns, int, int], Any],
) -> dict[str, float]:
    bs = batches(readings, mixed=mixed)
    raw = [encode(b) for b in bs]
    cols = columns(bs)
    assert [len(decode(r)) for r in raw] == [len(b) for b in bs]
    timed: dict[str, Callable[[], Any]] = {
        "encode": lambda: [encode(b) for b in bs],
        "decode": lambda: [decode(r) for r in raw],
        "copy_encode": lambda: b"".join(copy_parts(cols, _PG_EPOCH_US, 5_000)),
    }
    best = dict.fromkeys(timed, 0.0)
    for _ in range(rounds):
        for name, fn in timed.items():
            best[name] = max(best[name], _rate(readings, fn))
    return best


def measure(
    readings: int = 200_000,
    rounds: int = 7,
    encode: Callable[[ReadingBatch], bytes] = encode_readings,
    decode: Callable[[bytes], ReadingBatch] = decode_readings,
    copy_parts: Callable[[ReadingColumns, int, int], Any] = encode_parts,
) -> dict[str, float]:
    """Best readings/s of each timing and shape over ``rounds`` (see the module doc)."""
    result: dict[str, float] = {}
    for shape in ("float", "mixed"):
        for name, rate in _shape(readings, rounds, shape == "mixed", encode, decode, copy_parts).items():
            result[f"{shape}.{name}_per_s"] = round(rate)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(json.dumps({"readings": args.readings, **measure(args.readings, args.rounds)}))


if __name__ == "__main__":
    main()
