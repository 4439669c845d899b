"""Deterministic output: Parquet partitioned by split, the Croissant 1.0 file, the dataset card.

Byte-identical re-pulls: every writer setting is fixed here (format version, compression and
level, dictionary, statistics, row-group size, page size), nothing time-dependent is written,
columns and files are in a fixed order, and rows arrive sorted by time. The Parquet footer
names the writing library (``created_by``), so identical bytes hold for one pyarrow version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from plantstream.datasets.logic.units import ucum
from plantstream.domain.vocabulary import StdProperty, Vocabulary, current

ROW_GROUP_ROWS = 65_536
# The file format: layout, column meaning, metadata. Its semantic version is the dataset's
# version (croissant.json ``version``): MAJOR changes when a reader of the previous format could
# misread the files (2: one table per line, a row's lot from the process segments), MINOR when
# columns or metadata are only added (2.1: a tag column's standard property), PATCH for corrections
# that leave the data as it was. The snapshot id (which data) rides along as semver build
# metadata: ``2.1.0+<snapshot>``.
FORMAT_SEMVER = "2.1.0"
FORMAT_VERSION = f"plantstream-dataset/{FORMAT_SEMVER.split('.')[0]}"
_WRITER_OPTS: dict[str, Any] = {
    "version": "2.6",
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "data_page_size": 1 << 20,
    "data_page_version": "1.0",
    "write_page_index": False,
    "store_schema": True,
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: pa.DataType
    unit: str = ""
    description: str = ""
    grade: str = ""
    nullable: bool = True
    std_property: str = ""  # standard property id of the shared vocabulary ('' for none)

    def __post_init__(self) -> None:
        prop = self.standard_property
        # Readings reach the database in the canonical unit of their quantity, which is the
        # property's unit by the vocabulary's own check: anything else is a broken invariant
        # upstream, and a column labelled with a property in another unit would mislead.
        if prop is not None and prop.unit != self.unit:
            raise ValueError(
                f"column {self.name!r}: unit {self.unit!r} is not the unit {prop.unit!r} of its standard property "
                f"{prop.id} (tag metadata and readings disagree with the vocabulary)"
            )

    @property
    def standard_property(self) -> StdProperty | None:
        """The column's property in the vocabulary in use; None without one, or for an id this
        vocabulary does not know (another node's; the id is still written)."""
        if not self.std_property:
            return None
        vocab = current()
        return vocab.get(self.std_property) if self.std_property in vocab else None

    @property
    def unit_code(self) -> str | None:
        if not self.unit:
            return None
        code = ucum(self.unit)
        prop = self.standard_property
        # The vocabulary states a code for units the certain mapping leaves out (1/min -> /min).
        return code or (prop.ucum if prop is not None and prop.ucum else None)

    def arrow_field(self) -> pa.Field:
        meta = {"description": self.description}
        if self.unit:
            meta["unit"] = self.unit
            if self.unit_code:
                meta["unit_ucum"] = self.unit_code
        if self.grade:
            meta["grade"] = self.grade
        if self.std_property:
            meta[PROPERTY_KEY] = self.std_property
        return pa.field(self.name, self.type, nullable=self.nullable, metadata=meta)


# Parquet field metadata key of a column's standard property id; the schema metadata names the
# vocabulary (name, version, IRI) when a column has one.
PROPERTY_KEY = "plantstream.property"
VOCABULARY_KEY = "plantstream.vocabulary"


def vocabulary_ref(vocab: Vocabulary | None = None) -> dict[str, str]:
    """What identifies the vocabulary in use: name, version and base IRI (and the file's prefix)."""
    v = vocab or current()
    return {"name": v.name, "version": v.version, "iri": v.iri, "prefix": v.prefix}


def schema_of(columns: Sequence[Column]) -> pa.Schema:
    meta = {"format": FORMAT_VERSION}
    if any(c.std_property for c in columns):
        meta[VOCABULARY_KEY] = json.dumps(vocabulary_ref(), sort_keys=True)
    return pa.schema([c.arrow_field() for c in columns], metadata=meta)


@dataclass
class SplitWriter:
    """Buffers rows of one split and writes full row groups of ``ROW_GROUP_ROWS`` rows."""

    path: Path
    schema: pa.Schema
    rows: int = 0
    _buf: list[pa.RecordBatch] = field(default_factory=list)
    _buffered: int = 0
    _writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._buf.append(batch)
        self._buffered += batch.num_rows
        while self._buffered >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _flush(self, n: int) -> None:
        table = pa.Table.from_batches(self._buf, schema=self.schema)
        head, rest = table.slice(0, n), table.slice(n)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(str(self.path), self.schema, **_WRITER_OPTS)
        self._writer.write_table(head.combine_chunks(), row_group_size=n)
        self.rows += n
        self._buf = rest.combine_chunks().to_batches() if rest.num_rows else []
        self._buffered = rest.num_rows


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- Croissant 1.0 --------------------------------------------------------------------------------

_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

_DATATYPE = {
    pa.float64(): "sc:Float",
    pa.int64(): "sc:Integer",
    pa.bool_(): "sc:Boolean",
    pa.string(): "sc:Text",
}


def croissant(
    *,
    name: str,
    description: str,
    license: str,
    version: str,
    # (kind "rows" | "lots", table, columns, files)
    tables: Sequence[tuple[str, str, Sequence[Column], Sequence[tuple[str, str, str]]]],
    url: str,
    cite_as: str,
    extra: dict[str, Any] | None = None,
    reports: Sequence[tuple[str, str, str]] = (),  # (relative path, sha256, description): JSON files
) -> dict[str, Any]:
    """A Croissant 1.0 JSON-LD document for the Parquet files: one RecordSet per table (``rows``
    for a pull with one table, ``rows-<table>`` otherwise; the lot tables ``lots[-<table>]``),
    split by a cr:Split set. ``files`` are (split, relative path, sha256)."""
    distribution: list[dict[str, Any]] = []
    record_sets: list[dict[str, Any]] = []
    splits_present: list[str] = []
    for kind, table, columns, files in tables:
        key = _ident(table)
        sfx = f"-{key}" if table else ""
        lots = kind == "lots"
        root = "lots" if lots else "data"
        for split, rel, sha in files:
            if split not in splits_present:
                splits_present.append(split)
            distribution.append(
                {
                    "@type": "cr:FileObject",
                    "@id": f"{'lots' if lots else 'parquet'}{sfx}-{split}",
                    "name": f"{'lots' if lots else 'parquet'}{sfx}-{split}",
                    "description": f"{'lots' if lots else 'rows'} of the {split} split"
                    + (f" of table {table}" if table else ""),
                    "contentUrl": rel,
                    "encodingFormat": "application/x-parquet",
                    "sha256": sha,
                }
            )
        fileset = f"{'lot' if lots else 'parquet'}-files{sfx}"
        distribution.append(
            {
                "@type": "cr:FileSet",
                "@id": fileset,
                "name": fileset,
                "description": ("the lot tables' Parquet files" if lots else "all Parquet files")
                + (f" of table {table}" if table else "")
                + ", hive-partitioned by split",
                "encodingFormat": "application/x-parquet",
                "includes": f"{root}/line={table}/*/*.parquet" if table else f"{root}/*/*.parquet",
            }
        )
        rs = f"{kind}{sfx}"
        fields: list[dict[str, Any]] = []
        for c in columns:
            desc = (
                c.description + (f" [unit: {c.unit}]" if c.unit else "") + (f" [grade: {c.grade}]" if c.grade else "")
            )
            fid = f"{rs}/{c.name}"
            dtype = "sc:Date" if pa.types.is_timestamp(c.type) else _DATATYPE.get(c.type, "sc:Text")
            f: dict[str, Any] = {
                "@type": "cr:Field",
                "@id": fid,
                "name": fid,
                "description": desc,
                "dataType": dtype,
                "source": {"fileSet": {"@id": fileset}, "extract": {"column": c.name}},
            }
            if c.unit:
                f["sc:unitText"] = c.unit
                if c.unit_code:
                    f["sc:unitCode"] = c.unit_code
            if c.std_property:
                f["sc:additionalProperty"] = property_value(c)
            fields.append(f)
        fields.append(
            {
                "@type": "cr:Field",
                "@id": f"{rs}/split",
                "name": f"{rs}/split",
                "description": "the split of the row (from the file path)",
                "dataType": "sc:Text",
                "source": {
                    "fileSet": {"@id": fileset},
                    "extract": {"fileProperty": "fullpath"},
                    "transform": {"regex": "^(?:.*split=)?([a-z]+)(?:/[^/]*)?$"},
                },
                "references": {"field": {"@id": "splits/name"}},
            }
        )
        record_sets.append(
            {
                "@type": "cr:RecordSet",
                "@id": rs,
                "name": rs,
                "description": ("one row per lot: process features and lot labels" if lots else "one row per grid time")
                + (f": table {table} (one line's tags and lots)" if table else ""),
                "field": fields,
            }
        )
    for rel, sha, desc in reports:
        distribution.append(
            {
                "@type": "cr:FileObject",
                "@id": rel,
                "name": rel,
                "description": desc,
                "contentUrl": rel,
                "encodingFormat": "application/json",
                "sha256": sha,
            }
        )
    split_urls = {"train": "cr:TrainSplit", "validation": "cr:ValidationSplit", "test": "cr:TestSplit"}
    order = {"train": 0, "validation": 1, "test": 2}
    splits_present.sort(key=lambda s: order.get(s, 3))
    splits: dict[str, Any] = {
        "@type": "cr:RecordSet",
        "@id": "splits",
        "name": "splits",
        "description": "the splits of this dataset (by lot: no lot is in two splits)",
        "dataType": "cr:Split",
        "key": {"@id": "splits/name"},
        "field": [
            {"@type": "cr:Field", "@id": "splits/name", "name": "splits/name", "dataType": "sc:Text"},
            {"@type": "cr:Field", "@id": "splits/url", "name": "splits/url", "dataType": "sc:URL"},
        ],
        "data": [
            {"splits/name": s, "splits/url": split_urls.get(s, f"cr:{s.capitalize()}Split")} for s in splits_present
        ],
    }
    return {
        "@context": _CONTEXT,
        "@type": "sc:Dataset",
        "name": name,
        "description": description,
        "conformsTo": "http://mlcommons.org/croissant/1.0",
        "citeAs": cite_as,
        "license": license,
        "url": url,
        "version": version,
        **(extra or {}),
        "distribution": distribution,
        "recordSet": [splits, *record_sets],
    }


def property_value(c: Column) -> dict[str, Any]:
    """The column's standard property as a schema.org PropertyValue: the id (propertyID), the
    vocabulary it comes from, its IRI and unit (for an id the vocabulary in use does not know:
    the id alone)."""
    out: dict[str, Any] = {"@type": "sc:PropertyValue", "sc:propertyID": c.std_property}
    prop = c.standard_property
    if prop is not None:
        vocab = current()
        out["sc:name"] = prop.label
        out["sc:value"] = vocab.property_iri(prop.id)
        out["sc:description"] = f"standard property {prop.id} of {vocab.name} {vocab.version} ({vocab.iri})"
        if prop.unit:
            out["sc:unitText"] = prop.unit
            out["sc:unitCode"] = prop.ucum
    return out


def _ident(table: str) -> str:
    """A table name as an id part (line paths use '.', kept; anything else becomes '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", table)


def dumps_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
