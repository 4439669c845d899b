"""Bench output: ``bench.json``, ``bench.md`` (the table) and PNG plots in the output directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plantstream.bench.model import Metric, fmt_num


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_STATUS_TEXT = {"not_built": "not built", "failed": "failed", "not_applicable": "n/a"}


def markdown(metrics: list[Metric], meta: dict[str, Any], extra: list[str] | None = None) -> str:
    lines = [
        f"# plantstream bench ({meta.get('mode', '?')}) - {meta.get('started', '')}",
        "",
        f"Machine: {meta.get('cores', '?')} cores, load average at start {meta.get('loadavg', '?')}"
        + (
            f"; over the run CPU busy {meta['cpu']['busy_pct']}%, I/O wait {meta['cpu']['iowait_pct']}%,"
            f" stolen by the hypervisor {meta['cpu']['steal_pct']}%"
            if "cpu" in meta
            else ""
        )
        + ". A virtual machine shared with other workloads: rates are noisy (compare runs, not single numbers).",
        "",
        *(
            [f"Database engine: {meta['database']['text']}.", ""]
            if isinstance(meta.get("database"), dict) and meta["database"].get("text")
            else []
        ),
        "| metric | value | unit | limit | ratio | target | pass/miss | bounding stage / note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        value = _STATUS_TEXT.get(m.status) or fmt_num(m.value)
        limit = f"{fmt_num(m.limit)} ({m.limit_name})" if m.limit else "-"
        ratio = f"{m.ratio:.2f}" if m.ratio is not None else "-"
        target = m.target.text(m.unit) if m.target else "-"
        verdict = {True: "pass", False: "**miss**", None: "-"}[m.passed]
        note = m.bound if (m.passed is False and m.bound) else m.note
        if m.passed is False and m.bound and m.note:
            note = f"{m.bound}. {m.note}"
        lines.append(
            f"| {m.name} | {value} | {m.unit} | {_cell(limit)} | {ratio} | {_cell(target)} | {verdict} | {_cell(note)} |"
        )
    if extra:
        lines += ["", *extra]
    return "\n".join(lines) + "\n"


def write_json(path: Path, metrics: list[Metric], meta: dict[str, Any], data: dict[str, Any]) -> None:
    doc = {"meta": meta, "metrics": [m.to_json() for m in metrics], **data}
    path.write_text(json.dumps(doc, indent=1, default=str))


def plots(out: Path, series: dict[str, Any]) -> list[Path]:
    """rates.png (readings/s over time per measurement) and latency.png (p50/p99 per e2e step)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    written: list[Path] = []
    fig, axes = plt.subplots(2, 1, figsize=(10, 8))
    ax = axes[0]
    for label, pts in series.get("stage_rates", {}).items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, marker=".")
    ax.set_title("Edge stages: readings arriving on the raw topic")
    ax.set_xlabel("seconds since the stage started")
    ax.set_ylabel("readings/s")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax = axes[1]
    offset = 0.0
    for base, src in (("e2e", "loggers"), ("e2e.plants", "plants")):
        # Sources run one after the other: plot them on one time axis, each from its own start.
        end = offset
        for label, pts in ((f"{src}: raw topic (edge out)", series.get(f"{base}_raw", [])),
                           (f"{src}: database", series.get(f"{base}_db", []))):  # fmt: skip
            if pts:
                ax.plot([offset + p[0] for p in pts], [p[1] for p in pts], label=label)
                end = max(end, offset + pts[-1][0])
        for st in series.get(f"{base}_steps", []):
            ax.axvspan(offset + st["from"], offset + st["to"], alpha=0.08, color="green" if st["sustained"] else "red")
            ax.text(offset + st["from"], 0, f"{st['hz']:g}", fontsize=7, va="bottom")
        offset = end + 5
    ax.set_title("End to end: readings/s (shaded: measured steps, green sustained / red not)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("readings/s")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "rates.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    written.append(p)

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for row, (base, src, xlabel) in enumerate((("e2e", "loggers", "offered readings/s"),
                                               ("e2e.plants", "plants", "simulator rate (samples/s per tag)"))):  # fmt: skip
        steps = series.get(f"{base}_steps", [])
        ax = axes[row][0]
        xs = [s["hz"] for s in steps]
        for key in ("p50", "p99"):
            ys = [s.get(key) for s in steps]
            if any(y is not None for y in ys):
                ax.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o", label=key)
        ax.axhline(2.0, color="red", linestyle="--", linewidth=1, label="p99 target")
        ax.set_title(f"{src}: source -> database latency per rate step", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[row][1]
        lat = series.get(f"{base}_latency", [])
        if lat:
            ax.plot([p[0] for p in lat], [p[1] for p in lat], linewidth=0.8)
        ax.set_title(f"{src}: p99 per 0.5 s scrape over time", fontsize=9)
        ax.set_xlabel("seconds since this source's run started")
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out / "latency.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    written.append(p)
    return written
