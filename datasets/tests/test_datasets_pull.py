"""Pulls against a fresh database filled through the sink core: values, reproducibility,
Croissant, access per tier at the database level, bad input, the pull record, the CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from plantstream.access import DB_ROLE, Tier
from plantstream.datasets.pull import get_pull, list_pulls, pull
from plantstream.domain.pullrequest import PullRequest, Requester, RequestError, validate_request
from plantstream.testing import datasets as testing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

T0 = datetime.fromtimestamp(testing.T0_US / 1e6, UTC)
SECONDS = 600
GAP = frozenset({("mould.level", i) for i in range(100, 108)})  # 8 s without mould.level


@pytest.fixture
def db(fresh_db: str) -> str:
    testing.load(fresh_db, SECONDS, lot_s=60, skip=GAP)
    return fresh_db


def request(**kw: Any) -> PullRequest:
    base: dict[str, Any] = {
        "plant": testing.PLANT,
        "start": T0,
        "end": T0 + timedelta(seconds=SECONDS),
        "interval": "1s",
    }
    return validate_request({**base, **kw})


OWNER = Requester(name="alice", tier=Tier.OWNER)
PUBLIC = Requester(name="pat", tier=Tier.PUBLIC)


def table(path: Path) -> Any:
    return pads.dataset(path / "data", format="parquet", partitioning="hive").to_table().sort_by("time")


def test_values_gaps_and_types(db: str, tmp_path: Path) -> None:
    req = request(
        start=T0 + timedelta(seconds=96),
        end=T0 + timedelta(seconds=112),
        interval="2s",
        gap={"rule": "none"},
        tag_gaps={
            "mould.level": {"rule": "linear", "max_gap": "20s"},
            "mould.strands": {"rule": "locf", "max_gap": "5s"},
        },
    )
    rec = pull(db, req, OWNER, out=tmp_path / "ds")
    assert rec.status == "complete" and rec.rows == 8
    t = table(tmp_path / "ds")
    level = t.column("mould.level").to_pylist()

    # Readings each second; mould.level missing at 100..107 s. Bucket [96,98) -> last reading at 97.
    def lv(i: int) -> float:
        v = testing.value(testing.TAGS[0], i)
        assert isinstance(v, float)
        return v

    want = [lv(97), lv(99)]
    # Buckets 100..106 are empty: interpolated between (99 s, v99) and (109 s, v109) at the bucket start.
    v99, v109 = lv(99), lv(109)
    for start in (100, 102, 104, 106):
        want.append(v99 + (v109 - v99) * (start - 99) / 10)
    want += [lv(109), lv(111)]
    assert level == pytest.approx(want)
    strands = t.column("mould.strands").to_pylist()
    assert strands == [testing.value(testing.TAGS[3], i) for i in range(97, 112, 2)]
    assert t.schema.field("mould.strands").type == "int64"
    assert t.schema.field("mould.running").type == "bool"
    assert t.schema.field("mould.level").metadata[b"unit"] == b"mm"
    assert t.column("lot").to_pylist() == ["H001"] * 8


def test_byte_identical_repull_and_croissant_loads(db: str, tmp_path: Path) -> None:
    import mlcroissant as mlc

    req = request(interval="5s", labels=True, split={"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 3})
    a = pull(db, req, OWNER, out=tmp_path / "a")
    b = pull(db, req, OWNER, out=tmp_path / "b")
    assert a.snapshot == b.snapshot and a.snapshot
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    # 3 splits of rows and of lots, quality.json, croissant.json, README.md
    assert files_a == files_b and len(files_a) == 9
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert [f.sha256 for f in a.files] == [f.sha256 for f in b.files]
    # Split by lot: no lot in two splits; labels follow the lab results.
    t = table(tmp_path / "a")
    pairs = set(zip(t.column("lot").to_pylist(), t.column("split").to_pylist(), strict=True))
    lots = {lot for lot, _ in pairs}
    assert len(pairs) == len(lots) == SECONDS // 60
    assert {s for _, s in pairs} == {"train", "validation", "test"}
    reh = dict(zip(t.column("lot").to_pylist(), t.column("lab.ReH").to_pylist(), strict=True))
    ok = dict(zip(t.column("lot").to_pylist(), t.column("in_spec.ReH").to_pylist(), strict=True))
    assert any(v is False for v in ok.values()) and any(v is True for v in ok.values())
    assert all(ok[lot] == (reh[lot] >= 355) for lot in lots)
    # mlcroissant: the metadata loads and the records iterate, one per row, with their split.
    ds = mlc.Dataset(jsonld=str(tmp_path / "a" / "croissant.json"))
    records = list(ds.records(record_set="rows"))
    assert len(records) == a.rows
    assert {r["rows/split"] for r in records} == {b"train", b"validation", b"test"}
    doc = (tmp_path / "a" / "croissant.json").read_text()
    for f in a.files:
        if f.path.endswith(".parquet"):
            assert f.sha256 in doc
    # The Parquet footers carry no writing time, only fixed settings.
    md = pq.ParquetFile(next((tmp_path / "a" / "data").rglob("*.parquet"))).metadata
    assert md.format_version == "2.6"


def test_access_enforced_by_the_database(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        core = conn.execute("SELECT id FROM tags WHERE grade = 'core'").fetchone()
        assert core is not None
        for tier, sees_core, sees_important in (
            (Tier.PUBLIC, False, False),
            (Tier.MEMBER, False, True),
            (Tier.OWNER, True, True),
        ):
            conn.execute(f"SET ROLE {DB_ROLE[tier]}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT count(*) FROM readings")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT count(*) FROM tags")
            n_core = conn.execute("SELECT count(*) FROM ds_readings WHERE tag_id = %s", core).fetchone()
            assert n_core is not None and (n_core[0] > 0) == sees_core
            grades = {r[0] for r in conn.execute("SELECT DISTINCT grade FROM ds_tags").fetchall()}
            assert ("core" in grades) == sees_core and ("important" in grades) == sees_important
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    "INSERT INTO dataset_pulls (requester, tier, db_user, db_role, request) VALUES ('x','owner','x','x','{}')"
                )
            conn.execute("RESET ROLE")


def test_public_pull_withholds_core_and_important(db: str, tmp_path: Path) -> None:
    rec = pull(db, request(interval="10s"), PUBLIC, out=tmp_path / "p")
    names = set(table(tmp_path / "p").column_names)
    assert "mould.recipe_setpoint" not in names and "mould.speed" not in names
    assert "mould.level" in names
    assert rec.withheld == [{"grade": "core", "count": 1}, {"grade": "important", "count": 1}]
    card = (tmp_path / "p" / "README.md").read_text()
    # The card travels with the files: counts per grade, never the names of withheld tags.
    assert "mould.recipe_setpoint" not in card and "mould.speed" not in card
    assert "| core | 1 | owner |" in card and "| important | 1 | member |" in card
    assert rec.db_role == DB_ROLE[Tier.PUBLIC]


def test_a_withheld_tag_named_by_a_lower_tier_is_an_unknown_tag(db: str, tmp_path: Path) -> None:
    """Indistinguishable from absent (migration 0008): the same answer, word for word."""
    answers = {}
    for tag in ("mould.speed", "mould.no_such_tag"):  # important (withheld from public), absent
        with pytest.raises(RequestError) as err:
            pull(db, request(tags=["mould.level", tag]), PUBLIC, out=tmp_path / tag)
        answers[tag] = (err.value.field, err.value.message.replace(tag, "X"))
    assert answers["mould.speed"] == answers["mould.no_such_tag"]
    assert answers["mould.speed"][0] == "tags" and "unknown tag" in answers["mould.speed"][1]
    # The owner names it and gets it.
    rec = pull(db, request(tags=["mould.level", "mould.speed"]), OWNER, out=tmp_path / "owner")
    assert rec.status == "complete" and rec.withheld == []


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"tags": ["mould.level", "nope"]}, "tags"),
        ({"lots": ["H999"]}, "lots"),
        ({"start": T0 - timedelta(days=3), "end": T0 - timedelta(days=2)}, "start"),
        ({"lots": ["H001", "H002"], "split": {"train": 0.5, "validation": 0.25, "test": 0.25}}, "split"),
        ({"equipment": "acme/nowhere"}, "equipment"),
        ({"tags": ["mould.running"], "gap": {"rule": "linear", "max_gap": "5s"}}, "tag_gaps"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    db: str, tmp_path: Path, kw: dict[str, Any], field: str
) -> None:
    out = tmp_path / "out" / "ds"
    with pytest.raises(RequestError) as exc:
        pull(db, request(**kw), OWNER, out=out)
    assert exc.value.field == field
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    rec = list_pulls(db, limit=1)[0]
    assert rec.status == "rejected" and rec.error and field in rec.error


def test_grid_too_fine_is_refused_without_the_database() -> None:
    with pytest.raises(RequestError) as exc:
        request(interval="1ms", row_cap=1000)
    assert exc.value.field == "interval"


def test_record_and_cli(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plantstream.datasets.cli import dataset

    monkeypatch.setenv("PLANTSTREAM_DB_DSN", db)
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(
        dataset,
        [
            "pull",
            "--plant",
            "steel",
            "--start",
            T0.isoformat(),
            "--end",
            (T0 + timedelta(minutes=5)).isoformat(),
            "--interval",
            "10s",
            "--gap",
            "locf:30s",
            "--tier",
            "member",
            "--requester",
            "mia",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    rec = list_pulls(db, limit=1)[0]
    assert rec.requester == "mia" and rec.tier == "member" and rec.status == "complete"
    assert rec.request["gap"] == {"rule": "locf", "max_gap": "30s"}
    assert {f.path for f in rec.files} >= {"croissant.json", "README.md"}
    got = get_pull(db, str(rec.snapshot))
    assert got is not None and got.id == rec.id
    shown = runner.invoke(dataset, ["show", str(rec.id)])
    assert shown.exit_code == 0 and str(rec.snapshot) in shown.output
    listed = runner.invoke(dataset, ["list"])
    assert listed.exit_code == 0 and "mia" in listed.output
    bad = runner.invoke(
        dataset,
        [
            "pull",
            "--plant",
            "steel",
            "--tag",
            "nope",
            "--start",
            T0.isoformat(),
            "--end",
            (T0 + timedelta(minutes=5)).isoformat(),
            "--tier",
            "owner",
            "--out",
            str(tmp_path / "bad"),
        ],
    )
    assert bad.exit_code == 2 and "field 'tags'" in bad.output
    assert not (tmp_path / "bad").exists()
