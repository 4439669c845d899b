"""The lot-level table (with ``labels``): one row per lot, process features aggregated over the
lot's rows on its line joined to its lab results and in-spec labels, the table batch-quality
models train on.

Features per numeric tag: ``<tag>.mean`` / ``.min`` / ``.max`` over the lot's rows with a value
(after the gap rule), and for a tag with a process limit in the lot's spec ``<tag>.in_limits``:
the share of the lot's rows with a value inside it. A lot's rows are contiguous in time, so a
batch is cut into runs of one lot and each run is reduced with ``reduceat`` (no per-row Python).
Lots spanning windows are merged. Written per split, lots in time order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from plantstream.datasets.output import Column


@dataclass
class _Acc:
    first_k: int
    last_k: int
    rows: int
    n: npt.NDArray[np.int64]
    total: npt.NDArray[np.float64]
    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]
    inside: npt.NDArray[np.int64]


@dataclass
class LotAggregator:
    tags: list[str]  # numeric tags, in table order
    limited: list[bool]  # per numeric tag: has a process limit in some lot's spec
    accs: dict[int, _Acc] = field(default_factory=dict)

    def update(
        self,
        k: npt.NDArray[np.int64],
        lot: npt.NDArray[np.int32],
        values: list[npt.NDArray[np.float64]],
        valid: list[npt.NDArray[np.bool_]],
        spec: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None],
    ) -> None:
        """Rows of one batch (in k order): ``values``/``valid`` per numeric tag, ``spec`` its
        per-row process limit (lo, hi; NaN: none) or None."""
        if not k.size:
            return
        starts = np.flatnonzero(np.r_[True, lot[1:] != lot[:-1]])
        ends = np.r_[starts[1:], k.size]
        nt = len(self.tags)
        n = np.empty((nt, starts.size), np.int64)
        total = np.empty((nt, starts.size))
        lo = np.empty((nt, starts.size))
        hi = np.empty((nt, starts.size))
        inside = np.zeros((nt, starts.size), np.int64)
        for j in range(nt):
            v, ok = values[j], valid[j]
            n[j] = np.add.reduceat(ok.astype(np.int64), starts)
            total[j] = np.add.reduceat(np.where(ok, v, 0.0), starts)
            lo[j] = np.fmin.reduceat(np.where(ok, v, np.nan), starts)
            hi[j] = np.fmax.reduceat(np.where(ok, v, np.nan), starts)
            b = spec[j]
            if b is not None:
                with np.errstate(invalid="ignore"):
                    within = ok & ~(v < b[0]) & ~(v > b[1]) & (np.isfinite(b[0]) | np.isfinite(b[1]))
                inside[j] = np.add.reduceat(within.astype(np.int64), starts)
        for r, (a, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            lot_id = int(lot[a])
            cur = self.accs.get(lot_id)
            if cur is None:
                self.accs[lot_id] = _Acc(
                    int(k[a]), int(k[e - 1]), e - a, n[:, r].copy(), total[:, r].copy(), lo[:, r].copy(),
                    hi[:, r].copy(), inside[:, r].copy(),
                )  # fmt: skip
                continue
            cur.last_k = int(k[e - 1])
            cur.rows += e - a
            cur.n += n[:, r]
            cur.total += total[:, r]
            cur.lo = np.fmin(cur.lo, lo[:, r])
            cur.hi = np.fmax(cur.hi, hi[:, r])
            cur.inside += inside[:, r]

    def columns(self) -> list[Column]:
        cols = [
            Column("lot", pa.string(), description="the lot", nullable=False),
            Column("start", pa.timestamp("us", tz="UTC"), description="first row time of the lot", nullable=False),
            Column("end", pa.timestamp("us", tz="UTC"), description="end of the lot's last row", nullable=False),
            Column("duration_s", pa.float64(), unit="s", description="rows x grid interval"),
            Column("rows", pa.int64(), description="grid rows of the lot on its line", nullable=False),
        ]
        for tag, lim in zip(self.tags, self.limited, strict=True):
            for stat in ("mean", "min", "max"):
                cols.append(Column(f"{tag}.{stat}", pa.float64(), description=f"{stat} of {tag} over the lot's rows"))
            if lim:
                cols.append(
                    Column(
                        f"{tag}.in_limits",
                        pa.float64(),
                        description=f"share of the lot's rows with {tag} inside its spec's process limit",
                    )
                )
        return cols

    def arrays(self, lot_ids: list[int], start_us: int, interval_us: int) -> list[pa.Array]:
        """The feature columns (``columns()`` after ``lot``) for ``lot_ids`` (each aggregated)."""
        accs = [self.accs[i] for i in lot_ids]
        first = np.array([a.first_k for a in accs], np.int64)
        last = np.array([a.last_k for a in accs], np.int64)
        rows = np.array([a.rows for a in accs], np.int64)
        out: list[pa.Array] = [
            pa.array(start_us + first * interval_us, pa.timestamp("us", tz="UTC")),
            pa.array(start_us + (last + 1) * interval_us, pa.timestamp("us", tz="UTC")),
            pa.array(rows * (interval_us / 1e6), pa.float64()),
            pa.array(rows, pa.int64()),
        ]
        for j, lim in enumerate(self.limited):
            n = np.array([a.n[j] for a in accs], np.int64)
            none = n == 0
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.array([a.total[j] for a in accs]) / np.where(none, 1, n)
            out.append(pa.array(mean, pa.float64(), mask=none))
            out.append(pa.array(np.array([a.lo[j] for a in accs]), pa.float64(), mask=none))
            out.append(pa.array(np.array([a.hi[j] for a in accs]), pa.float64(), mask=none))
            if lim:
                share = np.array([a.inside[j] for a in accs]) / np.where(rows == 0, 1, rows)
                out.append(pa.array(share, pa.float64()))
        return out


def table_of(
    agg: LotAggregator,
    lot_ids: list[int],
    names: list[str],
    label_cols: list[tuple[Column, pa.Array]],
    start_us: int,
    interval_us: int,
    schema: pa.Schema,
) -> pa.Table:
    arrays: list[Any] = [pa.array(names, pa.string()), *agg.arrays(lot_ids, start_us, interval_us)]
    arrays += [a for _, a in label_cols]
    return pa.Table.from_arrays(arrays, schema=schema)
