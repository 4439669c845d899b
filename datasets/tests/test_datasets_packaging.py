"""Standard packaging of a pull (issue 16): the folder is a Hugging Face dataset (the card's YAML
front matter, read by the ``datasets`` package itself), and croissant.json is Croissant 1.0 with
the RAI properties, validated by ``mlcroissant``."""

from __future__ import annotations

import importlib
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from plantstream.access import Tier
from plantstream.datasets.pull import pull
from plantstream.domain.pullrequest import Requester, validate_request
from plantstream.testing import datasets as testing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

T0 = datetime.fromtimestamp(testing.T0_US / 1e6, UTC)
OWNER = Requester(name="hana", tier=Tier.OWNER)
ROOT = Path(__file__).resolve().parents[2]


def hf_datasets() -> ModuleType:
    """The Hugging Face ``datasets`` package, not this repository's ``datasets/`` folder, which
    pytest (run from the checkout, test modules already collected) may hold under that name."""
    mine = sys.modules.get("datasets")
    if mine is not None and not hasattr(mine, "load_dataset"):
        for name in [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")]:
            del sys.modules[name]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    try:
        mod = importlib.import_module("datasets")
    finally:
        sys.path[:] = saved
    assert hasattr(mod, "load_dataset"), mod
    return mod


def steel(db: str, tmp_path: Path, **kw: Any) -> Any:
    testing.load(db, 600, lot_s=60)
    base: dict[str, Any] = {"plant": testing.PLANT, "start": T0, "end": T0 + timedelta(seconds=600), "interval": "5s"}
    return pull(db, validate_request({**base, **kw}), OWNER, out=tmp_path / "ds")


def test_the_folder_loads_as_a_hugging_face_dataset_with_its_splits(fresh_db: str, tmp_path: Path) -> None:
    hf = hf_datasets()
    split = {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 3}
    rec = steel(fresh_db, tmp_path, labels=True, split=split)
    card = (tmp_path / "ds" / "README.md").read_text()
    assert card.startswith('---\nlicense: "cc-by-4.0"\n')
    got = hf.load_dataset(str(tmp_path / "ds"), cache_dir=str(tmp_path / "hf"))
    rows = {f.path.split("/")[1].removeprefix("split="): f.rows for f in rec.files if f.path.startswith("data/")}
    assert sorted(got) == ["test", "train", "validation"]
    assert {s: got[s].num_rows for s in got} == rows and sum(rows.values()) == 120
    feats = got["train"].features
    assert feats["time"] == hf.Value("timestamp[us, tz=UTC]")
    assert feats["mould.level"] == hf.Value("float64") and feats["mould.strands"] == hf.Value("int64")
    assert feats["mould.running"] == hf.Value("bool") and feats["in_spec"] == hf.Value("bool")
    assert feats["lot"] == hf.Value("string")
    assert "split" not in feats  # the folder name is the split, not a column
    lots = {s: set(got[s]["lot"]) for s in got}
    assert not (lots["train"] & lots["test"]) and not (lots["train"] & lots["validation"])
    # The lot-level table is its own config: one row per lot, the same lots in the same splits.
    per_lot = hf.load_dataset(str(tmp_path / "ds"), "lots", cache_dir=str(tmp_path / "hf-lots"))
    assert {s: set(per_lot[s]["lot"]) for s in per_lot} == lots
    assert {s: per_lot[s].num_rows for s in per_lot} == {"train": 6, "validation": 2, "test": 2}
    assert per_lot["train"].features["mould.level.mean"] == hf.Value("float64")


def test_one_config_per_line_and_an_unsplit_pull_is_train(fresh_db: str, tmp_path: Path) -> None:
    hf = hf_datasets()
    testing.write(fresh_db, testing.fiber_records(720))
    req = validate_request({"plant": testing.FIBER, "start": T0, "end": T0 + timedelta(seconds=720), "interval": "10s"})
    pull(fresh_db, req, OWNER, out=tmp_path / "f")
    poy = hf.load_dataset(str(tmp_path / "f"), "acme.nantong.spinning.poy1", cache_dir=str(tmp_path / "hf"))
    assert list(poy) == ["train"] and poy["train"].num_rows == 72
    assert {x[:1] for x in poy["train"]["lot"]} == {"D"} and "cf1.speed" not in poy["train"].features
    default = hf.load_dataset(str(tmp_path / "f"), cache_dir=str(tmp_path / "hf2"))  # the first config
    assert "cf1.speed" in default["train"].features and "poy1.speed" not in default["train"].features


def test_croissant_is_complete_with_rai_and_validates_without_warnings(fresh_db: str, tmp_path: Path) -> None:
    import json

    import mlcroissant as mlc
    import pyarrow.parquet as pq

    testing.load(fresh_db, 600, lot_s=60, skip=frozenset({("mould.level", i) for i in range(100, 120)}))
    base: dict[str, Any] = {"plant": testing.PLANT, "start": T0, "end": T0 + timedelta(seconds=600), "interval": "5s"}
    req = validate_request(
        {**base, "labels": True, "split": {"train": 0.6, "validation": 0.2, "test": 0.2}, "gap": {"rule": "none"}}
    )
    rec = pull(fresh_db, req, OWNER, out=tmp_path / "ds")
    path = tmp_path / "ds" / "croissant.json"
    ds = mlc.Dataset(jsonld=str(path))
    issues = ds.metadata.ctx.issues
    assert not issues.errors and not issues.warnings, issues.report()
    md = ds.metadata
    assert md.version == f"2.1.0+{rec.snapshot}"
    # The newest reading (599 s), not the clock: a re-pull is byte-identical (test_datasets_pull).
    assert md.date_published == T0 + timedelta(seconds=599)
    assert [c.name for c in md.creators] == ["acme"] and md.publisher and md.keywords
    assert md.data_collection and "plant steel" in md.data_collection
    # mould.level has no reading at 100..119 s: buckets 100..115 are null under rule none (4 rows).
    assert md.data_collection_missing_data and " in 1 gap(s)" in md.data_collection_missing_data
    assert "longest 20s, mould.level" in md.data_collection_missing_data
    assert md.data_imputation_protocol and "0 of " in md.data_imputation_protocol  # rule none imputes nothing
    assert md.data_preprocessing_protocol and any("UCUM" in p for p in md.data_preprocessing_protocol)
    assert md.data_use_cases and md.data_limitations and md.data_annotation_protocol
    assert [d.isoformat() for d in md.data_collection_timeframe or []] == [
        "2025-06-01T00:00:00+00:00",
        "2025-06-01T00:10:00+00:00",
    ]
    # Units: the display form and the UCUM code, in Croissant and in the Parquet field metadata.
    doc = json.loads(path.read_text())
    fields = {f["name"]: f for rs in doc["recordSet"] for f in rs["field"]}
    assert fields["rows/mould.recipe_setpoint"]["sc:unitText"] == "degC"
    assert fields["rows/mould.recipe_setpoint"]["sc:unitCode"] == "Cel"
    schema = pq.read_schema(next((tmp_path / "ds" / "data").rglob("*.parquet")))
    meta = schema.field("mould.recipe_setpoint").metadata
    assert meta[b"unit"] == b"degC" and meta[b"unit_ucum"] == b"Cel"
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "| `mould.level` | mm (mm) | 0.9667 | 0.9667 | 1 | 20s |" in card  # 116 of 120 rows


def test_units_of_the_fiber_plant_as_ucum(fresh_db: str, tmp_path: Path) -> None:
    import json

    import pyarrow.parquet as pq

    testing.write(fresh_db, testing.fiber_records(720))
    req = validate_request({"plant": testing.FIBER, "start": T0, "end": T0 + timedelta(seconds=720), "interval": "10s"})
    pull(fresh_db, req, OWNER, out=tmp_path / "f")
    part = next((tmp_path / "f" / "data" / "line=acme.nantong.carbonfiber.cf1").rglob("*.parquet"))
    meta = pq.read_schema(part).field("cf1.n2_flow").metadata
    assert meta[b"unit"] == b"m**3/h" and meta[b"unit_ucum"] == b"m3/h"
    doc = json.loads((tmp_path / "f" / "croissant.json").read_text())
    codes = {f["name"]: f.get("sc:unitCode") for rs in doc["recordSet"] for f in rs["field"]}
    assert codes["rows-acme.nantong.carbonfiber.cf1/cf1.n2_flow"] == "m3/h"
    assert codes["rows-acme.nantong.spinning.poy1/poy1.titer"] == "dg/km"


# --- standard properties (issue 18) ---------------------------------------------------------------

STEEL_PROPS = {
    "mould.level": "ps:length.level",
    "mould.speed": "ps:linear-speed.material",
    "mould.recipe_setpoint": "ps:temperature",
    "mould.running": "ps:running",
}


def test_columns_carry_their_standard_property_in_parquet_and_croissant(fresh_db: str, tmp_path: Path) -> None:
    import json

    import mlcroissant as mlc
    import psycopg
    import pyarrow.parquet as pq

    from plantstream.domain.vocabulary import current

    testing.load(fresh_db, 600, lot_s=60)
    with psycopg.connect(fresh_db) as conn:  # as the sink stores them from the tags' metadata
        for tag, prop in STEEL_PROPS.items():
            conn.execute("UPDATE tags SET std_property = %s WHERE plant = 'steel' AND tag = %s", (prop, tag))
    base: dict[str, Any] = {"plant": testing.PLANT, "start": T0, "end": T0 + timedelta(seconds=600), "interval": "5s"}
    pull(fresh_db, validate_request({**base, "labels": True}), OWNER, out=tmp_path / "ds")
    vocab = current()
    schema = pq.read_schema(next((tmp_path / "ds" / "data").rglob("*.parquet")))
    for tag, prop in STEEL_PROPS.items():
        meta = schema.field(tag).metadata
        assert meta[b"plantstream.property"] == prop.encode(), tag
        # Pulled values are in the canonical unit, which is the property's unit.
        assert meta.get(b"unit", b"").decode() == vocab.get(prop).unit, tag
    assert b"plantstream.property" not in schema.field("mould.strands").metadata
    assert b"plantstream.property" not in schema.field("lot").metadata
    ref = json.loads(schema.metadata[b"plantstream.vocabulary"])
    assert ref == {"name": vocab.name, "version": vocab.version, "iri": vocab.iri, "prefix": "ps"}

    path = tmp_path / "ds" / "croissant.json"
    ds = mlc.Dataset(jsonld=str(path))
    assert not ds.metadata.ctx.issues.errors and not ds.metadata.ctx.issues.warnings, ds.metadata.ctx.issues.report()
    doc = json.loads(path.read_text())
    fields = {f["name"]: f for rs in doc["recordSet"] for f in rs["field"]}
    level = fields["rows/mould.level"]["sc:additionalProperty"]
    assert level["sc:propertyID"] == "ps:length.level" and level["sc:value"] == vocab.property_iri("ps:length.level")
    assert level["sc:unitText"] == fields["rows/mould.level"]["sc:unitText"] == "mm" and level["sc:unitCode"] == "mm"
    assert fields["rows/mould.running"]["sc:additionalProperty"]["sc:propertyID"] == "ps:running"
    assert "sc:unitText" not in fields["rows/mould.running"]["sc:additionalProperty"]
    assert "sc:additionalProperty" not in fields["rows/mould.strands"]
    assert doc["sc:additionalProperty"]["sc:value"] == vocab.iri  # which vocabulary, at the dataset level
    assert any("Standard properties: 4 tag column(s)" in p for p in doc["rai:dataPreprocessingProtocol"])
    card = (tmp_path / "ds" / "README.md").read_text()
    assert (
        "| `mould.level` | `acme/duisburg/steelmaking/caster1/mould` | mm | float | general | `ps:length.level` |"
        in card
    )


def test_a_pull_without_properties_carries_none(fresh_db: str, tmp_path: Path) -> None:
    import json

    import pyarrow.parquet as pq

    rec = steel(fresh_db, tmp_path)
    schema = pq.read_schema(next((tmp_path / "ds" / "data").rglob("*.parquet")))
    assert b"plantstream.vocabulary" not in schema.metadata and rec.files
    assert all(b"plantstream.property" not in (f.metadata or {}) for f in schema)
    doc = json.loads((tmp_path / "ds" / "croissant.json").read_text())
    assert "sc:additionalProperty" not in doc


def test_a_column_whose_unit_is_not_its_propertys_is_refused() -> None:
    import pyarrow as pa

    from plantstream.datasets.output import Column

    assert Column("t", pa.float64(), unit="degC", std_property="ps:temperature.melt").unit_code == "Cel"
    with pytest.raises(ValueError, match="unit 'degF' is not the unit 'degC' of its standard property ps:temperature"):
        Column("t", pa.float64(), unit="degF", std_property="ps:temperature")
    # The vocabulary's UCUM code where the certain mapping has none; an id of another vocabulary is kept as is.
    assert Column("s", pa.float64(), unit="1/min", std_property="ps:rotational-speed").unit_code == "/min"
    other = Column("x", pa.float64(), unit="furlong", std_property="acme:odd")
    assert other.standard_property is None and other.arrow_field().metadata[b"plantstream.property"] == b"acme:odd"


def test_the_vocabulary_ucum_codes_agree_with_the_dataset_unit_mapping() -> None:
    from plantstream.datasets.logic.units import ucum
    from plantstream.domain.vocabulary import current

    for p in current():
        if p.unit and ucum(p.unit) is not None:  # where the mapping is certain, both say the same
            assert ucum(p.unit) == p.ucum, p.id
