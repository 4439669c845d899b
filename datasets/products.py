"""Dataset products: a pull request published under a name and a semantic version (issue 18).

``publish`` runs the pull as the owner into ``<products dir>/<name>/<version>/`` and records the
product in ``dataset_products`` (migration 0012) with an audit record (kind ``publish``,
``plantstream.audit``). ``verify_product`` re-pulls a product's recorded request and compares the
files with its manifest byte for byte.

Contract:

* A product is reproducible: its request has absolute start and end times ('now', '-1h' and
  missing times are refused naming the field), and same request + same data gives the same bytes
  (the pull's guarantee), so the recorded manifest is checkable at any time.
* Versions follow semantic versioning against the latest earlier version of the same name:
  patch only when the Parquet data files are byte-identical (same paths and SHA-256), minor when
  additive (the earlier version's columns and time range are contained in the new one, and
  something was added), major otherwise. A bump that understates the change is refused
  (``RequestError`` on ``version``) and the files of the refused version are removed.
* The grade of a product is the strictest grade among its tags (a tag of unknown grade counts as
  core). Core-grade products may be published but only the owner tier ever sees them: the
  database view ``ds_products`` filters by the caller's tier role.
* Every refusal is a ``RequestError`` naming the field (the CLI exits 2), raised before any data
  is pulled where the check does not need the data.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from plantstream import audit
from plantstream.access import Tier
from plantstream.config import ConfigError, Settings, layered
from plantstream.contract import Grade
from plantstream.datasets.api import Plan, pull_dataset
from plantstream.domain.catalog import NAME_RE, Access, ChangeKind, MaterialField, SemVer
from plantstream.domain.pullrequest import FileEntry, PullRequest, Requester, RequestError, validate_request

log = logging.getLogger(__name__)

PRODUCTS_ENV = "PLANTSTREAM_PRODUCTS_DIR"
# A property id carried in the Parquet field metadata (the shared vocabulary, issue 18).
PROPERTY_KEY = b"plantstream.property"
_LICENSE = re.compile(r"^[A-Za-z0-9.+-]{1,64}$")  # one SPDX identifier (as the catalog entry takes it)
_RANK = {ChangeKind.PATCH: 0, ChangeKind.MINOR: 1, ChangeKind.MAJOR: 2}
_GRADE_RANK = {Grade.GENERAL: 0, Grade.IMPORTANT: 1, Grade.CORE: 2}
_RELATIVE = re.compile(r"^\s*(now|today|yesterday|tomorrow|[-+].*)\s*$", re.IGNORECASE)


def products_dir(settings: Settings, cli: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Where products live: ``--products-dir`` > ``PLANTSTREAM_PRODUCTS_DIR`` > ``<state dir>/products``."""
    e = os.environ if env is None else env
    from_env = Path(e[PRODUCTS_ENV]) if e.get(PRODUCTS_ENV) else None
    chosen = layered(cli=cli, env=from_env, default=settings.state_dir / "products")
    assert chosen is not None
    return chosen


class Product(BaseModel):
    """One row of ``dataset_products``."""

    id: int
    name: str
    version: str
    title: str
    description: str
    field: str
    grade: str
    access: str
    license: str
    plant: str
    spec: str | None
    request: dict[str, Any]
    snapshot: str
    watermark: str
    files: list[FileEntry]
    tag_ids: list[int]
    columns: list[str]
    standard_properties: list[str]
    rows: int
    bytes: int
    temporal_start: datetime
    temporal_end: datetime
    location: str
    pull_id: int | None
    change: str
    published_at: datetime
    publisher: str

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def semver(self) -> SemVer:
        return SemVer.parse(self.version)


_COLS = (
    "id, name, version, title, description, field, grade, access, license, plant, spec, request, snapshot, "
    "watermark, files, tag_ids, columns, standard_properties, rows, bytes, temporal_start, temporal_end, "
    "location, pull_id, change, published_at, publisher"
)


def _product(row: Any) -> Product:
    keys = [c.strip() for c in _COLS.split(",")]
    return Product.model_validate(dict(zip(keys, row, strict=True)))


# --- checks that need no data ------------------------------------------------------------------


def check_reproducible(data: Mapping[str, Any]) -> None:
    """A product's time range must be absolute: refuse a missing, 'now' or relative start/end."""
    for name in ("start", "end"):
        v = data.get(name)
        if v is None:
            raise RequestError(name, "a product needs an absolute time range; the request has no " + name)
        if isinstance(v, datetime | date | int | float):
            continue
        text = str(v)
        if _RELATIVE.match(text):
            raise RequestError(
                name,
                f"{text!r} is relative to the time of the pull: a product must be reproducible, "
                "give an absolute ISO-8601 time (e.g. 2025-06-01T00:00:00Z)",
            )
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise RequestError(name, f"{text!r} is not an absolute ISO-8601 time") from None


