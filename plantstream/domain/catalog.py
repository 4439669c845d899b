"""What a data resource node and the platform say to each other about dataset products.

A product is a published, versioned dataset pull held at its node. The node describes its products
as a schema.org ``DataCatalog`` (with the matching DCAT terms, so generic catalog harvesters read it
too); the platform harvests that JSON-LD and never holds the data. This module is the one place
both sides take the vocabulary from: material fields, access levels, semantic versions, the
catalog entry and its JSON-LD form, and the HTTP headers of a brokered request.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from plantstream.contract import Grade


class MaterialField(enum.StrEnum):
    """The material fields the national program runs one data resource node each for."""

    ADVANCED_STEEL = "advanced-steel"
    NON_FERROUS = "non-ferrous"
    PETROCHEMICAL = "petrochemical"
    INORGANIC_NONMETALLIC = "inorganic-nonmetallic"
    FIBERS_COMPOSITES = "fibers-composites"
    FRONTIER = "frontier"


class Access(enum.StrEnum):
    """A product's access level: free sharing, members only, or paid use."""

    FREE = "free"
    MEMBER = "member"
    PAID = "paid"


class ChangeKind(enum.StrEnum):
    PATCH = "patch"  # the same data (byte-identical files), e.g. a corrected description
    MINOR = "minor"  # additive: the earlier version's columns and time range are contained
    MAJOR = "major"  # changed data


_SEMVER = re.compile(r"^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$")
_NAME = r"^[a-z0-9][a-z0-9._-]{0,79}$"
NAME_RE = re.compile(_NAME)


