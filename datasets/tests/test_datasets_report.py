"""quality.json and --min-completeness (issue 16): readings written through the sink core, then a
gap, bad readings, out-of-range and out-of-spec values and a stuck sensor made in the database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from plantstream.access import Tier
from plantstream.datasets.pull import list_pulls, pull
from plantstream.domain.pullrequest import Requester, RequestError, validate_request
from plantstream.testing import datasets as testing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

T0 = datetime.fromtimestamp(testing.T0_US / 1e6, UTC)
OWNER = Requester(name="ines", tier=Tier.OWNER)


@pytest.fixture
def db(fresh_db: str) -> str:
    testing.load(fresh_db, 600, lot_s=60, skip=frozenset({("mould.level", i) for i in range(100, 120)}))

    def at(a: int, b: int) -> dict[str, Any]:
        return {"lo": T0 + timedelta(seconds=a), "hi": T0 + timedelta(seconds=b)}

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # Engineering range 0..110 mm and the spec's process limit mould_level (90..110 mm).
        conn.execute("UPDATE tags SET lo = 0, hi = 110, spec_property = 'mould_level' WHERE tag = 'mould.level'")
        level = "UPDATE readings SET v_float = %(v)s WHERE tag_id = (SELECT id FROM tags WHERE tag = 'mould.level') "
        conn.execute(level + "AND time >= %(lo)s AND time < %(hi)s", {"v": 150.0, **at(300, 305)})  # range + spec
        conn.execute(level + "AND time >= %(lo)s AND time < %(hi)s", {"v": 80.0, **at(310, 312)})  # spec only
        speed = "UPDATE readings SET {} WHERE tag_id = (SELECT id FROM tags WHERE tag = 'mould.speed') "
        speed += "AND time >= %(lo)s AND time < %(hi)s"
        conn.execute(speed.format("quality = 2"), at(200, 210))  # 10 bad readings
        conn.execute(speed.format("v_float = 55.0"), at(250, 570))  # 320 s of one value
    return fresh_db


def request(**kw: Any) -> Any:
    base: dict[str, Any] = {
        "plant": testing.PLANT,
        "start": T0,
        "end": T0 + timedelta(seconds=600),
        "interval": "1s",
        "gap": {"rule": "locf", "max_gap": "2s"},
        "labels": True,
        "split": {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 5},
    }
    return validate_request({**base, **kw})


def test_quality_report(db: str, tmp_path: Path) -> None:
    rec = pull(db, request(), OWNER, out=tmp_path / "q")
    rep = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert "quality.json" in {f.path for f in rec.files}
    assert set(rep["dimensions"]) == {"completeness", "accuracy", "consistency", "timeliness", "normativity"}
    tags = {t["tag"]: t for t in rep["tags"]}
    level, speed = tags["mould.level"], tags["mould.speed"]
    # 20 s without readings; locf 2 s fills two rows: 18 null rows in one gap.
    assert level["completeness"] == {
        "before_gap_filling": 0.966667,
        "after_gap_filling": 0.97,
        "gaps": 1,
        "longest_gap": "18s",
        "null_rows": 18,
        "filled_rows": 2,
    }
    assert level["accuracy"]["out_of_range"] == {"intervals": 1, "rows": 5}
    assert level["accuracy"]["outside_spec"] == {"property": "mould_level", "intervals": 2, "rows": 7}
    assert level["accuracy"]["stuck"] == {"intervals": 0, "rows": 0, "longest": None}
    acc = speed["accuracy"]
    assert (acc["readings"], acc["bad"], acc["bad_share"]) == (600, 10, 0.0166667)
    assert acc["stuck"] == {"intervals": 1, "rows": 320, "longest": "320s"}
    assert speed["completeness"]["before_gap_filling"] == 0.983333  # bad readings are not used
    assert speed["completeness"]["after_gap_filling"] == 0.986667
    assert tags["mould.recipe_setpoint"]["unit_ucum"] == "Cel"
    dims = rep["dimensions"]
    assert dims["accuracy"]["stuck_intervals"] == 1 and dims["accuracy"]["outside_spec_intervals"] == 2
    assert dims["completeness"]["lowest"] == "mould.level"
    assert dims["timeliness"]["newest_reading"] == "2025-06-01T00:09:59Z"
    assert dims["consistency"]["lots_in_two_splits"] == 0
    splits = {s["split"]: s for s in rep["splits"]}
    assert sorted(splits) == ["test", "train", "validation"]
    assert sum(s["rows"] for s in splits.values()) == 600
    assert {len(s["lots"]) for s in splits.values()} == {6, 2} and all(
        s["label_coverage"] == 1.0 for s in splits.values()
    )
    d = splits["train"]["distribution"]["mould.strands"]
    assert d["count"] == splits["train"]["rows"] and d["min"] == pytest.approx(2**40, rel=1e-5)  # int tags too
    card = (tmp_path / "q" / "README.md").read_text()
    assert "quality.json" in card
    # The lot table: H005 (300..359 s) had 7 rows outside mould_level's 90..110 mm, the others none.
    import pyarrow.dataset as pads

    lots = pads.dataset(tmp_path / "q" / "lots", format="parquet", partitioning="hive").to_table()
    in_limits = dict(zip(lots.column("lot").to_pylist(), lots.column("mould.level.in_limits").to_pylist(), strict=True))
    assert in_limits.pop("H005") == pytest.approx(53 / 60)
    # H001 (60..119 s) has the hole: 18 null rows are not inside the limit either.
    assert in_limits.pop("H001") == pytest.approx(42 / 60) and set(in_limits.values()) == {1.0}


def test_min_completeness_refuses_naming_the_failing_tags(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RequestError) as err:
        pull(db, request(min_completeness=0.98), OWNER, out=tmp_path / "r")
    assert err.value.field == "min_completeness"
    assert "1 tag(s)" in err.value.message and "mould.level (0.9700)" in err.value.message
    assert "mould.speed" not in err.value.message  # 0.9867 passes
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".dataset-partial-*"))
    assert list_pulls(db, limit=1)[0].status == "rejected"
    ok = pull(db, request(min_completeness=0.97), OWNER, out=tmp_path / "ok")  # exactly at the minimum
    assert ok.status == "complete"
    from plantstream.datasets.cli import dataset

    monkeypatch.setenv("PLANTSTREAM_DB_DSN", db)
    args = ["pull", "--plant", "steel", "--start", T0.isoformat(), "--end", (T0 + timedelta(seconds=600)).isoformat()]
    args += ["--gap", "locf:2s", "--min-completeness", "0.98", "--tier", "owner", "--out", str(tmp_path / "cli")]
    res = CliRunner().invoke(dataset, args)
    assert res.exit_code == 2 and "field 'min_completeness'" in res.output and "mould.level" in res.output
    assert not (tmp_path / "cli").exists()


def test_event_labels_from_deviations_respect_the_tier(db: str, tmp_path: Path) -> None:
    """Deviations written through the sink become per-row event.<kind> labels; one on a core tag
    is invisible to a member (migration 0011 filters it like the readings)."""
    from plantstream.contract import Deviation
    from plantstream.sinks.base import Record, RecordOrigin

    def dev(n: int, kind: str, tag: str, a: int, b: int | None) -> Record:
        d: dict[str, Any] = {"kind": kind, "plant": testing.PLANT, "equipment": testing.EQ, "tag": tag}
        d |= {"lot": testing.lot_of(a), "start_us": testing.T0_US + a * testing.S}
        d["end_us"] = None if b is None else testing.T0_US + b * testing.S
        return Record(RecordOrigin("test-dev", 0, n), "deviations", Deviation.from_map(d), b"", None)

    testing.write(
        db,
        iter(
            [
                dev(0, "process", "mould.level", 300, 305),
                dev(1, "process", "mould.recipe_setpoint", 400, 410),  # core grade
                dev(2, "late_data", "mould.speed", 590, None),  # still open: to the end of the range
            ]
        ),
    )
    got = {}
    for who in (OWNER, Requester(name="mia", tier=Tier.MEMBER)):
        pull(db, request(), who, out=tmp_path / who.name)
        import pyarrow.dataset as pads

        t = pads.dataset(tmp_path / who.name / "data", format="parquet", partitioning="hive").to_table().sort_by("time")
        sec = [int(x.timestamp() - T0.timestamp()) for x in t.column("time").to_pylist()]
        got[who.tier] = {
            k: [s for s, v in zip(sec, t.column(f"event.{k}").to_pylist(), strict=True) if v]
            for k in ("process", "late_data")
        }
    assert got[Tier.OWNER]["process"] == list(range(300, 305)) + list(range(400, 410))
    assert got[Tier.MEMBER]["process"] == list(range(300, 305))
    assert got[Tier.OWNER]["late_data"] == got[Tier.MEMBER]["late_data"] == list(range(590, 600))
