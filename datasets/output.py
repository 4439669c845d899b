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

ROW_GROUP_ROWS = 65_536
# The file format: layout, column meaning, metadata. Its semantic version is the dataset's
# version (croissant.json ``version``): MAJOR changes when a reader of the previous format could
# misread the files (2: one table per line, a row's lot from the process segments), MINOR when
# columns or metadata are only added, PATCH for corrections that leave the data as it was. The
# snapshot id (which data) rides along as semver build metadata: ``2.0.0+<snapshot>``.
FORMAT_SEMVER = "2.0.0"
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

    @property
    def unit_code(self) -> str | None:
        return ucum(self.unit) if self.unit else None

    def arrow_field(self) -> pa.Field:
        meta = {"description": self.description}
        if self.unit:
            meta["unit"] = self.unit
            if self.unit_code:
                meta["unit_ucum"] = self.unit_code
        if self.grade:
            meta["grade"] = self.grade
        return pa.field(self.name, self.type, nullable=self.nullable, metadata=meta)


def schema_of(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([c.arrow_field() for c in columns], metadata={"format": FORMAT_VERSION})


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


def _ident(table: str) -> str:
    """A table name as an id part (line paths use '.', kept; anything else becomes '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", table)


def dumps_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