@dataclass(frozen=True, slots=True, order=True)
class SemVer:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> SemVer:
        m = _SEMVER.match(text.strip()) if isinstance(text, str) else None
        if not m:
            raise ValueError(f"{text!r} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.0.0)")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def bump(self, kind: ChangeKind) -> SemVer:
        if kind is ChangeKind.MAJOR:
            return SemVer(self.major + 1, 0, 0)
        if kind is ChangeKind.MINOR:
            return SemVer(self.major, self.minor + 1, 0)
        return SemVer(self.major, self.minor, self.patch + 1)

    def change_from(self, earlier: SemVer) -> ChangeKind | None:
        """The kind of change this version claims over ``earlier`` (None: not later)."""
        if self <= earlier:
            return None
        if self.major != earlier.major:
            return ChangeKind.MAJOR
        if self.minor != earlier.minor:
            return ChangeKind.MINOR
        return ChangeKind.PATCH


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(pattern=r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$", max_length=300)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: str = Field(max_length=100)

    @field_validator("path")
    @classmethod
    def _no_dots(cls, v: str) -> str:
        if any(part in {".", ".."} for part in v.split("/")):
            raise ValueError("path segments '.' and '..' are not allowed")
        return v


class ProductEntry(BaseModel):
    """One product version as a catalog lists it (metadata only; the files stay at the node)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME)
    version: str
    title: str = Field(max_length=300)
    description: str = Field(default="", max_length=5000)
    material_field: MaterialField
    grade: Grade
    access: Access
    license: str = Field(pattern=r"^[A-Za-z0-9.+-]{1,64}$")  # an SPDX identifier
    plant: str = Field(max_length=64)
    spec: str | None = Field(default=None, max_length=200)
    standard_properties: list[str] = Field(default_factory=list, max_length=1000)
    temporal_start: str
    temporal_end: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    snapshot: str = Field(pattern=r"^[0-9a-f]{16,64}$")
    published_at: str
    files: list[FileEntry] = Field(default_factory=list, max_length=10000)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return str(SemVer.parse(v))

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def to_jsonld(self, base_url: str) -> dict[str, Any]:
        """schema.org ``Dataset`` with DCAT terms; ``base_url`` is the node's URL (no trailing /)."""
        here = base_url.rstrip("/") + product_path(self.name, self.version)
        return {
            "@type": ["sc:Dataset", "dcat:Dataset"],
            "@id": here,
            "identifier": self.key,
            "name": self.name,
            "version": self.version,
            "title": self.title,
            "description": self.description,
            "ps:materialField": self.material_field.value,
            "ps:grade": self.grade.value,
            "ps:access": self.access.value,
            "license": self.license,
            "ps:plant": self.plant,
            "ps:spec": self.spec,
            "ps:standardProperty": list(self.standard_properties),
            "temporalCoverage": f"{self.temporal_start}/{self.temporal_end}",
            "ps:rows": self.rows,
            "contentSize": self.bytes,
            "ps:snapshot": self.snapshot,
            "datePublished": self.published_at,
            "ps:croissant": f"{here}/croissant.json",
            "ps:quality": f"{here}/quality.json",
            "distribution": [
                {
                    "@type": ["sc:DataDownload", "dcat:Distribution"],
                    "name": f.path,
                    "contentUrl": f"{here}/files/{quote(f.path)}",
                    "contentSize": f.bytes,
                    "sha256": f.sha256,
                    "encodingFormat": f.media_type,
                }
                for f in self.files
            ],
        }

    @classmethod
    def from_jsonld(cls, doc: Any) -> ProductEntry:
        """Parse a node's JSON-LD entry; ``ValueError`` names the field that is wrong."""
        if not isinstance(doc, dict):
            raise ValueError("dataset entry: a JSON object is required")
        try:
            start, _, end = str(doc.get("temporalCoverage", "")).partition("/")
            files = [
                {
                    "path": d.get("name"),
                    "bytes": d.get("contentSize"),
                    "sha256": d.get("sha256"),
                    "media_type": d.get("encodingFormat"),
                }
                for d in (doc.get("distribution") or [])
                if isinstance(d, dict)
            ]
            return cls(
                name=doc.get("name"),  # type: ignore[arg-type]
                version=doc.get("version"),  # type: ignore[arg-type]
                title=doc.get("title", ""),
                description=doc.get("description", ""),
                material_field=doc.get("ps:materialField"),  # type: ignore[arg-type]
                grade=doc.get("ps:grade"),  # type: ignore[arg-type]
                access=doc.get("ps:access"),  # type: ignore[arg-type]
                license=doc.get("license"),  # type: ignore[arg-type]
                plant=doc.get("ps:plant"),  # type: ignore[arg-type]
                spec=doc.get("ps:spec"),
                standard_properties=doc.get("ps:standardProperty") or [],
                temporal_start=start,
                temporal_end=end,
                rows=doc.get("ps:rows"),  # type: ignore[arg-type]
                bytes=doc.get("contentSize"),  # type: ignore[arg-type]
                snapshot=doc.get("ps:snapshot"),  # type: ignore[arg-type]
                published_at=doc.get("datePublished"),  # type: ignore[arg-type]
                files=files,  # type: ignore[arg-type]
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "entry"
            raise ValueError(f"dataset entry {doc.get('identifier', '?')!r}: field '{where}': {err['msg']}") from None


CONTEXT: dict[str, Any] = {
    "@vocab": "https://schema.org/",
    "sc": "https://schema.org/",
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "ps": "https://plantstream.dev/ns/catalog#",
    "title": "dct:title",
    "sha256": "https://w3id.org/cr/sha256",
}


def catalog_jsonld(node_id: str, title: str, entries: list[ProductEntry], base_url: str) -> dict[str, Any]:
    """The node's catalog: schema.org ``DataCatalog`` / ``dcat:Catalog`` of its product versions."""
    return {
        "@context": CONTEXT,
        "@type": ["sc:DataCatalog", "dcat:Catalog"],
        "@id": base_url.rstrip("/") + CATALOG_PATH,
        "identifier": node_id,
        "name": title,
        "dataset": [e.to_jsonld(base_url) for e in entries],
    }


def parse_catalog(doc: Any) -> tuple[str, list[ProductEntry]]:
    """``(node id, entries)``; ``ValueError`` names the entry and field that is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("catalog: a JSON object is required")
    node = doc.get("identifier")
    if not isinstance(node, str) or not node:
        raise ValueError("catalog: field 'identifier' (the node id) is missing")
    items = doc.get("dataset", [])
    if not isinstance(items, list):
        raise ValueError("catalog: field 'dataset' must be a list")
    return node, [ProductEntry.from_jsonld(d) for d in items]


# --- a brokered request: the platform speaks for a member with its node credential -------------
MEMBER_HEADER = "X-Plantstream-Member"
TIER_HEADER = "X-Plantstream-Member-Tier"  # public | member: the data tier the member's level grants
ACCESS_HEADER = "X-Plantstream-Member-Access"  # comma list of free, member, paid
AUDIT_HEADER = "X-Plantstream-Audit"  # the node's "<seq>:<hash>" of its decision record

CATALOG_PATH = "/api/catalog"


def product_path(name: str, version: str) -> str:
    return f"/api/products/{quote(name, safe='')}/{quote(version, safe='')}"


def parse_access(text: str) -> frozenset[Access]:
    """``'free,member'`` -> the set; ``ValueError`` naming an unknown level."""
    out: set[Access] = set()
    for part in text.split(","):
        p = part.strip()
        if not p:
            continue
        try:
            out.add(Access(p))
        except ValueError:
            raise ValueError(f"access level {p!r} is not one of {[a.value for a in Access]}") from None
    return frozenset(out)
