"""``plantstream dataset pull|list|show|publish|products|verify-product``: datasets for model builders (see datasets/README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from plantstream.access import Tier
from plantstream.config import ConfigError, Settings


@click.group()
def dataset() -> None:
    """Pull training datasets (Parquet + Croissant + card) and read the pull record."""


def _fail(field: str, message: str) -> None:
    click.echo(f"plantstream dataset: field '{field}': {message}", err=True)
    sys.exit(2)


@dataset.command("pull")
@click.option("--request", "request_file", type=click.Path(path_type=Path), help="request YAML (options override it)")
@click.option("--plant")
@click.option("--equipment", help="ISA-95 path: the whole subtree")
@click.option("--tag", "tags", multiple=True, help="tag name (repeat); default: all tags of the selection")
@click.option("--start", help="ISO time, UTC if no offset")
@click.option("--end", help="ISO time (exclusive)")
@click.option("--interval", help="grid interval, e.g. 1s, 500ms, 1min")
@click.option("--gap", help="default gap rule: none | locf[:MAXGAP] | linear[:MAXGAP]")
@click.option("--tag-gap", "tag_gaps", multiple=True, help="TAG=RULE[:MAXGAP] (repeat)")
@click.option("--lot", "lots", multiple=True, help="lot id (repeat)")
@click.option("--spec", help="material spec id, e.g. EN10025-2:S355J2")
@click.option("--material-grade", help="material grade, e.g. S355J2")
@click.option("--labels/--no-labels", default=None, help="join lot test results, spec limits and in-spec labels")
@click.option("--split", "split", help="TRAIN,VALIDATION,TEST proportions by lot, e.g. 0.7,0.15,0.15")
@click.option("--seed", type=int, default=None, help="split seed")
@click.option("--row-cap", type=int, default=None)
@click.option(
    "--min-completeness",
    type=float,
    default=None,
    help="refuse (exit 2, naming the tags) when a tag has a value in fewer than this share of rows, e.g. 0.95",
)
@click.option("--name", default=None)
@click.option("--license", "license_", default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output directory (must not exist)")
@click.option("--requester", default=None, help="who pulls (recorded); default: $USER")
@click.option("--tier", type=click.Choice([t.value for t in Tier]), required=True, help="the requester's tier")
def pull_cmd(request_file: Path | None, requester: str | None, tier: str, out: Path | None, **opts: Any) -> None:
    """Pull a dataset. Bad input exits with status 2 naming the field, before anything is written."""
    import os

    from plantstream.config import load_yaml
    from plantstream.datasets.api import pull_dataset
    from plantstream.domain.pullrequest import (
        GapSpec,
        PullRequest,
        Requester,
        RequestError,
        RequestFile,
        validate_request,
    )

    data: dict[str, Any] = {}
    if request_file is not None:
        data = load_yaml(request_file, RequestFile).model_dump()
    try:
        for key in (
            "plant",
            "equipment",
            "start",
            "end",
            "interval",
            "spec",
            "material_grade",
            "row_cap",
            "name",
            "min_completeness",
        ):
            if opts.get(key) is not None:
                data[key] = opts[key]
        if opts.get("license_"):
            data["license"] = opts["license_"]
        if opts["tags"]:
            data["tags"] = list(opts["tags"])
        if opts["lots"]:
            data["lots"] = list(opts["lots"])
        if opts["labels"] is not None:
            data["labels"] = opts["labels"]
        if opts["gap"]:
            data["gap"] = GapSpec.parse(opts["gap"]).model_dump()
        for tg in opts["tag_gaps"]:
            tag, eq, rule = tg.partition("=")
            if not eq:
                _fail("tag_gaps", f"{tg!r}: use TAG=RULE[:MAXGAP]")
            data.setdefault("tag_gaps", {})[tag] = GapSpec.parse(rule).model_dump()
        if opts["split"]:
            parts = opts["split"].split(",")
            if len(parts) != 3:
                _fail("split", "give three proportions TRAIN,VALIDATION,TEST, e.g. 0.7,0.15,0.15")
            data["split"] = dict(zip(("train", "validation", "test"), (float(p) for p in parts), strict=True))
        if opts["seed"] is not None:
            data.setdefault("split", {})
            if data["split"] is None:
                data["split"] = {}
            data["split"]["seed"] = opts["seed"]
        try:
            req: PullRequest = validate_request(data)
        except RequestError:
            if request_file is not None:
                load_yaml(request_file, PullRequest)  # a bad file: ConfigError names file:line: key
            raise
        who = Requester(name=requester or os.environ.get("USER", "unknown"), tier=Tier(tier))
        settings = Settings.from_env()
        rec = pull_dataset(req, who, out=out, settings=settings, progress=_progress)
    except RequestError as exc:
        _fail(exc.field, exc.message)
        return
    except ValueError as exc:  # GapSpec.parse, float() of a proportion
        _fail("(option)", str(exc).splitlines()[0])
        return
    click.echo(f"\npull {rec.id}: {rec.status}, snapshot {rec.snapshot}, {rec.rows} rows -> {rec.location}", err=True)
    if rec.withheld:  # how many, never which (a tier cannot see the names: migration 0008)
        shown = ", ".join(f"{w['count']} {w['grade']}" for w in rec.withheld)
        click.echo(f"withheld (grade above tier {tier}): {shown}", err=True)
    click.echo(rec.location)


def _progress(p: Any) -> None:
    click.echo(
        f"\r{p.readings:>12,} readings  {p.rows:>11,} rows  {p.cells:>13,} cells  {p.cells_per_s:>12,.0f} cells/s",
        err=True,
        nl=False,
    )


@dataset.command("list")
@click.option("--limit", type=int, default=20)
@click.option("--requester", default=None)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(limit: int, requester: str | None, as_json: bool) -> None:
    """Recorded pulls, newest first."""
    from plantstream.datasets.api import list_dataset_pulls

    recs = list_dataset_pulls(Settings.from_env(), limit=limit, requester=requester)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in recs], indent=2))
        return
    for r in recs:
        click.echo(
            f"{r.id:>6}  {r.started_at:%Y-%m-%d %H:%M:%S}  {r.status:<9} {r.tier:<7} {r.requester:<16} "
            f"{r.snapshot or '-':<24} {r.rows if r.rows is not None else '-':>10}  {r.request.get('plant')}"
        )


@dataset.command("show")
@click.argument("ident")
def show_cmd(ident: str) -> None:
    """One pull by id or snapshot id (prefix), as JSON."""
    from plantstream.datasets.api import show_dataset_pull

    rec = show_dataset_pull(ident, Settings.from_env())
    if rec is None:
        raise ConfigError(f"no dataset pull {ident!r}")
    click.echo(json.dumps(rec.model_dump(mode="json"), indent=2))


@dataset.command("publish")
@click.argument("request_file", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="product name: lower-case letters, digits, '.', '_', '-'")
@click.option("--version", "version", required=True, help="semantic version MAJOR.MINOR.PATCH, e.g. 1.0.0")
@click.option("--field", "field", required=True, help="material field, e.g. advanced-steel")
@click.option("--access", required=True, help="free | member | paid")
@click.option("--license", "license_", required=True, help="SPDX licence identifier, e.g. CC-BY-4.0")
@click.option("--title", default=None, help="default: the name")
@click.option("--description", default="", help="default: generated from the request")
@click.option(
    "--products-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="default: $PLANTSTREAM_PRODUCTS_DIR or <state dir>/products",
)
@click.option("--publisher", default=None, help="who publishes (recorded); default: $USER")
def publish_cmd(
    request_file: Path,
    name: str,
    version: str,
    field: str,
    access: str,
    license_: str,
    title: str | None,
    description: str,
    products_dir: Path | None,
    publisher: str | None,
) -> None:
    """Publish REQUEST_FILE (a pull request with absolute times) as NAME@VERSION. Exit 2 naming the
    field when refused (relative range, duplicate, bad semver, a bump that understates the change)."""
    from plantstream.config import load_yaml
    from plantstream.datasets import products as P
    from plantstream.domain.pullrequest import RequestError, RequestFile

    data = load_yaml(request_file, RequestFile).model_dump()
    settings = Settings.from_env()
    try:
        spec = P.ProductSpec.of(name, version, field, access, license_, title, description)
        product = P.publish(
            data,
            spec,
            settings=settings,
            root=P.products_dir(settings, products_dir),
            publisher=publisher,
            progress=_progress,
        )
    except RequestError as exc:
        _fail(exc.field, exc.message)
        return
    click.echo(
        f"\npublished {product.key}: grade {product.grade}, access {product.access}, {product.change}, "
        f"snapshot {product.snapshot}, {product.rows} rows, {len(product.files)} files -> {product.location}",
        err=True,
    )
    click.echo(product.key)


@dataset.command("products")
@click.option("--name", default=None, help="only this product's versions")
@click.option("--json", "as_json", is_flag=True)
def products_cmd(name: str | None, as_json: bool) -> None:
    """Published dataset products (every grade: this is the owner's view)."""
    from plantstream.datasets.products import list_products

    items = list_products(Settings.from_env().dsn, name)
    if as_json:
        click.echo(json.dumps([p.model_dump(mode="json") for p in items], indent=2))
        return
    for p in items:
        click.echo(
            f"{p.key:<32} {p.field:<22} {p.grade:<9} {p.access:<6} {p.license:<12} {p.change:<7} "
            f"{p.rows:>10} rows  {p.published_at:%Y-%m-%d %H:%M:%S}  {p.snapshot}"
        )


@dataset.command("verify-product")
@click.argument("key", metavar="NAME@VERSION")
@click.option("--products-dir", type=click.Path(path_type=Path), default=None)
def verify_product_cmd(key: str, products_dir: Path | None) -> None:
    """Re-pull NAME@VERSION and check every file is byte-identical to the recorded manifest (exit 0),
    naming each difference otherwise (exit 1)."""
    from plantstream.datasets import products as P
    from plantstream.domain.pullrequest import RequestError

    settings = Settings.from_env()
    try:
        res = P.verify_product(key, settings=settings, root=P.products_dir(settings, products_dir))
    except RequestError as exc:
        _fail(exc.field, exc.message)
        return
    for line in res.differences:
        click.echo(f"DIFFERS {line}", err=True)
    if not res.ok:
        click.echo(f"{res.product.key}: NOT reproducible ({len(res.differences)} difference(s))")
        sys.exit(1)
    click.echo(f"{res.product.key}: ok, {len(res.repulled)} files byte-identical to the recorded manifest")
