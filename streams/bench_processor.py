"""Measure the pure Processor: raw batches -> clean + 1 s/1 min aggregates + lot stamping, one core.

``python -m plantstream.streams.bench_processor [--readings N] [--profile]`` prints one JSON line
(readings/s and where the time goes when profiling). The lead's bench calls :func:`run`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from typing import Any

from plantstream.contract import ContextEvent, ContextKind, Origin, TagMeta
from plantstream.producers.codec import ReadingBatch, decode_readings, encode_readings
from plantstream.streams.logic.processor import Processor, ProcessorConfig, SharedContext

PLANT = "steel"
AREA = "acme/duisburg/steelmaking"


def make_batches(
    readings: int, batch_size: int = 500, tags_per_unit: int = 10, units: int = 8, rate_hz: int = 100
) -> list[ReadingBatch]:
    """Batches as an edge sends them: one unit per batch, tags interleaved, 10 ms apart per tag."""
    batches: list[ReadingBatch] = []
    t0 = 1_700_000_000_000_000
    step = 1_000_000 // rate_hz
    seq = 0
    per_unit_rows = [0] * units
    n = 0
    u = 0
    while n < readings:
        eq = f"{AREA}/caster{u % units}/mould"
        b = ReadingBatch(PLANT, eq, Origin.OPCUA, f"edge{u % units}")
        for _ in range(batch_size // tags_per_unit):
            ts = t0 + per_unit_rows[u % units] * step
            per_unit_rows[u % units] += 1
            for k in range(tags_per_unit):
                seq += 1
                b.tag.append(f"caster{u % units}.t{k}")
                b.unit.append("degF" if k % 2 else "mm")
                b.ts_us.append(ts)
                b.value.append(1500.0 + (seq % 97) * 0.5)
                b.quality.append(0)
                b.status_code.append(None)
                b.seq.append(seq)
                b.server_ts_us.append(None)
                b.lot.append(None)
                b.reason.append(None)
        batches.append(b)
        n += len(b)
        u += 1
    return batches


def setup(units: int = 8, tags_per_unit: int = 10) -> Processor:
    shared = SharedContext()
    for u in range(units):
        for k in range(tags_per_unit):
            shared.register_tag(
                TagMeta(
                    PLANT,
                    f"caster{u}.t{k}",
                    f"{AREA}/caster{u}/mould",
                    "degF" if k % 2 else "mm",
                    lo=0.0,
                    hi=3000.0,
                    roc_limit=1e6,
                )
            )
        shared.apply_context(
            ContextEvent(
                ContextKind.LOT_START,
                PLANT,
                f"{AREA}/caster{u}",
                0,
                f"H{u}",
                lot_kind="heat",
                material="EN10025-2:S355J2",
            )
        )
    return Processor(shared, ProcessorConfig())


def run(readings: int = 1_000_000, profile: bool = False, decode: bool = False) -> dict[str, Any]:
    """Process ``readings`` synthetic readings; returns readings/s and counts (and a profile)."""
    batches = make_batches(readings)
    payloads = [encode_readings(b) for b in batches] if decode else []
    proc = setup()
    prof = cProfile.Profile() if profile else None
    aggs = 0
    start = time.perf_counter()
    if prof:
        prof.enable()
    for off, b in enumerate(batches):
        out = proc.process_batch(decode_readings(payloads[off]) if decode else b, off, 0)
        aggs += len(out.aggregates)
    aggs += len(proc.flush().aggregates)
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - start
    n = sum(len(b) for b in batches)
    result: dict[str, Any] = {
        "readings": n,
        "seconds": round(elapsed, 3),
        "readings_per_s": round(n / elapsed),
        "aggregates": aggs,
        "decode": decode,
    }
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
        result["profile"] = s.getvalue()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--decode", action="store_true", help="include msgpack decoding of each batch")
    args = ap.parse_args()
    res = run(args.readings, args.profile, args.decode)
    prof = res.pop("profile", None)
    print(json.dumps(res))
    if prof:
        print(prof)


if __name__ == "__main__":
    main()
