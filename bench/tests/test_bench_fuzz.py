"""The fuzzing harness: a bounded run finds no crash in any outward decoder, the same seed gives the
same inputs, and a decoder that raises something other than its own rejection is counted as a crash
with the input that did it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from plantstream.bench.fuzz import fuzz, run_target


def test_bounded_fuzz_finds_no_crash(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "plantstream.cli", "bench", "--fuzz", "--fuzz-inputs", "30000", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = json.loads((tmp_path / "fuzz.json").read_text())
    crashes = [ex for t in report["targets"] for ex in t["examples"]]
    assert res.returncode == 0 and report["crashes"] == 0, crashes
    assert report["total_inputs"] >= 29_000
    names = {t["name"] for t in report["targets"]}
    assert names == {"mqtt_json", "sparkplug", "wire_codec", "config_yaml", "monitor_time_params", "pull_request"}
    # Each decoder both accepted and rejected something: the inputs reach past the first check.
    assert all(t["accepted"] > 0 and t["rejected"] > 0 for t in report["targets"]), report["targets"]
    assert "0 crashes" in (tmp_path / "fuzz.md").read_text()


def test_same_seed_same_verdicts() -> None:
    a, b = fuzz(3000, seed=7), fuzz(3000, seed=7)
    assert [(t.name, t.accepted, t.rejected) for t in a.targets] == [
        (t.name, t.accepted, t.rejected) for t in b.targets
    ]


def test_an_unexpected_exception_is_a_crash_with_its_input() -> None:
    def run(x: int) -> object:
        if x % 10 == 3:
            raise KeyError("boom")
        if x % 10 == 4:
            raise ValueError("the decoder's own rejection")
        return x

    res = run_target("toy", lambda rng: rng.randrange(1000), run, (ValueError,), 500, random.Random(1))
    assert res.inputs == 500 and res.crashes > 0 and res.rejected > 0
    assert res.crashes + res.rejected + res.accepted == 500
    assert res.examples[0].startswith("KeyError: 'boom' <- ")
