"""Rows scoped to the lot's equipment (issue 16): two lines running different lots at once, as in
the fiber plant (the spinning line's doffs, the carbon-fibre line's spools and precursor creels),
written through the sink core into a fresh database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from plantstream.access import Tier
from plantstream.datasets.logic.segments import NO_LOT, LineLots, line_of
from plantstream.datasets.pull import pull
from plantstream.domain.pullrequest import Requester, validate_request
from plantstream.testing import datasets as testing

T0 = datetime.fromtimestamp(testing.T0_US / 1e6, UTC)
SECONDS = 720
OWNER = Requester(name="olga", tier=Tier.OWNER)


@pytest.fixture
def db(fresh_db: str) -> str:
    testing.write(fresh_db, testing.fiber_records(SECONDS))
    return fresh_db


def request(**kw: Any) -> Any:
    base: dict[str, Any] = {
        "plant": testing.FIBER,
        "start": T0,
        "end": T0 + timedelta(seconds=SECONDS),
        "interval": "1s",
        "gap": {"rule": "locf", "max_gap": "5s"},
    }
    return validate_request({**base, **kw})


def table(path: Path) -> Any:
    return pads.dataset(path, format="parquet", partitioning="hive").to_table().sort_by("time")


def test_line_of_and_effective_lot_times() -> None:
    lines = ["a/cf1", "a/cf1/creel", "a/poy1"]
    assert line_of("a/cf1/creel/x", lines) == "a/cf1/creel"  # the nearest line, not the outer one
    assert line_of("a/cf1/oven", lines) == "a/cf1"
    assert line_of("a/cf10", lines) is None  # a prefix of the name is not an ancestor
    # lot 1 has no end: it ends when lot 2 starts; lot 2 ends at its end; nothing runs after.
    ll = LineLots.build("a/poy1", [(2, 100, 150), (1, 0, None)])
    got = ll.lot_at(np.array([-1, 0, 99, 100, 149, 150], np.int64))
    assert got.tolist() == [NO_LOT, 1, 1, 2, 2, NO_LOT]
    assert ll.overlapping(120, 200) == {2} and ll.overlapping(0, 101) == {1, 2}


def test_spec_pull_without_equipment_takes_the_lots_rows_from_their_line(db: str, tmp_path: Path) -> None:
    """The issue's case: a pull by spec without --equipment gave 1 row where --equipment gave
    3,365; now both give every second of the doffs, from the spinning line's tags only."""
    rec = pull(db, request(spec=testing.PET, labels=True), OWNER, out=tmp_path / "spec")
    assert rec.status == "complete" and rec.rows == SECONDS  # doffs back to back over the range
    t = table(tmp_path / "spec" / "data")
    assert sorted(c for c in t.column_names if "." in c and not c.startswith(("lab.", "in_spec", "event."))) == [
        "poy1.speed",
        "poy1.titer",
    ]
    lots = t.column("lot").to_pylist()
    assert lots == [testing.doff(i // testing.DOFF_S) for i in range(SECONDS)]
    assert t.column("poy1.speed").to_pylist() == [testing.fiber_value(4, i) for i in range(SECONDS)]
    assert set(t.column("lab.tenacity").to_pylist()) == {2.5}
    card = (tmp_path / "spec" / "README.md").read_text()
    assert "4 selected tag(s) are on none of the selected lots' lines" in card and "`cf1.speed`" in card
    # The same rows as the pull scoped by hand to the spinning line: the very same Parquet bytes.
    by_eq = pull(db, request(spec=testing.PET, labels=True, equipment=testing.POY), OWNER, out=tmp_path / "eq")
    assert by_eq.rows == rec.rows
    parquet = [(f.path, f.sha256) for f in rec.files if f.path.endswith(".parquet")]
    assert parquet == [(f.path, f.sha256) for f in by_eq.files if f.path.endswith(".parquet")]


def test_spool_pull_uses_segments_and_genealogy(db: str, tmp_path: Path) -> None:
    rec = pull(db, request(spec=testing.CFSPEC), OWNER, out=tmp_path / "cf")
    # Spools run from 30 s, back to back; the creel's tag belongs to the precursor line, not here.
    assert rec.rows == SECONDS - 30
    t = table(tmp_path / "cf" / "data")
    assert "cf1.creel.tension" not in t.column_names and "poy1.speed" not in t.column_names
    assert t.column("lot").to_pylist() == [testing.spool((i - 30) // testing.SPOOL_S) for i in range(30, SECONDS)]
    parents = dict(zip(t.column("lot").to_pylist(), t.column("lot_parents").to_pylist(), strict=True))
    assert parents == {testing.spool(k): testing.precursor((30 + k * 90) // 360) for k in range(8)}
    assert t.schema.field("cf1.n2_flow").metadata[b"unit"] == b"m**3/h"


def test_plant_wide_pull_is_one_table_per_line(db: str, tmp_path: Path) -> None:
    import mlcroissant as mlc

    lots = [testing.doff(i) for i in range(12)] + [testing.spool(k) for k in range(8)]
    split = {"train": 0.5, "validation": 0.25, "test": 0.25, "seed": 1}
    rec = pull(db, request(interval="10s", labels=True, lots=lots, split=split), OWNER, out=tmp_path / "all")
    data = tmp_path / "all" / "data"
    names = sorted(p.name for p in data.iterdir())
    assert names == ["line=acme.nantong.carbonfiber.cf1", "line=acme.nantong.spinning.poy1"], names
    poy = table(data / names[1])
    cf = table(data / names[0])
    assert {x[:1] for x in poy.column("lot").to_pylist()} == {"D"}
    assert {x[:2] for x in cf.column("lot").to_pylist()} == {"CF"}
    assert "cf1.speed" not in poy.column_names and "poy1.speed" not in cf.column_names
    # Each line's lots are split on their own: both lines have all three splits, no lot in two.
    for tab in (poy, cf):
        pairs = set(zip(tab.column("lot").to_pylist(), tab.column("split").to_pylist(), strict=True))
        assert len(pairs) == len({lot for lot, _ in pairs})
        assert {s for _, s in pairs} == {"train", "validation", "test"}
    assert rec.rows == poy.num_rows + cf.num_rows == 72 + 69
    card = (tmp_path / "all" / "README.md").read_text()
    assert "one wide table per line" in card and "| `acme.nantong.spinning.poy1` |" in card
    # The creel's tag is on the precursor line, none of whose lots was selected: left out, named.
    assert "`cf1.creel.tension`" in card
    ds = mlc.Dataset(jsonld=str(tmp_path / "all" / "croissant.json"))
    assert not ds.metadata.ctx.issues.errors and not ds.metadata.ctx.issues.warnings  # two record sets
    recs = list(ds.records(record_set="rows-acme.nantong.spinning.poy1"))
    assert len(recs) == poy.num_rows
    assert {r["rows-acme.nantong.spinning.poy1/lot"][:1] for r in recs} == {b"D"}


def test_plant_wide_without_lots_keeps_every_line_apart(db: str, tmp_path: Path) -> None:
    rec = pull(db, request(interval="30s"), OWNER, out=tmp_path / "w")
    data = tmp_path / "w" / "data"
    names = sorted(p.name for p in data.iterdir())
    assert names == [
        "line=acme.nantong.carbonfiber.cf1",
        "line=acme.nantong.carbonfiber.cf1.creel",
        "line=acme.nantong.spinning.poy1",
    ]
    creel = table(data / names[1])
    assert creel.column_names[:3] == ["time", "lot", "cf1.creel.tension"]
    assert creel.column("lot").to_pylist() == [testing.precursor(i * 30 // 360) for i in range(24)]
    cf = table(data / names[0])
    assert cf.column("lot").to_pylist()[0] is None  # no spool runs before 30 s: null, not a doff
    assert rec.rows == 3 * 24
    md = pq.ParquetFile(next((data / names[2]).rglob("*.parquet"))).schema_arrow
    assert "on acme/nantong/spinning/poy1" in md.field("lot").metadata[b"description"].decode()


def test_a_split_that_one_line_cannot_fill_is_refused_naming_the_line(db: str, tmp_path: Path) -> None:
    from plantstream.domain.pullrequest import RequestError

    with pytest.raises(RequestError) as err:
        pull(db, request(split={"seed": 0}), OWNER, out=tmp_path / "x")  # every lot: 2 precursors
    assert err.value.field == "split" and "acme/nantong/carbonfiber/cf1/creel" in err.value.message
    assert not (tmp_path / "x").exists()


def test_without_process_segments_the_readings_lot_stamp_is_kept(db: str, tmp_path: Path) -> None:
    """A plant whose segments were never recorded keeps the old rule (one table, the lot of the
    latest reading in the bucket), so pulls of such data still work."""
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DELETE FROM process_segments")
    rec = pull(db, request(equipment=testing.POY, lots=[testing.doff(0), testing.doff(3)]), OWNER, out=tmp_path / "n")
    t = table(tmp_path / "n" / "data")
    assert rec.rows == 120 and sorted(p.name for p in (tmp_path / "n" / "data").iterdir()) == ["split=all"]
    assert t.column("lot").to_pylist() == [testing.doff(0)] * 60 + [testing.doff(3)] * 60
    assert "lot stamped on the latest reading" in (tmp_path / "n" / "README.md").read_text()


def test_lot_table_aggregates_each_lot_over_its_own_line(db: str, tmp_path: Path) -> None:
    rec = pull(db, request(spec=testing.PET, labels=True), OWNER, out=tmp_path / "l")
    lots = pq.read_table(tmp_path / "l" / "lots" / "split=all" / "part-00000.parquet")
    assert "lots/split=all/part-00000.parquet" in {f.path for f in rec.files}
    assert lots.column("lot").to_pylist() == [testing.doff(i) for i in range(12)]
    assert set(lots.column("rows").to_pylist()) == {60} and set(lots.column("duration_s").to_pylist()) == {60.0}
    speed = [testing.fiber_value(4, i) for i in range(60, 120)]  # the second doff's rows
    assert lots.column("poy1.speed.mean")[1].as_py() == pytest.approx(sum(speed) / 60)
    assert (lots.column("poy1.speed.min")[1].as_py(), lots.column("poy1.speed.max")[1].as_py()) == (
        min(speed),
        max(speed),
    )
    assert set(lots.column("lab.tenacity").to_pylist()) == {2.5}
    assert "cf1.speed.mean" not in lots.column_names  # the other line's tags are not features of a doff
    assert lots.column("start")[1].as_py() == T0 + timedelta(seconds=60)
