"""The node/platform catalog vocabulary: semantic versions, JSON-LD round trips, hostile entries."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plantstream.contract import Grade
from plantstream.domain.catalog import (
    NAME_RE,
    Access,
    ChangeKind,
    MaterialField,
    ProductEntry,
    SemVer,
    catalog_jsonld,
    parse_access,
    parse_catalog,
    product_path,
)


def _entry(**kw: Any) -> ProductEntry:
    base: dict[str, Any] = {
        "name": "slab-temps",
        "version": "1.2.0",
        "title": "Caster slab temperatures",
        "material_field": MaterialField.ADVANCED_STEEL,
        "grade": Grade.IMPORTANT,
        "access": Access.MEMBER,
        "license": "CC-BY-4.0",
        "plant": "steel",
        "spec": "Q355B",
        "standard_properties": ["ps:temperature"],
        "temporal_start": "2026-12-01T00:00:00Z",
        "temporal_end": "2026-12-01T01:00:00Z",
        "rows": 3600,
        "bytes": 12345,
        "snapshot": "ab" * 32,
        "published_at": "2026-12-01T01:00:00Z",
        "files": [
            {"path": "data/train.parquet", "bytes": 12000, "sha256": "cd" * 32, "media_type": "application/x-parquet"}
        ],
    }
    base.update(kw)
    return ProductEntry(**base)


def test_semver_parse_order_and_change_kinds() -> None:
    v = SemVer.parse("1.2.3")
    assert str(v) == "1.2.3" and v < SemVer.parse("1.10.0")
    assert SemVer.parse("2.0.0").change_from(v) is ChangeKind.MAJOR
    assert SemVer.parse("1.3.0").change_from(v) is ChangeKind.MINOR
    assert SemVer.parse("1.2.4").change_from(v) is ChangeKind.PATCH
    assert SemVer.parse("1.2.3").change_from(v) is None and SemVer.parse("1.1.9").change_from(v) is None
    assert v.bump(ChangeKind.MINOR) == SemVer(1, 3, 0) and v.bump(ChangeKind.MAJOR) == SemVer(2, 0, 0)
    for bad in ["1.2", "01.2.3", "1.2.3-rc1", "v1.2.3", "", "1.2.3.4", "9999999.0.0"]:
        with pytest.raises(ValueError, match="semantic version"):
            SemVer.parse(bad)


def test_catalog_round_trip() -> None:
    entries = [_entry(), _entry(name="fiber-doffs", access=Access.FREE, grade=Grade.GENERAL, spec=None)]
    doc = catalog_jsonld("node-steel", "Steel node", entries, "http://127.0.0.1:8080/")
    assert doc["@type"] == ["sc:DataCatalog", "dcat:Catalog"]
    first = doc["dataset"][0]
    assert first["ps:croissant"] == "http://127.0.0.1:8080/api/products/slab-temps/1.2.0/croissant.json"
    assert first["distribution"][0]["contentUrl"].endswith("/files/data/train.parquet")
    node, back = parse_catalog(doc)
    assert node == "node-steel" and back == entries


@given(st.text(max_size=40))
def test_hostile_names_never_parse_into_paths(name: str) -> None:
    doc = _entry().to_jsonld("http://n")
    doc["name"] = name
    try:
        e = ProductEntry.from_jsonld(doc)
    except ValueError as exc:
        assert "name" in str(exc)
    else:
        # What parses is safe as one URL path segment and one directory name.
        assert NAME_RE.fullmatch(e.name) and "/" not in e.name and e.name[0].isalnum()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("ps:grade", "secret", "grade"),
        ("ps:access", "vip", "access"),
        ("ps:materialField", "steel", "material_field"),
        ("version", "1.0", "version"),
        ("ps:rows", -1, "rows"),
        ("ps:snapshot", "zz", "snapshot"),
    ],
)
def test_bad_entry_fields_are_named(field: str, value: Any, named: str) -> None:
    doc = _entry().to_jsonld("http://n")
    doc[field] = value
    with pytest.raises(ValueError, match=f"field '{named}'"):
        ProductEntry.from_jsonld(doc)


def test_file_paths_cannot_climb() -> None:
    for bad in ["../etc/passwd", "data/../../x", "/abs", "a//b", "a/./b"]:
        with pytest.raises(ValueError):
            _entry(files=[{"path": bad, "bytes": 1, "sha256": "00" * 32, "media_type": "x"}])


def test_catalog_shape_errors() -> None:
    with pytest.raises(ValueError, match="identifier"):
        parse_catalog({"dataset": []})
    with pytest.raises(ValueError, match="dataset"):
        parse_catalog({"identifier": "n", "dataset": {}})
    with pytest.raises(ValueError, match="JSON object"):
        parse_catalog([])


def test_access_list_and_paths() -> None:
    assert parse_access("free, paid,") == {Access.FREE, Access.PAID}
    with pytest.raises(ValueError, match="'gold'"):
        parse_access("free,gold")
    assert product_path("a b", "1.0.0") == "/api/products/a%20b/1.0.0"
