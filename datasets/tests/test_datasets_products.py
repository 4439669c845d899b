"""Dataset products: publish, the version rules, reproducibility checks, the record and its audit
trail, the CLI. Pure checks need no service; the rest run against a fresh database filled through
the sink core."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from plantstream import audit
from plantstream.config import Settings
from plantstream.datasets import products as P
from plantstream.domain.catalog import ChangeKind
from plantstream.domain.pullrequest import FileEntry, RequestError
from plantstream.testing import datasets as testing

T0 = datetime.fromtimestamp(testing.T0_US / 1e6, UTC)
SECONDS = 600
GENERAL = sorted(t.tag for t in testing.TAGS if t.grade.value == "general")


def req(seconds: int = 300, **kw: Any) -> dict[str, Any]:
    return {
        "plant": testing.PLANT,
        "start": T0.isoformat(),
        "end": (T0 + timedelta(seconds=seconds)).isoformat(),
        "interval": "5s",
        **kw,
    }


def spec(version: str, name: str = "caster-s355", access: str = "member") -> P.ProductSpec:
    return P.ProductSpec.of(name, version, "advanced-steel", access, "CC-BY-4.0", "Caster 1, S355J2", "")


# --- pure ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("start", "now"), ("end", "now"), ("start", "-1h"), ("end", "+2d"), ("start", None), ("end", "yesterday")],
)
def test_relative_or_open_range_refused_naming_the_field(field: str, value: Any) -> None:
    data = req()
    if value is None:
        del data[field]
    else:
        data[field] = value
    with pytest.raises(RequestError) as e:
        P.check_reproducible(data)
    assert e.value.field == field
    assert "absolute" in e.value.message


def test_absolute_range_accepted() -> None:
    P.check_reproducible(req())
    P.check_reproducible({"start": T0, "end": T0 + timedelta(hours=1)})  # YAML timestamps are datetimes


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("Caster", "1.0.0", "advanced-steel", "free", "CC-BY-4.0"), "name"),
        (("../up", "1.0.0", "advanced-steel", "free", "CC-BY-4.0"), "name"),
        (("c", "1.0", "advanced-steel", "free", "CC-BY-4.0"), "version"),
        (("c", "v1.0.0", "advanced-steel", "free", "CC-BY-4.0"), "version"),
        (("c", "01.0.0", "advanced-steel", "free", "CC-BY-4.0"), "version"),
        (("c", "1.0.0", "steel", "free", "CC-BY-4.0"), "field"),
        (("c", "1.0.0", "advanced-steel", "gratis", "CC-BY-4.0"), "access"),
        (("c", "1.0.0", "advanced-steel", "free", "CC BY 4.0"), "license"),
    ],
)
def test_product_spec_refuses_naming_the_field(args: tuple[str, ...], field: str) -> None:
    with pytest.raises(RequestError) as e:
        name, version, field_, access, license_ = args
        P.ProductSpec.of(name, version, field_, access, license_, None)
    assert e.value.field == field


def _product(files: dict[str, str], columns: list[str], start: datetime, end: datetime) -> P.Product:
    return P.Product(
        id=1, name="p", version="1.2.3", title="p", description="", field="advanced-steel", grade="general",
        access="free", license="CC-BY-4.0", plant="steel", spec=None, request={}, snapshot="0" * 24,
        watermark="w", files=[FileEntry(path=p, sha256=h, bytes=1) for p, h in files.items()], tag_ids=[1],
        columns=columns, standard_properties=[], rows=1, bytes=1, temporal_start=start, temporal_end=end,
        location="/x", pull_id=None, change="initial", published_at=T0, publisher="me",
    )  # fmt: skip


def test_change_kinds_and_bumps() -> None:
    end = T0 + timedelta(hours=1)
    old = _product({"data/a.parquet": "1", "README.md": "r"}, ["data:time", "data:x"], T0, end)

    def files(h: str, card: str = "r") -> list[FileEntry]:
        return [FileEntry(path="data/a.parquet", sha256=h, bytes=1), FileEntry(path="README.md", sha256=card, bytes=1)]

    cols = ["data:time", "data:x"]
    # Same data files (the card may differ: a corrected description): a patch.
    assert P.change_kind(old, files("1", "other"), cols, T0, end) is ChangeKind.PATCH
    # Other bytes over the same columns and range: changed data.
    assert P.change_kind(old, files("2"), cols, T0, end) is ChangeKind.MAJOR
    # A column added, or the range extended, the earlier ones kept: additive.
    assert P.change_kind(old, files("2"), [*cols, "data:y"], T0, end) is ChangeKind.MINOR
    assert P.change_kind(old, files("2"), cols, T0, end + timedelta(hours=1)) is ChangeKind.MINOR
    # A column dropped or the range cut: changed.
    assert P.change_kind(old, files("2"), ["data:time"], T0, end) is ChangeKind.MAJOR
    assert P.change_kind(old, files("2"), cols, T0 + timedelta(minutes=1), end) is ChangeKind.MAJOR

    P.check_bump(old, "1.2.4", ChangeKind.PATCH)
    P.check_bump(old, "1.3.0", ChangeKind.PATCH)  # overstating is allowed
    P.check_bump(old, "1.3.0", ChangeKind.MINOR)
    P.check_bump(old, "2.0.0", ChangeKind.MAJOR)
    for version, actual, wanted in (("1.2.4", ChangeKind.MINOR, "1.3.0"), ("1.3.0", ChangeKind.MAJOR, "2.0.0")):
        with pytest.raises(RequestError) as e:
            P.check_bump(old, version, actual)
        assert e.value.field == "version" and f"publish {wanted} or later" in e.value.message


def test_parse_key() -> None:
    assert P.parse_key("caster-s355@1.0.0") == ("caster-s355", "1.0.0")
    for bad in ("caster", "caster@1", "@1.0.0", "Caster@1.0.0", "a/b@1.0.0"):
        with pytest.raises(RequestError) as e:
            P.parse_key(bad)
        assert e.value.field == "product"


def test_products_dir_precedence(tmp_path: Path) -> None:
    s = Settings.model_validate({"state_dir": tmp_path / "state"})
    assert P.products_dir(s, env={}) == tmp_path / "state" / "products"
    assert P.products_dir(s, env={P.PRODUCTS_ENV: str(tmp_path / "env")}) == tmp_path / "env"
    assert P.products_dir(s, tmp_path / "cli", env={P.PRODUCTS_ENV: str(tmp_path / "env")}) == tmp_path / "cli"


# --- against the database ------------------------------------------------------------------------


@pytest.fixture
def db(fresh_db: str) -> str:
    testing.load(fresh_db, SECONDS, lot_s=60)
    return fresh_db


@pytest.fixture
def node(db: str, tmp_path: Path) -> tuple[Settings, Path]:
    return Settings.model_validate({"db_dsn": db, "state_dir": tmp_path / "state"}), tmp_path / "products"


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_publish_records_product_and_audit_and_verifies(node: tuple[Settings, Path]) -> None:
    s, root = node
    p = P.publish(req(), spec("1.0.0"), settings=s, root=root, publisher="olga")
    assert (p.key, p.field, p.access, p.license, p.change, p.publisher) == (
        "caster-s355@1.0.0",
        "advanced-steel",
        "member",
        "CC-BY-4.0",
        "initial",
        "olga",
    )
    # All tags of the plant, the core one among them: the strictest grade is the product's.
    assert p.grade == "core" and len(p.tag_ids) == len(testing.TAGS)
    assert p.rows == 300 // 5 and p.snapshot and p.watermark
    assert Path(p.location) == (root / "caster-s355" / "1.0.0").resolve()
    paths = {f.path for f in p.files}
    assert {"croissant.json", "quality.json", "README.md"} <= paths
    assert any(x.startswith("data/") and x.endswith(".parquet") for x in paths)
    assert p.bytes == sum(f.bytes for f in p.files) == sum((Path(p.location) / f.path).stat().st_size for f in p.files)
    assert "data:mould.level" in p.columns and "data:time" in p.columns
    assert p.temporal_start == T0 and p.temporal_end == T0 + timedelta(seconds=300)
    assert p.request["start"] == "2025-06-01T00:00:00Z" and p.request["name"] == "caster-s355"
    croissant = json.loads((Path(p.location) / "croissant.json").read_text())
    assert croissant["name"] == "caster-s355" and croissant["license"]

    with psycopg.connect(s.dsn) as conn:
        recs = [r for r in audit.records(conn) if r.kind == "publish"]
        assert [(r.actor, r.subject) for r in recs] == [("olga", "caster-s355@1.0.0")]
        assert recs[0].detail["snapshot"] == p.snapshot and recs[0].detail["grade"] == "core"
        assert recs[0].detail["manifest"] == P.manifest_digest(p.files)
        assert audit.verify(conn).ok
        # The pull ran as the owner and is recorded like every pull.
        row = conn.execute("SELECT tier, status FROM dataset_pulls WHERE id = %s", (p.pull_id,)).fetchone()
        assert row == ("owner", "complete")

    v = P.verify_product(p.key, settings=s, root=root)
    assert v.ok, v.differences
    assert v.repulled == {f.path: f.sha256 for f in p.files}
    assert not any(x.name.startswith(".verify") for x in (root / "caster-s355").iterdir())  # scratch removed

    # A general-only selection is a general product.
    g = P.publish(req(tags=GENERAL), spec("1.0.0", name="caster-open", access="free"), settings=s, root=root)
    assert g.grade == "general" and g.access == "free"
    assert [x.key for x in P.list_products(s.dsn)] == ["caster-open@1.0.0", "caster-s355@1.0.0"]

    # Duplicate name@version: refused before anything is pulled.
    with pytest.raises(RequestError) as e:
        P.publish(req(), spec("1.0.0"), settings=s, root=root)
    assert e.value.field == "version" and "already published" in e.value.message

    # A stored file altered: verify names it.
    parquet = next(f.path for f in p.files if f.path.endswith(".parquet"))
    stored = Path(p.location) / parquet
    stored.write_bytes(stored.read_bytes() + b"x")
    v = P.verify_product(p.key, settings=s, root=root)
    assert not v.ok and any(parquet in d and d.startswith("stored") for d in v.differences)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_version_rules_against_the_data(node: tuple[Settings, Path]) -> None:
    s, root = node
    P.publish(req(tags=GENERAL), spec("1.0.0"), settings=s, root=root)
    # Same request, same data: byte-identical files, a patch is right.
    p101 = P.publish(req(tags=GENERAL), spec("1.0.1"), settings=s, root=root)
    assert p101.change == "patch"
    # A longer range keeps the earlier one: additive; a patch understates it and leaves nothing behind.
    with pytest.raises(RequestError) as e:
        P.publish(req(600, tags=GENERAL), spec("1.0.2"), settings=s, root=root)
    assert e.value.field == "version" and "publish 1.1.0 or later" in e.value.message
    assert not (root / "caster-s355" / "1.0.2").exists()
    assert P.publish(req(600, tags=GENERAL), spec("1.1.0"), settings=s, root=root).change == "minor"
    # The data changes in the database under the same request: patch and minor both understate it.
    with psycopg.connect(s.dsn, autocommit=True) as conn:
        n = conn.execute(
            "UPDATE readings SET v_float = v_float + 1 WHERE tag_id = (SELECT id FROM tags WHERE tag = 'mould.level') "
            "AND time < %s",
            (T0 + timedelta(seconds=60),),
        ).rowcount
        assert n == 60
    # ... and the published 1.1.0 no longer re-pulls byte for byte.
    v = P.verify_product("caster-s355@1.1.0", settings=s, root=root)
    assert not v.ok and any(d.startswith("data/") and "re-pull" in d for d in v.differences)
    for version in ("1.1.1", "1.2.0"):
        with pytest.raises(RequestError) as e:
            P.publish(req(600, tags=GENERAL), spec(version), settings=s, root=root)
        assert e.value.field == "version" and "publish 2.0.0 or later" in e.value.message
    assert P.publish(req(600, tags=GENERAL), spec("2.0.0"), settings=s, root=root).change == "major"
    # A version below the latest is judged against the latest version below it (1.0.1 here, whose
    # data has changed since).
    with pytest.raises(RequestError) as e:
        P.publish(req(tags=GENERAL), spec("1.0.5"), settings=s, root=root)
    assert e.value.field == "version" and "bump over caster-s355@1.0.1" in e.value.message
    with psycopg.connect(s.dsn) as conn:
        subjects = [r.subject for r in audit.records(conn) if r.kind == "publish"]
        assert audit.verify(conn).ok
    assert subjects == [f"caster-s355@{v}" for v in ("1.0.0", "1.0.1", "1.1.0", "2.0.0")]


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_cli_publish_products_verify(
    node: tuple[Settings, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plantstream.datasets.cli import dataset

    s, root = node
    monkeypatch.setenv("PLANTSTREAM_DB_DSN", s.dsn)
    monkeypatch.setenv(P.PRODUCTS_ENV, str(root))
    good = tmp_path / "publish.yaml"
    good.write_text(
        "plant: steel\nstart: 2025-06-01T00:00:00Z\nend: 2025-06-01T00:05:00Z\ninterval: 10s\n"
        f"tags: [{', '.join(GENERAL)}]\n"
    )
    args = ["--name", "caster-open", "--field", "advanced-steel", "--access", "free", "--license", "CC-BY-4.0"]
    runner = CliRunner()
    res = runner.invoke(dataset, ["publish", str(good), "--version", "1.0.0", *args, "--title", "Caster, open"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == "caster-open@1.0.0"
    assert (root / "caster-open" / "1.0.0" / "croissant.json").is_file()

    res = runner.invoke(dataset, ["products", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    assert [(x["name"], x["version"], x["title"], x["grade"]) for x in listed] == [
        ("caster-open", "1.0.0", "Caster, open", "general")
    ]
    res = runner.invoke(dataset, ["verify-product", "caster-open@1.0.0"])
    assert res.exit_code == 0, res.output
    assert "byte-identical" in res.stdout

    # Refusals exit 2 naming the field.
    relative = tmp_path / "relative.yaml"
    relative.write_text("plant: steel\nstart: -1h\nend: now\ninterval: 10s\n")
    for argv, field in (
        (["publish", str(relative), "--version", "1.0.1", *args], "start"),
        (["publish", str(good), "--version", "1.0.0", *args], "version"),
        (["publish", str(good), "--version", "1.0", *args], "version"),
        (["publish", str(good), "--version", "2.0.0", *args[:2], "--field", "steel", *args[4:]], "field"),
        (["verify-product", "caster-open@9.9.9"], "product"),
        (["verify-product", "caster-open"], "product"),
    ):
        res = runner.invoke(dataset, argv)
        assert res.exit_code == 2, (argv, res.output)
        assert f"field '{field}'" in res.stderr, (argv, res.stderr)

    # A stored file altered: exit 1 naming it.
    data = next((root / "caster-open" / "1.0.0" / "data").rglob("*.parquet"))
    assert pq.read_table(data).num_rows == 30
    data.write_bytes(b"not parquet")
    res = runner.invoke(dataset, ["verify-product", "caster-open@1.0.0"])
    assert res.exit_code == 1, res.output
    assert "NOT reproducible" in res.stdout and data.name in res.stderr
