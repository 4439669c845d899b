"""A/B of the OPC-UA decode paths on the bench's OPC-UA edge stage (readings per agent core-second).

``python -m plantstream.bench.opcua [--rounds 3] [--seconds 8] [--profile-s 0]`` runs
``bench.stages.edge_opcua`` (2 asyncua load servers x 200 tags, 100 ms publishing, agent ->
Kafka raw topic) alternately with ``fast_decode`` off and on, and prints each run and the medians.
The machine is shared: alternating runs see the same drift, so the ratio of medians is what counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from plantstream.bench import stages
from plantstream.config import Settings
from plantstream.testing.plugin import free_port


def run(fast: bool, seconds: float, warmup: float, profile_s: float, work: Path) -> dict[str, Any]:
    real = stages._run_edge

    def patched(name: str, cfg: dict[str, Any], *a: Any, **kw: Any) -> stages.EdgeResult:
        for src in cfg["sources"]:
            src["fast_decode"] = fast
        return real(name, cfg, *a, **kw)

    stages._run_edge = patched  # one knob, same stage otherwise
    try:
        res = stages.edge_opcua(Settings.from_env(), work, [free_port(), free_port()], 200, seconds, warmup, profile_s)
    finally:
        stages._run_edge = real
    cpu = res.edge_cpu_pct or 0.0
    return {
        "fast": fast,
        "readings_per_s": round(res.readings_per_s),
        "offered_per_s": round(res.offered_per_s or 0),
        "agent_cpu_pct": round(cpu, 1),
        "per_core_s": round(res.readings_per_s / (cpu / 100.0)) if cpu > 0 else None,
        "load_cpu_pct": res.load_cpu_pct,
        "profile": res.profile[:15],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--profile-s", type=float, default=0.0)
    p.add_argument("--only", choices=["on", "off"], default=None)
    p.add_argument("--keep", type=Path, default=None, help="keep the work folders (py-spy stacks) here")
    a = p.parse_args()
    modes = [False, True] if a.only is None else [a.only == "on"]
    out: dict[bool, list[dict[str, Any]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="opcua-perf-") as tmp:
        root = a.keep if a.keep is not None else Path(tmp)
        for r in range(a.rounds):
            for m in modes:
                res = run(m, a.seconds, a.warmup, a.profile_s, root / f"{r}-{int(m)}")
                out[m].append(res)
                print(json.dumps(res), flush=True)
    for m in modes:
        per = [x["per_core_s"] for x in out[m] if x["per_core_s"]]
        rate = [x["readings_per_s"] for x in out[m]]
        print(json.dumps({"fast": m, "median_per_core_s": statistics.median(per) if per else None,
                          "median_readings_per_s": statistics.median(rate)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
