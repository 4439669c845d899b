"""``plantstream dataset pull|list|show``: datasets for model builders (see datasets/README.md)."""

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
    from plantstream.datasets.models import GapSpec, PullRequest, Requester, RequestError, RequestFile, validate_request

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
