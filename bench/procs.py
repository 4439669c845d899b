"""Processes the bench starts, and what /proc says about them (peak RSS, CPU), plus py-spy profiles."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process in MB; None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def self_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds(pid: int, reaped_children: bool = False) -> float | None:
    """User + system CPU time of a live process (its threads included); with ``reaped_children``
    also that of its children that have exited (PostgreSQL backends come and go)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])
        return (own + (int(fields[13]) + int(fields[14]) if reaped_children else 0)) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


SERVICES = ("postgres", "tansu", "mosquitto")


def service_cpu() -> dict[str, float]:
    """CPU seconds of the shared services by process name (every instance on the machine)."""
    out = dict.fromkeys(SERVICES, 0.0)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in out:
            out[comm] += cpu_seconds(int(d), reaped_children=True) or 0.0
    return out


@dataclass
class Worker:
    """A child process with its output in a log file (never a pipe that could fill and block it)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    peak_mb: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def check(self) -> None:
        rc = self.popen.poll()
        if rc not in (None, 0):
            raise RuntimeError(f"{self.name} exited with {rc}:\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (its whole session), wait, then SIGKILL; records peak RSS first."""
        self.peak_mb = peak_rss_mb(self.pid) or self.peak_mb
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()


def spawn(name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None) -> Worker:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    return Worker(name, popen, log)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def py_spy_available() -> bool:
    return shutil.which("py-spy") is not None or (Path(sys.executable).parent / "py-spy").exists()


def py_spy_top(pid: int, seconds: float, out: Path, top: int = 8) -> list[tuple[str, float]]:
    """Sample ``pid`` with py-spy for ``seconds``; the ``top`` leaf frames by share of samples.

    Returns [] when py-spy is missing or not permitted to attach (never raises)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        subprocess.run(
            [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--format", "raw",
             "--output", str(out), "--nonblocking", "--rate", "50"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 30,
        )  # fmt: skip
        return collapsed_top(out.read_text(), top)
    except (OSError, subprocess.SubprocessError):
        return []


def collapsed_top(text: str, top: int = 8) -> list[tuple[str, float]]:
    """Leaf (self-time) frames of collapsed stacks ``a;b;c 12`` as (frame, share of all samples)."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        leaves[stack.rsplit(";", 1)[-1].strip()] += count
    if not total:
        return []
    return [(frame, count / total) for frame, count in leaves.most_common(top)]


def cpu_times() -> list[int]:
    """The machine's aggregate CPU jiffies from /proc/stat: user, nice, system, idle, iowait, irq,
    softirq, steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def cpu_share(before: list[int], after: list[int]) -> dict[str, float]:
    """Percent of all CPU time between two :func:`cpu_times` readings that was busy, waiting for
    I/O, or stolen by the hypervisor (a VM's neighbours)."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    return {
        "busy_pct": round(100 * (total - d[3] - d[4]) / total, 1),
        "iowait_pct": round(100 * d[4] / total, 1),
        "steal_pct": round(100 * d[7] / total, 1),
    }