@dataclass(frozen=True, slots=True)
class ProductSpec:
    """What ``publish`` is asked besides the request (each field checked, named on error)."""

    name: str
    version: str
    field: MaterialField
    access: Access
    license: str
    title: str
    description: str = ""

    @classmethod
    def of(
        cls, name: str, version: str, field: str, access: str, license: str, title: str | None, description: str = ""
    ) -> ProductSpec:
        if not NAME_RE.match(name):
            raise RequestError(
                "name", f"{name!r}: 1-80 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        try:
            SemVer.parse(version)
        except ValueError as exc:
            raise RequestError("version", str(exc)) from None
        try:
            mf = MaterialField(field)
        except ValueError:
            raise RequestError("field", f"{field!r} is not one of {[f.value for f in MaterialField]}") from None
        try:
            ac = Access(access)
        except ValueError:
            raise RequestError("access", f"{access!r} is not one of {[a.value for a in Access]}") from None
        if not _LICENSE.match(license):
            raise RequestError("license", f"{license!r} is not an SPDX licence identifier (e.g. CC-BY-4.0)")
        t = title if title is not None else name
        if not t.strip() or len(t) > 300:
            raise RequestError("title", "1-300 characters")
        if len(description) > 5000:
            raise RequestError("description", "at most 5000 characters")
        return cls(name, str(SemVer.parse(version)), mf, ac, license, t, description)


# --- the version rule ----------------------------------------------------------------------------


def data_manifest(files: list[FileEntry]) -> dict[str, str]:
    """path -> sha256 of the data files (Parquet): what 'the same data' means for a patch."""
    return {f.path: f.sha256 for f in files if f.path.endswith(".parquet")}


def change_kind(
    earlier: Product, files: list[FileEntry], columns: list[str], start: datetime, end: datetime
) -> ChangeKind:
    """The change from ``earlier`` to a version with these files, columns and range."""
    if data_manifest(earlier.files) == data_manifest(files):
        return ChangeKind.PATCH
    contained = set(earlier.columns) <= set(columns) and start <= earlier.temporal_start and earlier.temporal_end <= end
    # Same columns over the same range with other bytes is changed data, not an addition.
    added = set(earlier.columns) != set(columns) or (start, end) != (earlier.temporal_start, earlier.temporal_end)
    return ChangeKind.MINOR if contained and added else ChangeKind.MAJOR


def check_bump(earlier: Product, version: str, actual: ChangeKind) -> None:
    """Refuse a version that claims less change over ``earlier`` than ``actual``."""
    new, old = SemVer.parse(version), SemVer.parse(earlier.version)
    claimed = new.change_from(old)
    assert claimed is not None  # earlier is the latest version below ``version``
    if _RANK[claimed] < _RANK[actual]:
        why = {
            ChangeKind.MINOR: "its data files differ but are additive (the earlier columns and time range are kept)",
            ChangeKind.MAJOR: "its data changed (not byte-identical, and not only added columns or a longer range)",
        }[actual]
        raise RequestError(
            "version",
            f"{version} is a {claimed.value} bump over {earlier.key}, but {why}: a {actual.value} change, "
            f"publish {old.bump(actual)} or later",
        )


# --- database ------------------------------------------------------------------------------------


def _require_schema(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT to_regclass('dataset_products') IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise ConfigError("the database has no dataset_products table (migration 0012): run `plantstream db migrate`")


def get_product(dsn: str, name: str, version: str) -> Product | None:
    with psycopg.connect(dsn) as conn:
        _require_schema(conn)
        row = conn.execute(
            f"SELECT {_COLS} FROM dataset_products WHERE name = %s AND version = %s", (name, version)
        ).fetchone()
    return _product(row) if row else None


def list_products(dsn: str, name: str | None = None) -> list[Product]:
    with psycopg.connect(dsn) as conn:
        _require_schema(conn)
        rows = conn.execute(
            f"SELECT {_COLS} FROM dataset_products WHERE (%(n)s::text IS NULL OR name = %(n)s) "
            "ORDER BY name, major, minor, patch",
            {"n": name},
        ).fetchall()
    return [_product(r) for r in rows]


def _earlier(conn: psycopg.Connection[Any], name: str, v: SemVer) -> Product | None:
    row = conn.execute(
        f"SELECT {_COLS} FROM dataset_products WHERE name = %s AND (major, minor, patch) < (%s, %s, %s) "
        "ORDER BY major DESC, minor DESC, patch DESC LIMIT 1",
        (name, v.major, v.minor, v.patch),
    ).fetchone()
    return _product(row) if row else None


def parse_key(key: str) -> tuple[str, str]:
    """``NAME@VERSION`` -> (name, version); RequestError naming 'product'."""
    name, at, version = key.rpartition("@")
    if not at or not NAME_RE.match(name):
        raise RequestError("product", f"{key!r}: give NAME@VERSION, e.g. caster-s355@1.0.0")
    try:
        return name, str(SemVer.parse(version))
    except ValueError as exc:
        raise RequestError("product", str(exc)) from None


# --- publish ---------------------------------------------------------------------------------------


def _strictest(grades: list[str]) -> Grade:
    def g(x: str) -> Grade:
        try:
            return Grade(x)
        except ValueError:
            return Grade.CORE  # unknown grade: core (fail closed)

    return max((g(x) for x in grades), key=_GRADE_RANK.__getitem__, default=Grade.CORE)


def _schema_facts(root: Path, files: list[FileEntry]) -> tuple[list[str], list[str]]:
    """(data columns, standard property ids) from the Parquet schemas of the data files."""
    cols: set[str] = set()
    props: set[str] = set()
    for f in files:
        if not f.path.endswith(".parquet"):
            continue
        schema = pq.read_schema(root / f.path)
        table = f.path.split("/", 1)[0]  # data/ or lots/: a lots column is not a rows column
        for fld in schema:
            cols.add(f"{table}:{fld.name}")
            meta = fld.metadata or {}
            if PROPERTY_KEY in meta:
                props.add(meta[PROPERTY_KEY].decode())
    return sorted(cols), sorted(props)


def _describe(req: PullRequest, n_tags: int) -> str:
    return (
        f"plant {req.plant}, {n_tags} tags on a {req.interval} grid, {req.start:%Y-%m-%dT%H:%M:%SZ} to "
        f"{req.end:%Y-%m-%dT%H:%M:%SZ}" + (f", spec {req.spec}" if req.spec else "")
    )


def publish(
    data: Mapping[str, Any],
    spec: ProductSpec,
    *,
    settings: Settings | None = None,
    root: Path | None = None,
    publisher: str | None = None,
    progress: Any = None,
) -> Product:
    """Publish the pull request ``data`` (a dict, as in a request YAML) as ``spec``; the record."""
    s = settings or Settings.from_env()
    root = root if root is not None else products_dir(s)
    who = publisher or os.environ.get("USER") or getpass.getuser()
    check_reproducible(data)
    # The product's name and licence go into its Croissant file and card, so they are part of the
    # request (and of its reproducible bytes).
    req = validate_request({**dict(data), "name": spec.name, "license": spec.license})
    new = SemVer.parse(spec.version)
    with psycopg.connect(s.dsn, autocommit=True) as conn:
        _require_schema(conn)
        if conn.execute(
            "SELECT 1 FROM dataset_products WHERE name = %s AND version = %s", (spec.name, spec.version)
        ).fetchone():
            raise RequestError("version", f"{spec.name}@{spec.version} is already published; versions never change")
        earlier = _earlier(conn, spec.name, new)
    out = root / spec.name / spec.version
    if out.exists():
        raise RequestError("version", f"{out} already exists (a product directory is never overwritten)")
    plans: list[Plan] = []
    rec = pull_dataset(
        req,
        Requester(name=who, tier=Tier.OWNER),
        out=out,
        settings=s,
        progress=progress,
        on_resolved=plans.append,
        application_name="plantstream-publish",
    )
    try:
        plan = plans[0]
        assert rec.snapshot and rec.watermark and rec.rows is not None
        columns, props = _schema_facts(out, rec.files)
        change = "initial"
        if earlier is not None:
            actual = change_kind(earlier, rec.files, columns, req.start, req.end)
            check_bump(earlier, spec.version, actual)
            change = actual.value
        grade = _strictest([t.grade for t in plan.tags])
        total = sum(f.bytes for f in rec.files)
        manifest = [f.model_dump() for f in rec.files]
        with psycopg.connect(s.dsn, autocommit=True) as conn, conn.transaction():
            audit.ensure(conn)
            try:
                row = conn.execute(
                    f"INSERT INTO dataset_products (name, version, major, minor, patch, title, description, field, "
                    "grade, access, license, plant, spec, request, snapshot, watermark, files, tag_ids, columns, "
                    "standard_properties, rows, bytes, temporal_start, temporal_end, location, pull_id, change, "
                    "publisher) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                    f"%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLS}",
                    (
                        spec.name,
                        spec.version,
                        new.major,
                        new.minor,
                        new.patch,
                        spec.title,
                        spec.description or _describe(req, len(plan.tags)),
                        spec.field.value,
                        grade.value,
                        spec.access.value,
                        spec.license,
                        req.plant,
                        req.spec,
                        Jsonb(req.canonical()),
                        rec.snapshot,
                        rec.watermark,
                        Jsonb(manifest),
                        sorted(t.id for t in plan.tags),
                        columns,
                        props,
                        rec.rows,
                        total,
                        req.start,
                        req.end,
                        str(out.resolve()),
                        rec.id,
                        change,
                        who,
                    ),
                ).fetchone()
            except psycopg.errors.UniqueViolation:
                raise RequestError("version", f"{spec.name}@{spec.version} is already published") from None
            assert row is not None
            product = _product(row)
            audit.append(
                conn,
                "publish",
                who,
                product.key,
                {
                    "field": product.field,
                    "grade": product.grade,
                    "access": product.access,
                    "license": product.license,
                    "snapshot": product.snapshot,
                    "watermark": product.watermark,
                    "manifest": manifest_digest(rec.files),
                    "files": len(rec.files),
                    "bytes": total,
                    "pull": rec.id,
                    "change": change,
                },
            )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    log.info(
        "dataset product published",
        extra={"kv": {"product": product.key, "grade": product.grade, "access": product.access, "change": change}},
    )
    return product


def manifest_digest(files: list[FileEntry]) -> str:
    """SHA-256 over the sorted (path, sha256, bytes) of a manifest: one value the audit record keeps."""
    text = "\n".join(f"{f.path}\t{f.sha256}\t{f.bytes}" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(text.encode()).hexdigest()


# --- verify ----------------------------------------------------------------------------------------


@dataclass
class Verification:
    product: Product
    repulled: dict[str, str] = field(default_factory=dict)  # path -> sha256 of the re-pull
    stored: dict[str, str | None] = field(default_factory=dict)  # path -> sha256 on disk now (None: missing)
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_product(
    key: str, *, settings: Settings | None = None, root: Path | None = None, who: str | None = None
) -> Verification:
    """Re-pull ``NAME@VERSION``'s recorded request (as the owner) and compare every file with the
    recorded manifest; also check the stored copy. RequestError('product') when there is none."""
    s = settings or Settings.from_env()
    name, version = parse_key(key)
    product = get_product(s.dsn, name, version)
    if product is None:
        raise RequestError("product", f"no product {name}@{version} on this node (plantstream dataset products)")
    root = root if root is not None else products_dir(s)
    req = validate_request(product.request)
    scratch = root / name / f".verify-{uuid.uuid4().hex[:12]}"
    result = Verification(product)
    try:
        rec = pull_dataset(
            req,
            Requester(name=who or os.environ.get("USER") or "verify", tier=Tier.OWNER),
            out=scratch,
            settings=s,
            application_name="plantstream-verify",
        )
        result.repulled = {f.path: f.sha256 for f in rec.files}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    recorded = {f.path: f.sha256 for f in product.files}
    for path in sorted(set(recorded) | set(result.repulled)):
        want, got = recorded.get(path), result.repulled.get(path)
        if want is None:
            result.differences.append(f"{path}: in the re-pull, not in the recorded manifest")
        elif got is None:
            result.differences.append(f"{path}: recorded, missing from the re-pull")
        elif want != got:
            result.differences.append(f"{path}: re-pull sha256 {got[:16]}... differs from recorded {want[:16]}...")
    location = Path(product.location)
    for path, want in sorted(recorded.items()):
        now = _sha256(location / path)
        result.stored[path] = now
        if now != want:
            what = "missing" if now is None else f"sha256 {now[:16]}... differs from recorded {want[:16]}..."
            result.differences.append(f"stored {location / path}: {what}")
    return result


__all__ = [
    "PRODUCTS_ENV",
    "Product",
    "ProductSpec",
    "Verification",
    "change_kind",
    "check_bump",
    "check_reproducible",
    "data_manifest",
    "get_product",
    "list_products",
    "parse_key",
    "products_dir",
    "publish",
    "verify_product",
]
