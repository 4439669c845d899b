"""Microbenchmark: readings through batcher -> durable buffer -> forwarder -> Kafka.

``python -m plantstream.edge.benchmark [--readings N] [--synchronous full|normal]`` prints
readings/s for the append side and for append+forward end to end (Kafka acknowledged).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import Literal

from plantstream.config import Settings
from plantstream.contract import Origin
from plantstream.edge.batcher import Batcher, Sample
from plantstream.edge.buffer import Buffer
from plantstream.edge.forwarder import Forwarder
from plantstream.producers.kafka import ensure_topics, make_producer


def run(
    bootstrap: str, readings: int, synchronous: Literal["full", "normal"], per_tick: int = 1000
) -> dict[str, float]:
    topic = f"bench{uuid.uuid4().hex[:8]}.readings.raw.v1"
    ensure_topics(bootstrap, [topic], 3)
    equipment = [f"acme/site/area/line/u{i}" for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        buf = Buffer(Path(tmp) / "b.db", synchronous=synchronous)
        batcher = Batcher("bench", topic, buf, 500, 0.05)
        fw = Forwarder(buf, lambda: make_producer(bootstrap, "bench"), 2000)
        ts = time.time_ns() // 1000
        t0 = time.perf_counter()
        done = 0
        append_s = 0.0
        while done < readings:
            n = min(per_tick, readings - done)
            samples: list[Sample] = [
                (
                    equipment[(done + k) % 10],
                    f"tag{(done + k) % 200}",
                    ts + done + k,
                    float(k),
                    "degC",
                    0,
                    None,
                    None,
                    None,
                )
                for k in range(n)
            ]
            a0 = time.perf_counter()
            batcher.add("bench", Origin.MQTT, samples)
            buf.append(batcher.take(everything=True))
            append_s += time.perf_counter() - a0
            fw.pump()
            done += n
        while buf.depth().entries or fw.inflight:
            fw.pump()
            fw.producer.poll(0.005)
        total = time.perf_counter() - t0
        buf.close()
    return {
        "readings": readings,
        "append_per_s": readings / append_s,
        "end_to_end_per_s": readings / total,
        "seconds": total,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=500_000)
    ap.add_argument("--synchronous", choices=["full", "normal"], default="full")
    ap.add_argument("--per-tick", type=int, default=1000)
    a = ap.parse_args()
    res = run(Settings.from_env().kafka_bootstrap, a.readings, a.synchronous, a.per_tick)
    print({k: round(v, 1) for k, v in res.items()})


if __name__ == "__main__":
    main()
